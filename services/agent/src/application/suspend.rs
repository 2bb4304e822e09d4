//! The `suspend` kind: for applications without a backup mode, their
//! processes are stopped with SIGSTOP before a backup transfer and
//! continued with SIGCONT after it, so that no file changes while it is
//! read. A process group is signalled as a group (one `killpg`); a pid
//! file names a process whose group is meant; a systemd unit's processes
//! are read from its cgroup. The preparation waits until every process is
//! seen stopped (state `T` in `/proc`, or waiting for a stopped vfork
//! child, see [`in_vfork`]), so the transfer never overlaps a write in
//! flight. The release runs at the post hook, or at the agent's
//! own deadline when the scheduler is gone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arca_schemas::SuspendSpec;
use rustix::process::{Pid, Signal};

/// Why processes could not be stopped or continued. None is helped by a
/// retry as such: each names what to correct (the spec, the unit, the
/// process that would not stop).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SuspendError {
    /// A number that is no process id.
    #[error("{0} is not a process id")]
    NotAPid(i32),
    /// The unit has no cgroup where it is looked for.
    #[error("unit {unit}: no cgroup at {} (is it running, on cgroup v2?)", dir.display())]
    NoCgroup {
        /// The unit.
        unit: String,
        /// Where its cgroup was looked for.
        dir: PathBuf,
    },
    /// The unit's cgroup holds no process.
    #[error("unit {0} has no processes")]
    EmptyUnit(String),
    /// The pid file cannot be read.
    #[error("cannot read pid-file {file}: {source}")]
    PidFile {
        /// The pid file.
        file: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The pid file does not start with a process id.
    #[error("pid-file {0} does not start with a process id")]
    PidFileContent(String),
    /// The process the pid file names has no group to be found.
    #[error("process {pid} of pid-file {file}: {source}")]
    PidFileProcess {
        /// The process.
        pid: i32,
        /// The pid file.
        file: String,
        /// The cause.
        source: rustix::io::Errno,
    },
    /// The spec names no processes.
    #[error("suspend names no processes")]
    NothingNamed,
    /// The group named holds the agent.
    #[error("refusing to stop process group {0}: the agent itself belongs to it")]
    OwnGroup(i32),
    /// The processes named hold the agent or process 1.
    #[error("refusing to stop {0}: it holds the agent or process 1")]
    HoldsAgent(String),
    /// Nothing runs of what is named.
    #[error("{0}: no such processes")]
    NoSuchProcesses(String),
    /// Some processes did not stop in time; all were continued again.
    #[error("{what}: processes {running} did not stop within {secs}s; continued them again")]
    NotStopped {
        /// What was to be stopped.
        what: String,
        /// The processes still running, with their states.
        running: String,
        /// The timeout.
        secs: u64,
    },
    /// A process group could not be signalled.
    #[error("cannot signal process group {group}: {source}")]
    SignalGroup {
        /// The group.
        group: i32,
        /// The cause.
        source: rustix::io::Errno,
    },
    /// A process could not be signalled.
    #[error("cannot signal process {pid}: {source}")]
    SignalProcess {
        /// The process.
        pid: i32,
        /// The cause.
        source: rustix::io::Errno,
    },
}

/// What was stopped.
#[derive(Debug)]
enum Target {
    Group(i32),
    Pids(Vec<i32>),
}

/// Processes stopped for a transfer.
#[derive(Debug)]
pub struct Suspended {
    target: Target,
    what: String,
}

fn pid(n: i32) -> Result<Pid, SuspendError> {
    Pid::from_raw(n).ok_or(SuspendError::NotAPid(n))
}

/// (process group, state) of a process, from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(i32, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((pgrp, state))
}

/// True when `pid` waits in the kernel for a vfork child (a shell starting
/// a command) to exec or exit. If that child was stopped before it
/// exec'd, the parent never reaches the stopped state: it waits
/// uninterruptibly, runs no code of its own, and takes its pending SIGSTOP
/// the moment the wait ends. It counts as stopped.
fn in_vfork(pid: i32) -> bool {
    let state = stat(pid).map(|(_, st)| st);
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    state == Some('D') && matches!(wchan.trim(), "kernel_clone" | "wait_for_vfork_done")
}

/// Every process of group `pgid`.
fn members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| stat(*p).is_some_and(|(g, _)| g == pgid))
        .collect()
}

/// The processes of a unit's cgroup and of the cgroups below it.
fn unit_pids(unit: &str) -> Result<Vec<i32>, SuspendError> {
    let from_systemd = std::process::Command::new("systemctl")
        .args(["show", "-P", "ControlGroup", unit])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|cg| !cg.is_empty());
    let dir = match from_systemd {
        Some(cg) => PathBuf::from(format!("/sys/fs/cgroup{cg}")),
        None => PathBuf::from(format!("/sys/fs/cgroup/system.slice/{unit}")),
    };
    if !dir.is_dir() {
        return Err(SuspendError::NoCgroup {
            unit: unit.to_owned(),
            dir,
        });
    }
    let mut pids = Vec::new();
    collect(&dir, &mut pids);
    if pids.is_empty() {
        return Err(SuspendError::EmptyUnit(unit.to_owned()));
    }
    Ok(pids)
}

fn collect(dir: &Path, pids: &mut Vec<i32>) {
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(d) = std::fs::read_dir(dir) {
        for e in d.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect(&e.path(), pids);
            }
        }
    }
}

impl Suspended {
    /// Stops the processes and waits until each is seen stopped.
    pub async fn stop(spec: &SuspendSpec) -> Result<(Suspended, String), SuspendError> {
        let me = std::process::id() as i32;
        let my_group = rustix::process::getpgrp().as_raw_nonzero().get();
        let (target, what) = if let Some(g) = spec.process_group {
            (Target::Group(g), format!("process group {g}"))
        } else if let Some(f) = &spec.pid_file {
            let text = std::fs::read_to_string(f).map_err(|source| SuspendError::PidFile {
                file: f.clone(),
                source,
            })?;
            let p: i32 = text
                .lines()
                .next()
                .and_then(|l| l.trim().parse().ok())
                .ok_or_else(|| SuspendError::PidFileContent(f.clone()))?;
            let g = rustix::process::getpgid(Some(pid(p)?))
                .map_err(|source| SuspendError::PidFileProcess {
                    pid: p,
                    file: f.clone(),
                    source,
                })?
                .as_raw_nonzero()
                .get();
            (
                Target::Group(g),
                format!("process group {g} (of process {p} in {f})"),
            )
        } else if let Some(u) = &spec.unit {
            let pids = unit_pids(u)?;
            let what = format!("the {} process(es) of unit {u}", pids.len());
            (Target::Pids(pids), what)
        } else {
            return Err(SuspendError::NothingNamed);
        };
        let pids = match &target {
            Target::Group(g) => {
                if *g == my_group || *g <= 1 {
                    return Err(SuspendError::OwnGroup(*g));
                }
                members(*g)
            }
            Target::Pids(p) => p.clone(),
        };
        if pids.contains(&me) || pids.contains(&1) {
            return Err(SuspendError::HoldsAgent(what));
        }
        if pids.is_empty() {
            return Err(SuspendError::NoSuchProcesses(what));
        }
        let s = Suspended { target, what };
        s.signal(Signal::STOP)?;
        // Delivery is asynchronous; the transfer must not begin while one
        // of them is still running (a process in uninterruptible sleep
        // stops when it leaves it).
        let deadline = Instant::now() + Duration::from_secs(spec.timeout_secs);
        loop {
            let pids = match &s.target {
                Target::Group(g) => members(*g),
                Target::Pids(p) => p.clone(),
            };
            let running: Vec<i32> = pids
                .into_iter()
                .filter(|p| {
                    stat(*p).is_some_and(|(_, st)| !matches!(st, 'T' | 't' | 'Z' | 'X'))
                        && !in_vfork(*p)
                })
                .collect();
            if running.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = s.signal(Signal::CONT);
                let states: Vec<String> = running
                    .iter()
                    .map(|p| {
                        let state = stat(*p).map_or('?', |(_, st)| st);
                        let wchan =
                            std::fs::read_to_string(format!("/proc/{p}/wchan")).unwrap_or_default();
                        format!("{p} (state {state}, waiting in {wchan:?})")
                    })
                    .collect();
                return Err(SuspendError::NotStopped {
                    what: s.what,
                    running: states.join(", "),
                    secs: spec.timeout_secs,
                });
            }
            // A process forked meanwhile into the group is stopped too.
            let _ = s.signal(Signal::STOP);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let note = format!("suspend: stopped {} with SIGSTOP", s.what);
        Ok((s, note))
    }

    fn signal(&self, sig: Signal) -> Result<(), SuspendError> {
        match &self.target {
            Target::Group(g) => rustix::process::kill_process_group(pid(*g)?, sig)
                .map_err(|source| SuspendError::SignalGroup { group: *g, source }),
            Target::Pids(pids) => {
                for p in pids {
                    // One that ended meanwhile needs nothing.
                    match rustix::process::kill_process(pid(*p)?, sig) {
                        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
                        Err(source) => return Err(SuspendError::SignalProcess { pid: *p, source }),
                    }
                }
                Ok(())
            }
        }
    }

    /// Continues the processes.
    pub fn resume(self) -> Result<String, SuspendError> {
        if let Target::Group(g) = &self.target
            && members(*g).is_empty()
        {
            return Ok(format!(
                "suspend: {} ended while stopped; nothing to continue",
                self.what
            ));
        }
        self.signal(Signal::CONT)?;
        Ok(format!("suspend: continued {} with SIGCONT", self.what))
    }
}
