//! Jobs: starting backups and restores, following their events,
//! cancelling them, and their history.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use arca_schemas::event::EventDetail;
use arca_schemas::job::Trigger;
use arca_schemas::msg::{
    CancelJob, GetJob, JobsStarted, ListJobs, ListJobsReply, StartBackup, StartRestore,
};
use arca_schemas::subject::SchedulerVerb;
use arca_schemas::{BackupType, JobId, JobRecord, JobStatus};
use futures::StreamExt;

use crate::render::{duration, print_event, status_word};
use crate::{call, parse_job, parse_since, parse_snapshot};

/// `arca backup`: starts the systems' backups and follows them.
pub async fn backup(
    client: &async_nats::Client,
    s: &str,
    systems: Vec<String>,
    full: bool,
    detach: bool,
) -> anyhow::Result<ExitCode> {
    let backup_type = Some(if full {
        BackupType::Full
    } else {
        BackupType::Incremental
    });
    let r: JobsStarted = call(
        client,
        s,
        SchedulerVerb::Backup,
        &StartBackup {
            systems,
            backup_type,
        },
    )
    .await?;
    follow_jobs(client, r.jobs, detach).await
}

/// `arca restore`: starts the restore of a snapshot and follows it.
#[allow(clippy::too_many_arguments)]
pub async fn restore(
    client: &async_nats::Client,
    s: &str,
    snapshot: String,
    target: Option<String>,
    include: Vec<String>,
    exclude: Vec<String>,
    to_system: Option<String>,
    allow_cross_system: bool,
    operator: Option<String>,
    keep_privileges: bool,
    detach: bool,
) -> anyhow::Result<ExitCode> {
    let snapshot = parse_snapshot(&snapshot)?;
    let filter = arca_schemas::PathFilter { include, exclude };
    let r: JobsStarted = call(
        client,
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
    follow_jobs(client, r.jobs, detach).await
}

/// `arca cancel`: asks the scheduler to cancel a job.
pub async fn cancel(client: &async_nats::Client, s: &str, job: &str) -> anyhow::Result<ExitCode> {
    let job = parse_job(job)?;
    let r: JobRecord = call(client, s, SchedulerVerb::Cancel, &CancelJob { job }).await?;
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

/// `arca watch`: follows a job's events, from the first, until it ends.
pub async fn watch(client: &async_nats::Client, job: &str) -> anyhow::Result<ExitCode> {
    let job = parse_job(job)?;
    follow_jobs(client, vec![job], false).await
}

/// `arca jobs`: the job history as a table, or JSON.
pub async fn list(
    client: &async_nats::Client,
    s: &str,
    system: Option<String>,
    since: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let since = since.as_deref().map(parse_since).transpose()?;
    let r: ListJobsReply = call(
        client,
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

/// `arca job`: one job record as JSON.
pub async fn show(client: &async_nats::Client, s: &str, job: &str) -> anyhow::Result<ExitCode> {
    let job = parse_job(job)?;
    let r: JobRecord = call(client, s, SchedulerVerb::GetJob, &GetJob { job }).await?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(ExitCode::SUCCESS)
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
