//! The repositories and the catalog of their snapshots: listing,
//! verifying, forgetting, pruning and repairing, each asked of the
//! scheduler or of a media service.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use arca_runtime::rpc;
use arca_schemas::msg::{
    CatalogRebuilt, ForgetReply, ForgetSnapshots, ListSnapshots, ListSnapshotsReply, PruneReport,
    PruneRepository, RebuildCatalog, RepairIndex, RepairIndexReply, RetentionPolicy, VerifyReport,
    VerifyRepository,
};
use arca_schemas::subject::{self, SchedulerVerb};

use crate::render::shown;
use crate::{CatalogCommand, RepairCommand, call};

/// `arca snapshots`: the catalog's snapshots as a table, or JSON.
pub async fn snapshots(
    client: &async_nats::Client,
    s: &str,
    system: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let r: ListSnapshotsReply = call(
        client,
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

/// `arca catalog`: the scheduler's catalog of snapshots.
pub async fn catalog(
    client: &async_nats::Client,
    s: &str,
    command: CatalogCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        CatalogCommand::Rebuild { media } => rebuild_catalog(client, s, media).await,
    }
}

async fn rebuild_catalog(
    client: &async_nats::Client,
    s: &str,
    media: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let r: CatalogRebuilt = call(
        client,
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

/// `arca verify`: a media service's check of its repository; exits 1
/// when it found a problem.
pub async fn verify(
    client: &async_nats::Client,
    read_data: bool,
    subset: Option<u8>,
    media: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let req = VerifyRepository {
        read_data,
        subset_percent: subset.unwrap_or(100),
    };
    let r: VerifyReport = rpc::request_with_timeout(
        client,
        subject::media(media, subject::MediaVerb::Verify),
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

/// `arca forget`: forgets the system's snapshots `policy` does not keep.
pub async fn forget(
    client: &async_nats::Client,
    s: &str,
    system: String,
    policy: RetentionPolicy,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    if policy.is_empty() {
        bail!("name at least one --keep-* rule; a policy that keeps nothing is refused");
    }
    let r: ForgetReply = call(
        client,
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

/// `arca prune`: deletes data no snapshot needs.
pub async fn prune(
    client: &async_nats::Client,
    media: &str,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let r: PruneReport = rpc::request_with_timeout(
        client,
        subject::media(media, subject::MediaVerb::Prune),
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

/// `arca repair`: repairs a media service's repository.
pub async fn repair(
    client: &async_nats::Client,
    command: RepairCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        RepairCommand::Index { media } => repair_index(client, &media).await,
    }
}

async fn repair_index(client: &async_nats::Client, media: &str) -> anyhow::Result<ExitCode> {
    let r: RepairIndexReply = rpc::request_with_timeout(
        client,
        subject::media(media, subject::MediaVerb::RepairIndex),
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
