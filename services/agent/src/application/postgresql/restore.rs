//! The server stopped and started around a restore in place.
//!
//! Before anything is stopped, the pre-restore works out how the server
//! will be started again (`start.rs`) and refuses the restore when it
//! cannot: a server stopped and not started again is the outage a restore
//! should end, not begin. The post-restore starts it that way and checks
//! that it accepts connections where it did before.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arca_schemas::{JobId, PostgresqlSpec};

use super::start::{Start, listening};
use super::{connect, pg_error, program};

/// The data directory a restore writes: the configured one, or its place
/// under the restore's target folder.
fn restored_dir(spec: &PostgresqlSpec, target: Option<&str>) -> PathBuf {
    let dir = Path::new(&spec.data_directory);
    match target {
        Some(t) => Path::new(t).join(dir.strip_prefix("/").unwrap_or(dir)),
        None => dir.to_path_buf(),
    }
}

/// Owner of `dir` (or of its nearest existing ancestor), to run `pg_ctl`
/// as: PostgreSQL refuses to run as root. `None` when the agent is not
/// root (it then runs them as itself).
fn owner(dir: &Path) -> Option<(u32, u32)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    dir.ancestors()
        .find_map(|d| std::fs::metadata(d).ok())
        .map(|md| (md.uid(), md.gid()))
}

/// Runs `command`, as the owner of `dir` when `as_owner` (`pg_ctl`), else
/// as the agent (an operator's command, like a hook's).
async fn run(
    spec: &PostgresqlSpec,
    command: Vec<String>,
    dir: &Path,
    as_owner: bool,
) -> arca_schemas::msg::HookReply {
    let user = if as_owner { owner(dir) } else { None };
    crate::hooks::run_command(&command, &[], spec.timeout_secs, user).await
}

/// True when a server runs on `dir` (`pg_ctl status`).
async fn running(spec: &PostgresqlSpec, dir: &Path) -> Result<bool, String> {
    let status = vec![
        program(spec, "pg_ctl"),
        "status".to_owned(),
        "-D".to_owned(),
        dir.display().to_string(),
    ];
    let r = run(spec, status, dir, true).await;
    match r.exit_code {
        Some(0) => Ok(true),
        Some(3) => Ok(false),
        _ => Err(format!(
            "cannot tell whether a server runs on {}: pg_ctl status: {}",
            dir.display(),
            r.output.trim()
        )),
    }
}

/// The restore side: what the pre-restore step did, for the post-restore.
pub struct Restore {
    spec: PostgresqlSpec,
    dir: PathBuf,
    in_place: bool,
    was_running: bool,
    moved_aside: Option<PathBuf>,
    /// How the server is started afterwards (in place only).
    start: Option<Start>,
}

impl Restore {
    /// Pre-restore. In place: works out how the server will be started
    /// again, then stops it (when it runs) and moves the data directory
    /// aside, since a restore must start from an empty directory (files the
    /// snapshot lacks, newer WAL above all, would be replayed or read).
    /// Into a target folder: checks that nothing is there yet. The
    /// returned `Restore` is kept even when a step failed after the stop,
    /// so that the post-restore can start again a server it stopped.
    pub async fn prepare(
        spec: &PostgresqlSpec,
        job: JobId,
        target: Option<&str>,
    ) -> (Option<Restore>, Result<String, String>) {
        let dir = restored_dir(spec, target);
        let shown = dir.display().to_string();
        if target.is_some() {
            let occupied = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
            let result = if occupied {
                Err(format!(
                    "postgresql: {shown} is not empty; restore a data directory into an empty folder"
                ))
            } else {
                Ok(format!(
                    "postgresql: restoring into {shown}, which is empty; the server of {} is left alone",
                    spec.data_directory
                ))
            };
            let r = Restore {
                spec: spec.clone(),
                dir,
                in_place: false,
                was_running: false,
                moved_aside: None,
                start: None,
            };
            return (Some(r), result);
        }
        if !dir.exists() {
            let r = Restore {
                spec: spec.clone(),
                start: Some(Start::of_stopped(spec, &dir)),
                dir,
                in_place: true,
                was_running: false,
                moved_aside: None,
            };
            return (
                Some(r),
                Ok(format!(
                    "postgresql: {shown} does not exist; nothing to stop"
                )),
            );
        }
        let was_running = match running(spec, &dir).await {
            Ok(r) => r,
            Err(e) => return (None, Err(e)),
        };
        let start = if was_running {
            match Start::of_running(spec, &dir).await {
                Ok(s) => s,
                Err(e) => {
                    return (
                        None,
                        Err(format!(
                            "postgresql: the server on {shown} could not be started again after \
                             the restore: {e}. Nothing was stopped and the server still runs. Set \
                             start-command (and stop-command) for this cluster, or restart it with \
                             pg_ctl so that it records its options, and restore again"
                        )),
                    );
                }
            }
        } else {
            Start::of_stopped(spec, &dir)
        };
        let mut out = vec![format!(
            "postgresql: after the restore the server is started with {} ({}{})",
            start.shown(),
            start.origin,
            match &start.listening {
                Some(l) => format!("; it listens on {l} and must again"),
                None => String::new(),
            }
        )];
        let mut r = Restore {
            spec: spec.clone(),
            dir: dir.clone(),
            in_place: true,
            was_running,
            moved_aside: None,
            start: Some(start),
        };
        if was_running {
            let (stop, as_owner) = match &spec.stop_command {
                Some(c) => (c.clone(), false),
                None => (
                    vec![
                        program(spec, "pg_ctl"),
                        "stop".to_owned(),
                        "-D".to_owned(),
                        shown.clone(),
                        "-m".to_owned(),
                        "fast".to_owned(),
                        "-w".to_owned(),
                        "-t".to_owned(),
                        spec.timeout_secs.to_string(),
                    ],
                    true,
                ),
            };
            let s = run(spec, stop, &dir, as_owner).await;
            out.push(s.output.trim().to_owned());
            match running(spec, &dir).await {
                Ok(false) => out.push(format!("postgresql: server on {shown} stopped")),
                Ok(true) => {
                    out.push(format!("postgresql: the server on {shown} did not stop"));
                    return (Some(r), Err(out.join("\n")));
                }
                Err(e) => {
                    out.push(e);
                    return (Some(r), Err(out.join("\n")));
                }
            }
        } else {
            out.push(format!("postgresql: no server runs on {shown}"));
        }
        let aside = PathBuf::from(format!("{shown}.before-restore-{job}"));
        match std::fs::rename(&dir, &aside) {
            Ok(()) => {
                out.push(format!(
                    "postgresql: the data directory as it was is kept at {}",
                    aside.display()
                ));
                r.moved_aside = Some(aside);
                (Some(r), Ok(out.join("\n")))
            }
            Err(e) => {
                out.push(format!(
                    "postgresql: cannot move {shown} aside to {} ({e}); empty it by hand and restore again",
                    aside.display()
                ));
                (Some(r), Err(out.join("\n")))
            }
        }
    }

    /// Post-restore: starts the server on a data directory restored in
    /// place (or again, when the restore never began) the way the
    /// pre-restore worked out, and waits until it accepts connections
    /// where it did before. One restored into a target folder is left
    /// stopped: it would share the original's port and socket.
    pub async fn finish(self, restored: bool) -> Result<String, String> {
        let shown = self.dir.display().to_string();
        let start = match (self.in_place, self.start) {
            (true, Some(s)) => s,
            _ => {
                return Ok(format!(
                    "postgresql: restored into {shown}; not started here (it would share the port of \
                     the server of {}); start it with pg_ctl -D {shown} -o '-p PORT -k SOCKET-DIR' start",
                    self.spec.data_directory
                ));
            }
        };
        let start_again = self.was_running && self.moved_aside.is_none();
        if !restored && !start_again {
            return Err(format!(
                "postgresql: the restore did not complete; the server on {shown} stays stopped{}",
                match &self.moved_aside {
                    Some(a) => format!(" (the data directory as it was is at {})", a.display()),
                    None => String::new(),
                }
            ));
        }
        if restored && !self.dir.join("PG_VERSION").is_file() {
            return Err(format!(
                "postgresql: {shown} holds no PG_VERSION after the restore; not starting a server"
            ));
        }
        let started = Instant::now();
        let r = run(&self.spec, start.command.clone(), &self.dir, start.as_owner).await;
        let mut out = vec![r.output.trim().to_owned()];
        if !r.success {
            out.push(format!(
                "postgresql: the start command ({}) failed (exit {:?}){}",
                start.shown(),
                r.exit_code,
                match &start.log {
                    Some(log) => format!("; the server log is {log}"),
                    None => String::new(),
                }
            ));
            return Err(out.join("\n"));
        }
        // Accepting connections is what counts, whatever started it.
        let deadline = started + Duration::from_secs(self.spec.timeout_secs);
        loop {
            let attempt = async {
                let (client, conn) = connect(&self.spec).await?;
                let row = client
                    .query_one("SELECT pg_is_in_recovery()", &[])
                    .await
                    .map_err(|e| pg_error(&e))?;
                let in_recovery: bool = row.get(0);
                drop(client);
                let _ = conn.await;
                Ok::<bool, String>(in_recovery)
            };
            match attempt.await {
                Ok(false) => break,
                Ok(true) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(true) => {
                    out.push(format!(
                        "postgresql: server on {shown} still in recovery after {}s",
                        self.spec.timeout_secs
                    ));
                    return Err(out.join("\n"));
                }
                Err(e) => {
                    out.push(format!(
                        "postgresql: server on {shown} does not accept connections after {}s: {e}",
                        self.spec.timeout_secs
                    ));
                    return Err(out.join("\n"));
                }
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        if let Some(before) = &start.listening {
            match listening(&self.spec).await {
                Ok(now) if &now == before => {}
                Ok(now) => {
                    out.push(format!(
                        "postgresql: server on {shown} came up on {now}, not on {before} as \
                         before the restore"
                    ));
                    return Err(out.join("\n"));
                }
                Err(e) => {
                    out.push(format!(
                        "postgresql: cannot ask the server on {shown} where it listens: {e}"
                    ));
                    return Err(out.join("\n"));
                }
            }
            out.push(format!(
                "postgresql: server on {shown} accepts connections on {before}, as before the \
                 restore ({elapsed:.1}s after the start)"
            ));
        } else {
            out.push(format!(
                "postgresql: server on {shown} accepts connections ({elapsed:.1}s after the start)"
            ));
        }
        Ok(out.join("\n"))
    }
}
