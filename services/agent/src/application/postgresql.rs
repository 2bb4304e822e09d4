//! The `postgresql` kind: a physical backup the way PostgreSQL documents
//! a low-level base backup ("Making a Base Backup Using the Low Level
//! API"), and the server stopped and started around a restore.
//!
//! Backup, in order:
//!
//! 1. Prepare: connect, check that the server's `data_directory` is the
//!    configured one, create a temporary physical replication slot that
//!    reserves WAL from the current redo point (so that no checkpoint
//!    recycles a segment the backup needs; the slot belongs to the session
//!    and vanishes with it), then `pg_backup_start(label, fast => true)`.
//!    The session stays open for the whole transfer: a non-exclusive backup
//!    ends when its session does.
//! 2. Transfer: the data directory is read while the server keeps writing.
//!    What a base backup omits is left out (see [`rule`]): `pg_wal/`'s
//!    contents, `postmaster.pid`, `postmaster.opts`, temporary files, the
//!    contents of `pg_replslot/`, `pg_dynshmem/`, `pg_notify/`,
//!    `pg_serial/`, `pg_snapshots/`, `pg_stat_tmp/` and `pg_subtrans/`.
//! 3. Still within the transfer, after every data file was read:
//!    `pg_backup_stop(wait_for_archive => false)`. It writes the
//!    end-of-backup record and switches to a new WAL segment, so every
//!    segment from the one holding the backup's redo point to the one
//!    holding the stop location is complete. Those segments are read now,
//!    from `pg_wal/`, and stored in the snapshot under `pg_wal/`; the label
//!    the stop returned is stored as `backup_label` (and the tablespace map
//!    as `tablespace_map` when there is one). Reading WAL before the stop
//!    would miss the end-of-backup record, and the restored server would
//!    not know when it reached consistency.
//! 4. Release (post hook): if the transfer failed before the stop,
//!    `pg_backup_stop` ends the backup mode; the session closes, dropping
//!    the slot.
//!
//! A restored data directory thus holds `backup_label` and the WAL from
//! the redo point to the end of the backup: the server replays it at its
//! first start, reaches a consistent state at the end-of-backup record and
//! opens, without a `restore_command`.
//!
//! The restore side (the server stopped and started around an in-place
//! restore) is in `postgresql/restore.rs`; how the running server was
//! started, read before it is stopped, in `postgresql/start.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use arca_schemas::{JobId, PostgresqlSpec};

use super::Addition;

mod restore;
mod start;

pub use restore::Restore;

/// What the backup walk does with a path inside a data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Back it up.
    Keep,
    /// Leave it out.
    Omit,
    /// Keep the folder, leave out what it holds.
    KeepFolderOnly,
}

/// Folders whose contents a base backup leaves out (the folders stay).
/// `pg_wal` is filled after `pg_backup_stop` with the WAL the backup needs.
const CONTENTS_OMITTED: &[&str] = &[
    "pg_wal",
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Files at the top of a data directory a base backup leaves out.
/// `backup_label` and `tablespace_map` come from `pg_backup_stop` instead.
const FILES_OMITTED: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "tablespace_map",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
];

/// The rule for `path` in the backup of the cluster in `data_dir`.
pub fn rule(data_dir: &Path, path: &Path) -> Rule {
    let Ok(rel) = path.strip_prefix(data_dir) else {
        return Rule::Keep;
    };
    let mut parts = rel.components();
    let (Some(first), rest) = (parts.next(), parts.next()) else {
        return Rule::Keep;
    };
    let first = first.as_os_str().to_string_lossy();
    if rest.is_none() {
        if CONTENTS_OMITTED.contains(&first.as_ref()) {
            return Rule::KeepFolderOnly;
        }
        if FILES_OMITTED.contains(&first.as_ref()) {
            return Rule::Omit;
        }
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    if name == "pg_internal.init" || name.starts_with("pgsql_tmp") {
        return Rule::Omit;
    }
    Rule::Keep
}

async fn connect(
    spec: &PostgresqlSpec,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), String> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&spec.host)
        .port(spec.port)
        .user(&spec.user)
        .dbname(&spec.database)
        .application_name("arca-agent")
        .connect_timeout(Duration::from_secs(10));
    if let Some(f) = &spec.password_file {
        let pw = std::fs::read_to_string(f)
            .map_err(|e| format!("cannot read password-file {f}: {e}"))?;
        cfg.password(pw.trim_end_matches(['\r', '\n']));
    }
    let (client, connection) = cfg.connect(tokio_postgres::NoTls).await.map_err(|e| {
        format!(
            "cannot connect to PostgreSQL at host {} port {} as {}: {}",
            spec.host,
            spec.port,
            spec.user,
            pg_error(&e)
        )
    })?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended with an error");
        }
    });
    Ok((client, task))
}

/// `name` in the spec's `bin-dir`, or on `PATH`.
fn program(spec: &PostgresqlSpec, name: &str) -> String {
    match &spec.bin_dir {
        Some(d) => Path::new(d).join(name).display().to_string(),
        None => name.to_owned(),
    }
}

/// The server's own message when there is one (tokio-postgres's Display
/// says only "db error").
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

/// A backup in progress: the session that started it.
pub struct Backup {
    data_dir: PathBuf,
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
    segment_size: u64,
    start_lsn: String,
    stopped: bool,
}

impl Backup {
    /// Step 1: puts the cluster in backup mode on a session kept open.
    pub async fn start(spec: &PostgresqlSpec, job: JobId) -> Result<(Backup, String), String> {
        let data_dir = PathBuf::from(&spec.data_directory);
        if !data_dir.join("PG_VERSION").is_file() {
            return Err(format!(
                "{} is not a PostgreSQL data directory (no PG_VERSION)",
                data_dir.display()
            ));
        }
        let wal = std::fs::symlink_metadata(data_dir.join("pg_wal"))
            .map_err(|e| format!("cannot read {}/pg_wal: {e}", data_dir.display()))?;
        if !wal.is_dir() {
            return Err(format!(
                "{}/pg_wal is a symbolic link; keep the WAL inside the data directory to back it up",
                data_dir.display()
            ));
        }
        let (client, connection) = connect(spec).await?;
        let q = |e: tokio_postgres::Error| pg_error(&e);
        let row = client
            .query_one(
                "SELECT current_setting('data_directory'), \
                 (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), \
                 pg_is_in_recovery()",
                &[],
            )
            .await
            .map_err(q)?;
        let server_dir: String = row.get(0);
        let segment_size: i64 = row.get(1);
        let in_recovery: bool = row.get(2);
        if in_recovery {
            return Err("the server is a standby; back up the primary".to_owned());
        }
        let same = match (
            std::fs::canonicalize(&server_dir),
            std::fs::canonicalize(&data_dir),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if !same {
            return Err(format!(
                "the server at host {} port {} serves {server_dir}, not the configured data-directory {}",
                spec.host,
                spec.port,
                data_dir.display()
            ));
        }
        let slot = format!("arca_{}", job.0.simple());
        client
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true, true)",
                &[&slot],
            )
            .await
            .map_err(|e| {
                format!(
                    "cannot create the temporary replication slot that keeps the backup's WAL \
                     (needs a free slot in max_replication_slots and wal_level replica): {}",
                    pg_error(&e)
                )
            })?;
        let label = format!("arca job {job}");
        let row = client
            .query_one("SELECT pg_backup_start($1, true)::text", &[&label])
            .await
            .map_err(|e| format!("pg_backup_start failed: {}", pg_error(&e)))?;
        let start_lsn: String = row.get(0);
        let note = format!(
            "postgresql {}: backup mode started at WAL {start_lsn} (label {label:?}, session held open)",
            data_dir.display()
        );
        Ok((
            Backup {
                data_dir,
                client,
                connection,
                segment_size: segment_size as u64,
                start_lsn,
                stopped: false,
            },
            note,
        ))
    }

    /// The data directory being backed up.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Step 3: ends backup mode and names what the snapshot must add.
    pub async fn stop(&mut self) -> Result<(Vec<Addition>, String), String> {
        let row = self
            .client
            .query_one(
                "SELECT s.lsn::text, s.labelfile, s.spcmapfile, pg_walfile_name(s.lsn) \
                 FROM pg_backup_stop(false) AS s",
                &[],
            )
            .await
            .map_err(|e| format!("pg_backup_stop failed: {}", pg_error(&e)))?;
        self.stopped = true;
        let stop_lsn: String = row.get(0);
        let label: String = row.get(1);
        let spcmap: Option<String> = row.get(2);
        let last: String = row.get(3);
        let first = label
            .lines()
            .find_map(|l| l.strip_prefix("START WAL LOCATION:"))
            .and_then(|l| l.split("(file ").nth(1))
            .map(|l| l.trim_end_matches(')').trim().to_owned())
            .ok_or_else(|| format!("backup label without a START WAL LOCATION: {label:?}"))?;
        let wal = self.data_dir.join("pg_wal");
        let segments = segment_range(&first, &last, self.segment_size)?;
        let mut additions = vec![Addition::Bytes {
            path: self.data_dir.join("backup_label"),
            data: label.into_bytes(),
        }];
        if let Some(map) = spcmap.filter(|m| !m.is_empty()) {
            additions.push(Addition::Bytes {
                path: self.data_dir.join("tablespace_map"),
                data: map.into_bytes(),
            });
        }
        for name in &segments {
            let p = wal.join(name);
            if !p.is_file() {
                return Err(format!(
                    "WAL segment {name}, needed to make the backup consistent, is not in {}",
                    wal.display()
                ));
            }
            additions.push(Addition::File(p));
        }
        let mut history: Vec<PathBuf> = std::fs::read_dir(&wal)
            .map_err(|e| format!("cannot list {}: {e}", wal.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "history"))
            .collect();
        history.sort();
        let n_history = history.len();
        additions.extend(history.into_iter().map(Addition::File));
        let note = format!(
            "postgresql {}: backup mode ended at WAL {stop_lsn} (started at {}); the snapshot holds \
             backup_label and {} WAL segment(s) {first} .. {last}{}",
            self.data_dir.display(),
            self.start_lsn,
            segments.len(),
            if n_history > 0 {
                format!(" and {n_history} timeline history file(s)")
            } else {
                String::new()
            }
        );
        Ok((additions, note))
    }

    /// Step 4: ends backup mode if the transfer did not, and closes the
    /// session (which drops the replication slot).
    pub async fn end(self) -> Result<String, String> {
        let mut result = Ok(format!(
            "postgresql {}: session closed",
            self.data_dir.display()
        ));
        if !self.stopped {
            result = match self
                .client
                .execute("SELECT pg_backup_stop(false)", &[])
                .await
            {
                Ok(_) => Ok(format!(
                    "postgresql {}: backup mode ended without a snapshot (the transfer did not finish)",
                    self.data_dir.display()
                )),
                // Closing the session below aborts the backup anyway.
                Err(e) => Ok(format!(
                    "postgresql {}: pg_backup_stop failed ({}); the closing session aborts the backup",
                    self.data_dir.display(),
                    pg_error(&e)
                )),
            };
        }
        drop(self.client);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.connection).await;
        result
    }
}

/// Names of the WAL segments from `first` to `last` (both included).
fn segment_range(first: &str, last: &str, segment_size: u64) -> Result<Vec<String>, String> {
    let parse = |name: &str| -> Option<(u32, u64, u64)> {
        if name.len() != 24 || !name.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        Some((tli, log, seg))
    };
    let bad = || format!("unexpected WAL file names {first:?} .. {last:?}");
    let (tli, log_a, seg_a) = parse(first).ok_or_else(bad)?;
    let (tli_b, log_b, seg_b) = parse(last).ok_or_else(bad)?;
    if segment_size == 0 || tli != tli_b {
        return Err(bad());
    }
    let per_log = 0x1_0000_0000u64 / segment_size;
    let (a, b) = (log_a * per_log + seg_a, log_b * per_log + seg_b);
    if b < a || b - a > 1_000_000 {
        return Err(bad());
    }
    Ok((a..=b)
        .map(|n| format!("{tli:08X}{:08X}{:08X}", n / per_log, n % per_log))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_base_backup_leaves_out() {
        let d = Path::new("/srv/pg");
        assert_eq!(rule(d, Path::new("/srv/pg")), Rule::Keep);
        assert_eq!(rule(d, Path::new("/srv/pg/base/1/1259")), Rule::Keep);
        assert_eq!(rule(d, Path::new("/srv/pg/global/pg_control")), Rule::Keep);
        assert_eq!(rule(d, Path::new("/srv/pg/pg_wal")), Rule::KeepFolderOnly);
        assert_eq!(
            rule(d, Path::new("/srv/pg/pg_replslot")),
            Rule::KeepFolderOnly
        );
        assert_eq!(rule(d, Path::new("/srv/pg/postmaster.pid")), Rule::Omit);
        assert_eq!(rule(d, Path::new("/srv/pg/backup_label")), Rule::Omit);
        assert_eq!(rule(d, Path::new("/srv/pg/base/1/pgsql_tmp")), Rule::Omit);
        assert_eq!(
            rule(d, Path::new("/srv/pg/global/pg_internal.init")),
            Rule::Omit
        );
        // Only at the top: a table's folder may hold anything.
        assert_eq!(
            rule(d, Path::new("/srv/pg/base/postmaster.pid")),
            Rule::Keep
        );
        assert_eq!(rule(d, Path::new("/srv/other/postmaster.pid")), Rule::Keep);
    }

    #[test]
    fn segments_between_two_wal_files() {
        let s = segment_range(
            "0000000100000000000000FE",
            "000000010000000100000001",
            16 << 20,
        )
        .unwrap();
        assert_eq!(
            s,
            vec![
                "0000000100000000000000FE",
                "0000000100000000000000FF",
                "000000010000000100000000",
                "000000010000000100000001",
            ]
        );
        assert!(
            segment_range(
                "000000010000000000000002",
                "000000020000000000000002",
                16 << 20
            )
            .is_err()
        );
        assert!(
            segment_range(
                "000000010000000000000003",
                "000000010000000000000002",
                16 << 20
            )
            .is_err()
        );
    }
}
