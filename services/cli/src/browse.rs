//! `arca ls` and `arca diff`: a snapshot's file list, read page by page
//! from the media service that holds it. Names, link targets and owner
//! names come from the system that was backed up, so they are printed
//! escaped ([`arca_schemas::text`]): no control character reaches the
//! terminal.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use arca_runtime::rpc;
use arca_schemas::SnapshotId;
use arca_schemas::msg::{ListSnapshots, ListSnapshotsReply, ListTree, TreeEntry, TreePage};
use arca_schemas::subject::{self, MediaVerb, SchedulerVerb};
use arca_schemas::text::{escape, escape_bytes};
use arca_schemas::tree::{Node, NodeKind};

/// Every entry of a snapshot, in walk order.
pub async fn tree(
    client: &async_nats::Client,
    scheduler: &str,
    snapshot: &SnapshotId,
) -> anyhow::Result<Vec<TreeEntry>> {
    let media = media_of(client, scheduler, snapshot).await?;
    let mut entries = Vec::new();
    let mut page = 0;
    loop {
        let r: TreePage = rpc::request_with_timeout(
            client,
            subject::media(&media, MediaVerb::Tree),
            &ListTree {
                snapshot: snapshot.clone(),
                page,
            },
            Duration::from_secs(120),
        )
        .await
        .map_err(|e| anyhow::anyhow!("media {media:?}: {e}"))?;
        entries.extend(r.entries);
        page += 1;
        if page >= r.pages {
            return Ok(entries);
        }
    }
}

/// The media service holding `snapshot`, from the scheduler's catalog.
async fn media_of(
    client: &async_nats::Client,
    scheduler: &str,
    snapshot: &SnapshotId,
) -> anyhow::Result<String> {
    let r: ListSnapshotsReply = crate::call(
        client,
        scheduler,
        SchedulerVerb::ListSnapshots,
        &ListSnapshots { system: None },
    )
    .await?;
    r.snapshots
        .into_iter()
        .find(|s| &s.id == snapshot)
        .map(|s| s.media)
        .with_context(|| format!("no snapshot {snapshot} in the catalog; see `arca snapshots`"))
}

fn path_of(n: &Node) -> String {
    String::from_utf8_lossy(&n.path).into_owned()
}

/// True when `path` is `under` or inside it.
fn within(path: &str, under: &str) -> bool {
    let under = under.trim_end_matches('/');
    under.is_empty()
        || path == under
        || (path.starts_with(under) && path.as_bytes().get(under.len()) == Some(&b'/'))
}

fn mode_string(n: &Node) -> String {
    let t = match n.kind {
        NodeKind::Dir => 'd',
        NodeKind::File { .. } => '-',
        NodeKind::Symlink { .. } => 'l',
        NodeKind::Fifo => 'p',
        NodeKind::Socket => 's',
        NodeKind::Device { .. } => {
            if n.mode & 0o170000 == 0o060000 {
                'b'
            } else {
                'c'
            }
        }
    };
    let mut s = String::from(t);
    for shift in [6, 3, 0] {
        let bits = (n.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// `arca ls`.
pub async fn ls(
    client: &async_nats::Client,
    scheduler: &str,
    snapshot: &SnapshotId,
    path: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let entries = tree(client, scheduler, snapshot).await?;
    let under = path.unwrap_or("");
    let shown: Vec<&TreeEntry> = entries
        .iter()
        .filter(|e| within(&path_of(&e.node), under))
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
    } else {
        for e in &shown {
            let n = &e.node;
            let owner = n
                .user
                .as_deref()
                .map_or_else(|| n.uid.to_string(), |u| escape(u).into_owned());
            let group = n
                .group
                .as_deref()
                .map_or_else(|| n.gid.to_string(), |g| escape(g).into_owned());
            let time = chrono::DateTime::from_timestamp(n.mtime, n.mtime_nsec)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default();
            let mut line = format!(
                "{} {:<8} {:<8} {:>12} {} {}",
                mode_string(n),
                owner,
                group,
                n.size,
                time,
                escape_bytes(&n.path)
            );
            if let NodeKind::Symlink { target } = &n.kind {
                line.push_str(&format!(" -> {}", escape_bytes(target)));
            }
            if let Some(first) = &n.hardlink {
                line.push_str(&format!(" (link to {})", escape_bytes(first)));
            }
            if n.changed {
                line.push_str(" (changed while read)");
            }
            println!("{line}");
        }
    }
    if shown.is_empty() && !under.is_empty() {
        eprintln!("no path {} in snapshot {snapshot}", escape(under));
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// What differs between two versions of one path.
fn change(a: &TreeEntry, b: &TreeEntry) -> Option<char> {
    let (x, y) = (&a.node, &b.node);
    if x.kind.name() != y.kind.name() || a.content != b.content || x.kind != y.kind {
        return Some('M');
    }
    let meta = |n: &Node| {
        (
            n.mode,
            n.uid,
            n.gid,
            n.mtime,
            n.mtime_nsec,
            n.size,
            n.xattrs.clone(),
            n.hardlink.clone(),
        )
    };
    (meta(x) != meta(y)).then_some('m')
}

/// `arca diff`: `+` added, `-` removed, `M` content or kind changed, `m`
/// metadata only (mode, owner, mtime, extended attributes, links).
pub async fn diff(
    client: &async_nats::Client,
    scheduler: &str,
    from: &SnapshotId,
    to: &SnapshotId,
) -> anyhow::Result<ExitCode> {
    let a = tree(client, scheduler, from).await?;
    let b = tree(client, scheduler, to).await?;
    let index = |v: Vec<TreeEntry>| -> BTreeMap<Vec<u8>, TreeEntry> {
        v.into_iter().map(|e| (e.node.path.clone(), e)).collect()
    };
    let (a, b) = (index(a), index(b));
    let (mut added, mut removed, mut modified, mut meta) = (0, 0, 0, 0);
    let mut paths: Vec<&Vec<u8>> = a.keys().chain(b.keys()).collect();
    paths.sort();
    paths.dedup();
    for p in paths {
        let shown = escape_bytes(p);
        match (a.get(p), b.get(p)) {
            (Some(_), None) => {
                removed += 1;
                println!("-    {shown}");
            }
            (None, Some(_)) => {
                added += 1;
                println!("+    {shown}");
            }
            (Some(x), Some(y)) => match change(x, y) {
                Some('M') => {
                    modified += 1;
                    println!("M    {shown}");
                }
                Some(_) => {
                    meta += 1;
                    println!("m    {shown}");
                }
                None => {}
            },
            (None, None) => {}
        }
    }
    println!(
        "{added} added, {removed} removed, {modified} changed, {meta} with changed metadata only"
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_respects_name_boundaries() {
        assert!(within("/srv/a/b", "/srv/a"));
        assert!(within("/srv/a", "/srv/a/"));
        assert!(!within("/srv/ab", "/srv/a"));
        assert!(within("/anything", ""));
    }
}
