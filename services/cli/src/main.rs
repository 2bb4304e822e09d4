//! `arca`, the operator's console: a client of the scheduler.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use arca_runtime::rpc::{self, RpcError};
use arca_schemas::event::{EventDetail, JobEvent};
use arca_schemas::msg::*;
use arca_schemas::subject::{self, FirewallVerb, SchedulerVerb};
use arca_schemas::system::SystemsFile;
use arca_schemas::{JobId, JobRecord, JobStatus, SnapshotId};
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the connection: server version and JetStream.
    Status,
    /// Register and list systems.
    #[command(subcommand)]
    Systems(SystemsCommand),
    /// Back up systems now (one after the other); follows the jobs' events.
    Backup {
        /// System names.
        #[arg(required = true)]
        systems: Vec<String>,
        /// Print the job ids and return at once.
        #[arg(long)]
        detach: bool,
    },
    /// Restore a snapshot onto its own system.
    Restore {
        /// Snapshot id (see `arca snapshots`).
        snapshot: String,
        /// Folder on the system to restore into (default: where the files came from).
        #[arg(long)]
        target: Option<String>,
        /// Print the job id and return at once.
        #[arg(long)]
        detach: bool,
    },
    /// Follow a job's events, from the first, until it ends.
    Watch {
        /// Job id.
        job: String,
    },
    /// List jobs, newest first.
    Jobs {
        /// Only this system's jobs.
        #[arg(long)]
        system: Option<String>,
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
}

#[derive(Subcommand)]
enum SystemsCommand {
    /// Register or replace the systems of a TOML file.
    Load {
        /// File with `[[system]]` tables.
        file: PathBuf,
    },
    /// List registered systems.
    List,
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
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
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
    let client = arca_runtime::connect(&cli.nats_url, "arca-cli").await?;
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
        Command::Systems(SystemsCommand::Load { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let parsed: SystemsFile =
                toml::from_str(&text).with_context(|| format!("{} is invalid", file.display()))?;
            if parsed.systems.is_empty() {
                bail!("{} defines no [[system]]", file.display());
            }
            let r: LoadSystemsReply = call(
                &client,
                s,
                SchedulerVerb::LoadSystems,
                &LoadSystems {
                    systems: parsed.systems,
                },
            )
            .await?;
            for name in r.stored {
                println!("registered {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Systems(SystemsCommand::List) => {
            let r: ListSystemsReply =
                call(&client, s, SchedulerVerb::ListSystems, &ListSystems {}).await?;
            println!(
                "{:<20} {:<16} {:<12} {:<16} PATHS",
                "NAME", "ADDRESS", "MEDIA", "FIREWALLS"
            );
            for sys in r.systems {
                println!(
                    "{:<20} {:<16} {:<12} {:<16} {}",
                    sys.name,
                    sys.address,
                    sys.media,
                    sys.firewalls.join(","),
                    sys.paths.join(" ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { systems, detach } => {
            let r: JobsStarted =
                call(&client, s, SchedulerVerb::Backup, &StartBackup { systems }).await?;
            follow_jobs(&client, r.jobs, detach).await
        }
        Command::Restore {
            snapshot,
            target,
            detach,
        } => {
            let snapshot = SnapshotId::parse(&snapshot).with_context(|| {
                format!("{snapshot:?} is not a snapshot id (16 hex digits; see `arca snapshots`)")
            })?;
            let r: JobsStarted = call(
                &client,
                s,
                SchedulerVerb::Restore,
                &StartRestore { snapshot, target },
            )
            .await?;
            follow_jobs(&client, r.jobs, detach).await
        }
        Command::Watch { job } => {
            let job = parse_job(&job)?;
            follow_jobs(&client, vec![job], false).await
        }
        Command::Jobs { system, json } => {
            let r: ListJobsReply =
                call(&client, s, SchedulerVerb::ListJobs, &ListJobs { system }).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r.jobs)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<36} {:<8} {:<16} {:<10} {:<20} {:>9} {:>12} SNAPSHOT",
                "JOB", "KIND", "SYSTEM", "STATUS", "CREATED", "SECONDS", "BYTES"
            );
            for j in r.jobs {
                println!(
                    "{:<36} {:<8} {:<16} {:<10} {:<20} {:>9} {:>12} {}",
                    j.id,
                    format!("{:?}", j.kind).to_lowercase(),
                    j.system,
                    status_word(j.status),
                    j.created.format("%Y-%m-%d %H:%M:%S"),
                    j.ended
                        .map(|e| format!(
                            "{:.1}",
                            (e - j.created).num_milliseconds() as f64 / 1000.0
                        ))
                        .unwrap_or_else(|| "-".into()),
                    j.stats.bytes,
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
        EventDetail::Selected { .. } => format!(
            "selected {} of {}",
            format!("{:?}", e.job_kind).to_lowercase(),
            e.system
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
            exit_code,
            output,
        } => hook_line(phase, *ran, *exit_code, output),
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
            exit_code,
            output,
        } => hook_line(phase, *ran, *exit_code, output),
        EventDetail::WindowClosed { firewall } => format!("window closed on {firewall}"),
        EventDetail::StepFailed { step, error } => format!("step {step} failed: {error}"),
        EventDetail::Ended {
            status,
            snapshot,
            error,
            seconds,
            file_errors,
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
            if let Some(e) = error {
                s.push_str(&format!(": {e}"));
            }
            s
        }
    };
    println!("  {t} {line}");
}

fn hook_line(phase: &str, ran: bool, exit_code: Option<i32>, output: &str) -> String {
    if !ran {
        return format!("{phase}: no hook configured");
    }
    let mut s = format!(
        "{phase} hook exited {}",
        exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "abnormally".into())
    );
    let out = output.trim();
    if !out.is_empty() {
        s.push_str(&format!(": {}", out.lines().last().unwrap_or("")));
    }
    s
}
