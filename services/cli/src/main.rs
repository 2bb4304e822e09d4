//! `arca`, the operator's console: a client of the scheduler.
//!
//! This file holds the command line and dispatches each verb to its
//! group's module under `cmd/`; `render` writes what the verbs print.

mod browse;
mod cmd;
mod render;
mod secure;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use arca_runtime::rpc::{self, RpcError};
use arca_schemas::msg::RetentionPolicy;
use arca_schemas::subject::{self, SchedulerVerb};
use arca_schemas::{JobId, SnapshotId};
use clap::{Parser, Subcommand};

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
            eprintln!("error: {}", render::shown(&format!("{e:#}")));
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
        Command::Status => cmd::status::run(&client, &cli.nats_url).await,
        Command::System(command) => cmd::system::run(&client, s, command).await,
        Command::Backup {
            systems,
            full,
            detach,
        } => cmd::jobs::backup(&client, s, systems, full, detach).await,
        Command::Cancel { job } => cmd::jobs::cancel(&client, s, &job).await,
        Command::Catalog(command) => cmd::repository::catalog(&client, s, command).await,
        Command::Audit {
            since,
            system,
            json,
        } => cmd::audit::run(&client, since, system, json).await,
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
            cmd::jobs::restore(
                &client,
                s,
                snapshot,
                target,
                include,
                exclude,
                to_system,
                allow_cross_system,
                operator,
                keep_privileges,
                detach,
            )
            .await
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
        Command::Watch { job } => cmd::jobs::watch(&client, &job).await,
        Command::Jobs {
            system,
            since,
            json,
        } => cmd::jobs::list(&client, s, system, since, json).await,
        Command::Job { job } => cmd::jobs::show(&client, s, &job).await,
        Command::Snapshots { system, json } => {
            cmd::repository::snapshots(&client, s, system, json).await
        }
        Command::Verify {
            read_data,
            subset,
            media,
            json,
        } => cmd::repository::verify(&client, read_data, subset, &media, json).await,
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
            cmd::repository::forget(&client, s, system, policy, dry_run).await
        }
        Command::Prune { media, dry_run } => cmd::repository::prune(&client, &media, dry_run).await,
        Command::Repair(command) => cmd::repository::repair(&client, command).await,
        Command::Firewall(command) => cmd::firewall::run(&client, s, command).await,
    }
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

fn parse_job(s: &str) -> anyhow::Result<JobId> {
    JobId::parse(s).with_context(|| format!("{s:?} is not a job id (see `arca jobs`)"))
}
