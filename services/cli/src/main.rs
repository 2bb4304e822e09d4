//! `arca`, the operator's console: a client of the scheduler.

mod browse;
mod secure;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use arca_runtime::rpc::{self, RpcError};
use arca_schemas::event::{EventDetail, JobEvent};
use arca_schemas::job::Trigger;
use arca_schemas::msg::*;
use arca_schemas::subject::{self, FirewallVerb, SchedulerVerb};
use arca_schemas::system::SystemsFile;
use arca_schemas::{BackupType, JobId, JobRecord, JobStatus, SnapshotId};
use clap::{Parser, Subcommand};
use futures::StreamExt;

/// Operator console of the Arca backup system.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// NATS server URL.
    #[arg(
        long,
        global = true,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// Id of the scheduler to talk to.
    #[arg(long, global = true, env = "ARCA_SCHEDULER", default_value = "main")]
    scheduler: String,
    /// The operator's identity (nkey seed file) to authenticate to NATS with.
    #[arg(long, global = true, env = "ARCA_IDENTITY")]
    identity: Option<PathBuf>,
    /// Certificate of the authority that signed the NATS server's
    /// certificate; the connection then requires TLS.
    #[arg(long, global = true, env = "ARCA_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    #[arg(long, global = true, env = "ARCA_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Key of the client certificate.
    #[arg(long, global = true, env = "ARCA_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Operator name recorded in the audit stream (default: $USER).
    #[arg(long, global = true, env = "ARCA_OPERATOR")]
    operator: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the connection: server version and JetStream.
    Status,
    /// The registry of systems: add, list, show, edit, remove.
    #[command(subcommand, visible_alias = "systems")]
    System(SystemsCommand),
    /// Back up systems now (in priority order); follows the jobs' events.
    Backup {
        /// System names.
        #[arg(required = true)]
        systems: Vec<String>,
        /// A full backup (default: incremental).
        #[arg(long)]
        full: bool,
        /// Print the job ids and return at once.
        #[arg(long)]
        detach: bool,
    },
    /// Cancel a job: a queued one ends at once, a running one after its
    /// post hook ran and its windows closed.
    Cancel {
        /// Job id.
        job: String,
    },
    /// The snapshot catalog.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Restore a snapshot onto its own system (or, explicitly, another).
    Restore {
        /// Snapshot id (see `arca snapshots`).
        snapshot: String,
        /// Folder on the system to restore into (default: where the files came from).
        #[arg(long)]
        target: Option<String>,
        /// Restore only paths matching this glob (and the folders above
        /// them); repeatable. A pattern with a `/` matches the whole
        /// absolute path, one without matches any name; `**` crosses folders.
        #[arg(long)]
        include: Vec<String>,
        /// Do not restore paths matching this glob; repeatable.
        #[arg(long)]
        exclude: Vec<String>,
        /// Restore onto this system instead of the snapshot's own; needs
        /// --allow-cross-system, and is recorded in the audit stream.
        #[arg(long)]
        to_system: Option<String>,
        /// Allow restoring one system's snapshot onto another system.
        #[arg(long, requires = "to_system")]
        allow_cross_system: bool,
        /// Into --target or onto another system, keep device nodes,
        /// set-user-id/set-group-id bits, security.* and trusted.*
        /// attributes (file capabilities) and owners as recorded; without
        /// it they are left out and reported (an in-place restore of a
        /// system's own snapshot always keeps them). Recorded in the job
        /// and the audit stream.
        #[arg(long)]
        keep_privileges: bool,
        /// Print the job id and return at once.
        #[arg(long)]
        detach: bool,
    },
    /// List the files of a snapshot (everything, or what is at or under `path`).
    Ls {
        /// Snapshot id.
        snapshot: String,
        /// Absolute path in the snapshot.
        path: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// What changed between two snapshots: `+` added, `-` removed,
    /// `M` content changed, `m` metadata only.
    Diff {
        /// Older snapshot id.
        from: String,
        /// Newer snapshot id.
        to: String,
    },
    /// Follow a job's events, from the first, until it ends.
    Watch {
        /// Job id.
        job: String,
    },
    /// Job history, newest first, with durations and sizes.
    Jobs {
        /// Only this system's jobs.
        #[arg(long)]
        system: Option<String>,
        /// Only jobs since then: an RFC 3339 time (2026-03-29T01:00:00Z)
        /// or a span back from now (90m, 12h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one job record.
    Job {
        /// Job id.
        job: String,
    },
    /// List snapshots, newest first.
    Snapshots {
        /// Only this system's snapshots.
        #[arg(long)]
        system: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Firewall controllers.
    #[command(subcommand)]
    Firewall(FirewallCommand),
    /// Check the repository of a media service; exits non-zero when
    /// anything is wrong, naming the snapshots and files affected.
    Verify {
        /// Also read, decrypt and hash the data, not only the structure.
        #[arg(long)]
        read_data: bool,
        /// With --read-data, read this share of the packs, e.g. `10%`.
        #[arg(long, value_parser = parse_percent)]
        subset: Option<u8>,
        /// Media service.
        #[arg(long, default_value = "main")]
        media: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Repair a repository.
    #[command(subcommand)]
    Repair(RepairCommand),
    /// Forget a system's snapshots that a retention policy does not keep
    /// (their data goes at the next `arca prune`).
    Forget {
        /// System.
        system: String,
        /// Keep the newest N snapshots.
        #[arg(long, default_value_t = 0)]
        keep_last: u32,
        /// Keep the newest snapshot of each of the last N hours (UTC).
        #[arg(long, default_value_t = 0)]
        keep_hourly: u32,
        /// Likewise per day.
        #[arg(long, default_value_t = 0)]
        keep_daily: u32,
        /// Likewise per ISO week.
        #[arg(long, default_value_t = 0)]
        keep_weekly: u32,
        /// Likewise per month.
        #[arg(long, default_value_t = 0)]
        keep_monthly: u32,
        /// Likewise per year.
        #[arg(long, default_value_t = 0)]
        keep_yearly: u32,
        /// Only show what would be forgotten.
        #[arg(long)]
        dry_run: bool,
    },
    /// The audit stream: enrollments, key changes, cross-system restores
    /// and refused requests, oldest first.
    Audit {
        /// Only records since then (RFC 3339 time or a span: 12h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only records about this system.
        #[arg(long)]
        system: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the public key of an identity file (an nkey seed), creating
    /// it (mode 0600) when it does not exist.
    Identity {
        /// The identity file.
        file: PathBuf,
    },
    /// Write the nats-server's users and TLS configuration: one user per
    /// enrolled agent confined to its own subjects, one per service, the
    /// operators; include it from the server's configuration.
    NatsConfig {
        /// Systems files whose `agent` keys to admit.
        #[arg(long = "systems")]
        systems: Vec<PathBuf>,
        /// Scheduler as ID=PUBLIC-KEY.
        #[arg(long = "scheduler-key")]
        schedulers: Vec<String>,
        /// Media service as ID=PUBLIC-KEY.
        #[arg(long = "media-key")]
        media: Vec<String>,
        /// Firewall controller as ID=PUBLIC-KEY.
        #[arg(long = "firewall-key")]
        firewalls: Vec<String>,
        /// Operator public key (full access).
        #[arg(long = "operator-key")]
        operators: Vec<String>,
        /// A scheduler's door watcher as ID=PUBLIC-KEY (the key of its
        /// `door-identity-file`): a user of the server's system account
        /// that may only listen to the server's reports of refused clients.
        #[arg(long = "door-key")]
        doors: Vec<String>,
        /// Folder made by ops/gen-pki (ca.pem, server.pem, server.key):
        /// TLS on every connection.
        #[arg(long)]
        tls_dir: Option<PathBuf>,
        /// Do not require client certificates (TLS one way only).
        #[arg(long)]
        no_client_certs: bool,
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Delete data no snapshot needs and repack partly used packs.
    Prune {
        /// Media service.
        #[arg(long, default_value = "main")]
        media: String,
        /// Only show what would be done.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum RepairCommand {
    /// Rebuild the index of a media service's repository from its packs.
    Index {
        /// Media service.
        #[arg(long, default_value = "main")]
        media: String,
    },
}

fn parse_percent(s: &str) -> Result<u8, String> {
    let n: u8 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage (1% to 100%)"))?;
    if (1..=100).contains(&n) {
        Ok(n)
    } else {
        Err(format!("{s:?} is not between 1% and 100%"))
    }
}

#[derive(Subcommand)]
enum SystemsCommand {
    /// Register the systems of a TOML file; a name already registered is refused.
    Add {
        /// File with `[[system]]` tables.
        file: PathBuf,
    },
    /// Replace registered systems with those of a TOML file (see `show`).
    Edit {
        /// File with `[[system]]` tables.
        file: PathBuf,
    },
    /// Register or replace the systems of a TOML file.
    Load {
        /// File with `[[system]]` tables.
        file: PathBuf,
    },
    /// List registered systems.
    List,
    /// Print one system as a systems file (edit it, then `arca system edit FILE`).
    Show {
        /// System name.
        name: String,
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
    /// Remove a system from the registry; its snapshots and history stay.
    Remove {
        /// System name.
        name: String,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Rebuild the snapshot catalog from the repositories of the media services.
    Rebuild {
        /// Media services to ask besides those the systems name.
        #[arg(long)]
        media: Vec<String>,
    },
}

#[derive(Subcommand)]
enum FirewallCommand {
    /// Guarded ports and open windows of controllers.
    Status {
        /// Controller ids; without any, every controller named by a
        /// registered system.
        firewalls: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", shown(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}

fn parse_snapshot(s: &str) -> anyhow::Result<SnapshotId> {
    SnapshotId::parse(s).with_context(|| {
        format!("{s:?} is not a snapshot id (16 hex digits; see `arca snapshots`)")
    })
}

async fn call<Q: serde::Serialize, R: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    scheduler: &str,
    verb: SchedulerVerb,
    body: &Q,
) -> anyhow::Result<R> {
    rpc::request(client, subject::scheduler(scheduler, verb), body)
        .await
        .map_err(|e| match e {
            RpcError::NoResponders { .. } => anyhow::anyhow!(
                "no scheduler {scheduler:?} answers; is arca-scheduler running and connected to this NATS server?"
            ),
            RpcError::Remote(r) => anyhow::anyhow!("{}", r.message),
            other => anyhow::anyhow!("{other}"),
        })
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Commands that need no server.
    match &cli.command {
        Command::Identity { file } => return secure::identity(file),
        Command::NatsConfig {
            systems,
            schedulers,
            media,
            firewalls,
            operators,
            doors,
            tls_dir,
            no_client_certs,
            out,
        } => {
            return secure::nats_config(
                systems,
                schedulers,
                media,
                firewalls,
                operators,
                doors,
                tls_dir.as_ref(),
                *no_client_certs,
                out.as_ref(),
            );
        }
        _ => {}
    }
    let credentials = secure::credentials(
        cli.identity.as_ref(),
        cli.tls_ca.as_ref(),
        cli.tls_cert.as_ref(),
        cli.tls_key.as_ref(),
    )?;
    let client = arca_runtime::nats::connect_as(&cli.nats_url, "arca-cli", &credentials).await?;
    let operator = cli
        .operator
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok());
    let s = cli.scheduler.as_str();
    match cli.command {
        Command::Status => {
            let info = client.server_info();
            let js = async_nats::jetstream::new(client.clone());
            let account = js.query_account().await.context(
                "JetStream does not answer; start nats-server with JetStream enabled (-js)",
            )?;
            println!(
                "nats-server {} at {} (max_payload {} bytes), JetStream: {} streams",
                info.version, cli.nats_url, info.max_payload, account.streams
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::System(SystemsCommand::Add { file }) => {
            load_systems(&client, s, &file, LoadMode::Add, "registered").await
        }
        Command::System(SystemsCommand::Edit { file }) => {
            load_systems(&client, s, &file, LoadMode::Replace, "replaced").await
        }
        Command::System(SystemsCommand::Load { file }) => {
            load_systems(&client, s, &file, LoadMode::Upsert, "registered").await
        }
        Command::System(SystemsCommand::List) => {
            let r: ListSystemsReply =
                call(&client, s, SchedulerVerb::ListSystems, &ListSystems {}).await?;
            println!(
                "{:<20} {:<16} {:>4} {:<12} {:<16} {:<28} PATHS",
                "NAME", "ADDRESS", "PRIO", "MEDIA", "FIREWALLS", "SCHEDULES"
            );
            for sys in r.systems {
                let schedules: Vec<String> = sys
                    .schedules
                    .each()
                    .map(|(t, spec)| format!("{}: {} {}", t.as_str(), spec.cron, spec.time_zone))
                    .collect();
                println!(
                    "{:<20} {:<16} {:>4} {:<12} {:<16} {:<28} {}",
                    sys.name,
                    sys.address,
                    sys.priority,
                    sys.media,
                    sys.firewalls.join(","),
                    if schedules.is_empty() {
                        "-".to_owned()
                    } else {
                        schedules.join("; ")
                    },
                    sys.paths.join(" ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::System(SystemsCommand::Show { name, json }) => {
            let sys: arca_schemas::SystemConfig =
                call(&client, s, SchedulerVerb::GetSystem, &GetSystem { name }).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sys)?);
            } else {
                let file = SystemsFile { systems: vec![sys] };
                print!("{}", toml::to_string(&file)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::System(SystemsCommand::Remove { name }) => {
            let r: SystemRemoved = call(
                &client,
                s,
                SchedulerVerb::RemoveSystem,
                &RemoveSystem { name },
            )
            .await?;
            println!("removed {}", r.name);
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup {
            systems,
            full,
            detach,
        } => {
            let backup_type = Some(if full {
                BackupType::Full
            } else {
                BackupType::Incremental
            });
            let r: JobsStarted = call(
                &client,
                s,
                SchedulerVerb::Backup,
                &StartBackup {
                    systems,
                    backup_type,
                },
            )
            .await?;
            follow_jobs(&client, r.jobs, detach).await
        }
        Command::Cancel { job } => {
            let job = parse_job(&job)?;
            let r: JobRecord = call(&client, s, SchedulerVerb::Cancel, &CancelJob { job }).await?;
            if r.status.is_final() {
                println!("job {} cancelled", r.id);
            } else {
                println!(
                    "job {} is being cancelled; its clean-up runs now (`arca watch {}` follows it)",
                    r.id, r.id
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Catalog(CatalogCommand::Rebuild { media }) => {
            let r: CatalogRebuilt = call(
                &client,
                s,
                SchedulerVerb::RebuildCatalog,
                &RebuildCatalog { media },
            )
            .await?;
            println!(
                "catalog rebuilt from {}: {} snapshots ({} added, {} removed)",
                if r.media.is_empty() {
                    "no media".to_owned()
                } else {
                    r.media.join(", ")
                },
                r.snapshots,
                r.added,
                r.removed
            );
            if !r.unreachable.is_empty() {
                println!(
                    "not answering, their entries kept: {}",
                    r.unreachable.join(", ")
                );
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            since,
            system,
            json,
        } => {
            let since = since.as_deref().map(parse_since).transpose()?;
            secure::audit(&client, since, system.as_deref(), json).await
        }
        Command::Identity { .. } | Command::NatsConfig { .. } => unreachable!("handled above"),
        Command::Restore {
            snapshot,
            target,
            include,
            exclude,
            to_system,
            allow_cross_system,
            keep_privileges,
            detach,
        } => {
            let snapshot = parse_snapshot(&snapshot)?;
            let filter = arca_schemas::PathFilter { include, exclude };
            let r: JobsStarted = call(
                &client,
                s,
                SchedulerVerb::Restore,
                &StartRestore {
                    snapshot,
                    target,
                    filter,
                    to_system,
                    allow_cross_system,
                    operator,
                    keep_privileges,
                },
            )
            .await?;
            follow_jobs(&client, r.jobs, detach).await
        }
        Command::Ls {
            snapshot,
            path,
            json,
        } => {
            browse::ls(
                &client,
                s,
                &parse_snapshot(&snapshot)?,
                path.as_deref(),
                json,
            )
            .await
        }
        Command::Diff { from, to } => {
            browse::diff(&client, s, &parse_snapshot(&from)?, &parse_snapshot(&to)?).await
        }
        Command::Watch { job } => {
            let job = parse_job(&job)?;
            follow_jobs(&client, vec![job], false).await
        }
        Command::Jobs {
            system,
            since,
            json,
        } => {
            let since = since.as_deref().map(parse_since).transpose()?;
            let r: ListJobsReply = call(
                &client,
                s,
                SchedulerVerb::ListJobs,
                &ListJobs { system, since },
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r.jobs)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<36} {:<20} {:<16} {:<10} {:<20} {:>9} {:>7} {:>10} SNAPSHOT",
                "JOB", "KIND", "SYSTEM", "STATUS", "CREATED", "DURATION", "FILES", "SIZE"
            );
            for j in r.jobs {
                let end = j.ended.unwrap_or_else(chrono::Utc::now);
                let kind = match (j.kind, j.backup_type) {
                    (arca_schemas::JobKind::Backup, Some(t)) => format!("backup {}", t.as_str()),
                    (arca_schemas::JobKind::Backup, None) => "backup".to_owned(),
                    (arca_schemas::JobKind::Restore, _) => "restore".to_owned(),
                };
                let kind = match j.trigger {
                    Trigger::Schedule => format!("{kind} (sched)"),
                    Trigger::Operator => kind,
                };
                println!(
                    "{:<36} {:<20} {:<16} {:<10} {:<20} {:>9} {:>7} {:>10} {}",
                    j.id,
                    kind,
                    j.system,
                    status_word(j.status),
                    j.created.format("%Y-%m-%d %H:%M:%S"),
                    duration((end - j.created).num_seconds().max(0) as u64),
                    j.stats.files,
                    arca_schemas::text::human_bytes(j.stats.bytes),
                    j.snapshot.map(|s| s.0).unwrap_or_else(|| "-".into())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Job { job } => {
            let job = parse_job(&job)?;
            let r: JobRecord = call(&client, s, SchedulerVerb::GetJob, &GetJob { job }).await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshots { system, json } => {
            let r: ListSnapshotsReply = call(
                &client,
                s,
                SchedulerVerb::ListSnapshots,
                &ListSnapshots { system },
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r.snapshots)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<16} {:<16} {:<20} {:>8} {:>14} {:>6} PATHS",
                "ID", "SYSTEM", "TIME", "FILES", "BYTES", "ERRORS"
            );
            for sn in r.snapshots {
                println!(
                    "{:<16} {:<16} {:<20} {:>8} {:>14} {:>6} {}",
                    sn.id.0,
                    sn.system,
                    sn.time.format("%Y-%m-%d %H:%M:%S"),
                    sn.stats.files,
                    sn.stats.bytes,
                    sn.file_errors.len(),
                    sn.paths.join(" ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            read_data,
            subset,
            media,
            json,
        } => {
            let req = VerifyRepository {
                read_data,
                subset_percent: subset.unwrap_or(100),
            };
            let r: VerifyReport = rpc::request_with_timeout(
                &client,
                subject::media(&media, subject::MediaVerb::Verify),
                &req,
                Duration::from_secs(24 * 3600),
            )
            .await
            .map_err(|e| anyhow::anyhow!("media {media:?}: {e}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{} snapshots, {} packs, {} chunks read and hashed",
                    r.snapshots, r.packs, r.chunks_read
                );
                for p in &r.problems {
                    println!(
                        "problem in {}: {}{}",
                        p.system,
                        p.chunk.map(|c| format!("chunk {c}: ")).unwrap_or_default(),
                        shown(&p.error)
                    );
                    if !p.snapshots.is_empty() {
                        let ids: Vec<String> = p.snapshots.iter().map(|s| s.to_string()).collect();
                        println!("  snapshots: {}", ids.join(" "));
                    }
                    for f in &p.files {
                        println!("  file: {}", shown(f));
                    }
                }
                if r.problems.is_empty() {
                    println!("no problems found");
                } else {
                    println!(
                        "{} problems found; `arca repair index` rebuilds a lost or damaged index, damaged data needs the next backup of the files named",
                        r.problems.len()
                    );
                }
            }
            Ok(if r.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Forget {
            system,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            dry_run,
        } => {
            let policy = RetentionPolicy {
                keep_last,
                keep_hourly,
                keep_daily,
                keep_weekly,
                keep_monthly,
                keep_yearly,
            };
            if policy.is_empty() {
                bail!("name at least one --keep-* rule; a policy that keeps nothing is refused");
            }
            let r: ForgetReply = call(
                &client,
                s,
                SchedulerVerb::Forget,
                &ForgetSnapshots {
                    system,
                    policy,
                    dry_run,
                },
            )
            .await?;
            let verb = if dry_run { "would forget" } else { "forgot" };
            for id in &r.kept {
                println!("keep   {id}");
            }
            for id in &r.forgotten {
                println!("{verb} {id}");
            }
            println!("{} kept, {} {verb}", r.kept.len(), r.forgotten.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Prune { media, dry_run } => {
            let r: PruneReport = rpc::request_with_timeout(
                &client,
                subject::media(&media, subject::MediaVerb::Prune),
                &PruneRepository { dry_run },
                Duration::from_secs(24 * 3600),
            )
            .await
            .map_err(|e| anyhow::anyhow!("media {media:?}: {e}"))?;
            println!(
                "{}{} packs deleted, {} repacked, {} chunks removed, {:.1} MiB -> {:.1} MiB",
                if dry_run { "dry run: " } else { "" },
                r.packs_deleted,
                r.packs_repacked,
                r.chunks_removed,
                r.bytes_before as f64 / 1048576.0,
                r.bytes_after as f64 / 1048576.0
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Repair(RepairCommand::Index { media }) => {
            let r: RepairIndexReply = rpc::request_with_timeout(
                &client,
                subject::media(&media, subject::MediaVerb::RepairIndex),
                &RepairIndex {},
                Duration::from_secs(24 * 3600),
            )
            .await
            .map_err(|e| anyhow::anyhow!("media {media:?}: {e}"))?;
            println!("index rebuilt: {} packs, {} chunks", r.packs, r.chunks);
            for d in &r.damaged {
                println!("damaged: {}", shown(d));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Firewall(FirewallCommand::Status { mut firewalls }) => {
            if firewalls.is_empty() {
                let r: ListSystemsReply =
                    call(&client, s, SchedulerVerb::ListSystems, &ListSystems {}).await?;
                let mut ids: Vec<String> =
                    r.systems.into_iter().flat_map(|s| s.firewalls).collect();
                ids.sort();
                ids.dedup();
                if ids.is_empty() {
                    println!("no registered system names a firewall controller");
                }
                firewalls = ids;
            }
            for fw in firewalls {
                let r: Result<FirewallStatusReply, RpcError> = rpc::request(
                    &client,
                    subject::firewall(&fw, FirewallVerb::Status),
                    &FirewallStatus {},
                )
                .await;
                match r {
                    Ok(st) => {
                        println!(
                            "{} (backend {}), guarded ports {:?}",
                            st.firewall, st.backend, st.ports
                        );
                        if st.windows.is_empty() {
                            println!("  no window open");
                        }
                        for w in st.windows {
                            let left = (w.expires - chrono::Utc::now()).num_seconds().max(0);
                            println!(
                                "  open for {} ({}) job {}, lease {}s left",
                                w.system, w.address, w.job, left
                            );
                        }
                    }
                    Err(e) => println!("{fw}: not answering ({e})"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn load_systems(
    client: &async_nats::Client,
    scheduler: &str,
    file: &std::path::Path,
    mode: LoadMode,
    done: &str,
) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let parsed: SystemsFile =
        toml::from_str(&text).with_context(|| format!("{} is invalid", file.display()))?;
    if parsed.systems.is_empty() {
        bail!("{} defines no [[system]]", file.display());
    }
    let r: LoadSystemsReply = call(
        client,
        scheduler,
        SchedulerVerb::LoadSystems,
        &LoadSystems {
            systems: parsed.systems,
            mode,
        },
    )
    .await?;
    for name in r.stored {
        println!("{done} {name}");
    }
    Ok(ExitCode::SUCCESS)
}

/// An RFC 3339 time, or a span back from now (`90m`, `12h`, `7d`).
fn parse_since(s: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let span = humantime::parse_duration(s).with_context(|| {
        format!("--since {s:?}: give an RFC 3339 time (2026-03-29T01:00:00Z) or a span such as 90m, 12h, 7d")
    })?;
    Ok(chrono::Utc::now() - chrono::Duration::from_std(span)?)
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn parse_job(s: &str) -> anyhow::Result<JobId> {
    JobId::parse(s).with_context(|| format!("{s:?} is not a job id (see `arca jobs`)"))
}

fn status_word(s: JobStatus) -> &'static str {
    match s {
        JobStatus::Queued => "queued",
        JobStatus::Running => "running",
        JobStatus::Succeeded => "succeeded",
        JobStatus::Partial => "partial",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
    }
}

/// Prints each job's events until it ends; the exit code says whether
/// every job succeeded.
async fn follow_jobs(
    client: &async_nats::Client,
    jobs: Vec<JobId>,
    detach: bool,
) -> anyhow::Result<ExitCode> {
    if detach {
        for j in jobs {
            println!("{j}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let js = async_nats::jetstream::new(client.clone());
    let mut worst = ExitCode::SUCCESS;
    for job in jobs {
        println!("job {job}");
        let mut events = Box::pin(arca_runtime::events::follow(&js, job).await?);
        loop {
            let next = tokio::time::timeout(Duration::from_secs(3600), events.next()).await;
            let Ok(Some(event)) = next else {
                bail!("no more events from job {job}; `arca job {job}` shows its state");
            };
            let event = event?;
            print_event(&event);
            if let EventDetail::Ended { status, .. } = event.detail {
                if status != JobStatus::Succeeded {
                    worst = ExitCode::from(1);
                }
                break;
            }
        }
    }
    Ok(worst)
}

fn print_event(e: &JobEvent) {
    let t = e.time.format("%H:%M:%S");
    let line = match &e.detail {
        EventDetail::Selected {
            backup_type,
            trigger,
            ..
        } => format!(
            "selected {}{} of {}{}",
            backup_type
                .map(|t| format!("{} ", t.as_str()))
                .unwrap_or_default(),
            format!("{:?}", e.job_kind).to_lowercase(),
            e.system,
            if *trigger == Trigger::Schedule {
                " (scheduled)"
            } else {
                ""
            }
        ),
        EventDetail::WindowOpened {
            firewall,
            backend,
            address,
            ..
        } => {
            format!("window opened on {firewall} ({backend}) for {address}")
        }
        EventDetail::WindowRenewed { firewall, expires } => format!(
            "window renewed on {firewall} until {}",
            expires.format("%H:%M:%S")
        ),
        EventDetail::AgentPresent { version } => format!("agent present (version {version})"),
        EventDetail::Prepared {
            phase,
            ran,
            success,
            exit_code,
            output,
        } => hook_line(phase, *ran, *success, *exit_code, output),
        EventDetail::Progress {
            stats,
            bytes_per_sec,
            current,
        } => format!(
            "progress: {} files, {:.1} MiB, {:.1} MiB/s{}",
            stats.files,
            stats.bytes as f64 / 1048576.0,
            bytes_per_sec / 1048576.0,
            current
                .as_ref()
                .map(|c| format!(", at {c}"))
                .unwrap_or_default()
        ),
        EventDetail::FileFailed { file } => format!("file failed: {}: {}", file.path, file.error),
        EventDetail::FileWarning { file } => format!("warning: {}: {}", file.path, file.error),
        EventDetail::Transferred {
            stats,
            snapshot,
            seconds,
        } => format!(
            "transferred {} files, {:.1} MiB in {:.1}s ({} new chunks, {:.1} MiB on the wire){}",
            stats.files,
            stats.bytes as f64 / 1048576.0,
            seconds,
            stats.new_chunks,
            stats.wire_bytes as f64 / 1048576.0,
            snapshot
                .as_ref()
                .map(|s| format!(", snapshot {s}"))
                .unwrap_or_default()
        ),
        EventDetail::Finished {
            phase,
            ran,
            success,
            exit_code,
            output,
        } => hook_line(phase, *ran, *success, *exit_code, output),
        EventDetail::WindowClosed { firewall } => format!("window closed on {firewall}"),
        EventDetail::PostHookByAgent {
            phase,
            success,
            exit_code,
            ..
        } => format!(
            "{phase} hook was run by the agent at its deadline, the scheduler being away: {}",
            hook_outcome(*success, *exit_code)
        ),
        EventDetail::SnapshotAdopted { snapshot, media } => format!(
            "snapshot {snapshot} found on media {media} and recorded for this job (the job had lost contact before recording it)"
        ),
        EventDetail::Resumed { step } => {
            format!("picked up again by a restarted scheduler at step {step:?}")
        }
        EventDetail::CancelRequested {} => "cancel requested; cleaning up".to_owned(),
        EventDetail::StepFailed { step, error } => format!("step {step} failed: {error}"),
        EventDetail::Ended {
            status,
            snapshot,
            error,
            seconds,
            file_errors,
            file_errors_not_named,
            ..
        } => {
            let mut s = format!("{} after {:.1}s", status_word(*status), seconds);
            if let Some(sn) = snapshot {
                s.push_str(&format!(", snapshot {sn}"));
            }
            if !file_errors.is_empty() {
                s.push_str(&format!(
                    ", {} files not transferred (named above)",
                    file_errors.len()
                ));
            }
            if *file_errors_not_named > 0 {
                s.push_str(&format!(
                    ", {file_errors_not_named} more not transferred (counted, not named)"
                ));
            }
            if let Some(e) = error {
                s.push_str(&format!(": {e}"));
            }
            s
        }
    };
    println!("  {t} {}", shown(&line));
}

/// Text a system may have written (file names, hook output, messages), fit
/// for the terminal: control characters escaped, each line of a
/// multi-line text indented under the event it belongs to.
fn shown(text: &str) -> String {
    text.split('\n')
        .map(|l| arca_schemas::text::escape(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n      ")
}

fn hook_line(
    phase: &str,
    ran: bool,
    success: Option<bool>,
    exit_code: Option<i32>,
    output: &str,
) -> String {
    if !ran {
        return format!("{phase}: no hook configured");
    }
    let mut s = format!("{phase} hook {}", hook_outcome(success, exit_code));
    let out = output.trim();
    if !out.is_empty() {
        s.push_str(&format!(": {}", out.lines().last().unwrap_or("")));
    }
    s
}

/// How a hook ended, in words: an application step has no exit status,
/// and a command killed by a signal or its timeout has none either.
fn hook_outcome(success: Option<bool>, exit_code: Option<i32>) -> String {
    match (success, exit_code) {
        (Some(true), Some(c)) => format!("succeeded (exit {c})"),
        (Some(true), None) => "succeeded".to_owned(),
        (Some(false), Some(c)) => format!("failed (exit {c})"),
        (Some(false), None) => "failed (no exit status: killed, or it timed out)".to_owned(),
        // Events written before `success` was recorded.
        (None, Some(c)) => format!("exited {c}"),
        (None, None) => "ended without an exit status".to_owned(),
    }
}
