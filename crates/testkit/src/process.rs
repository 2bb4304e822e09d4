//! Service binaries of this workspace run as child processes.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The build folder of the running test (`target/<profile>`).
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary has a path");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("test binary lives in target/")
        .to_path_buf()
}

/// Path of a binary built from this workspace (`target/<profile>/<name>`).
///
/// Panics with what to run when it has not been built: `cargo test` builds
/// only the binaries of the package under test.
pub fn bin_path(name: &str) -> PathBuf {
    let path = build_dir().join(name);
    assert!(
        path.is_file(),
        "{} is not built; run `cargo build --workspace --bins` first (ops/test does)",
        path.display()
    );
    path
}

/// A child process whose output goes to a log file; killed on drop.
pub struct ServiceProcess {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ServiceProcess {
    /// Starts `bin_path(binary)` with `args` and extra environment.
    pub fn spawn<I, S>(
        binary: &str,
        args: I,
        env: &[(&str, String)],
        log_dir: &std::path::Path,
    ) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(bin_path(binary));
        cmd.args(args);
        Self::spawn_command(binary, cmd, env, log_dir)
    }

    /// Starts a prepared command (for tests that change its user or capabilities).
    pub fn spawn_command(
        name: &str,
        mut cmd: Command,
        env: &[(&str, String)],
        log_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let n = std::sync::atomic::AtomicU32::new(0);
        let mut log = log_dir.join(format!("{name}.log"));
        while log.exists() {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log = log_dir.join(format!("{name}.{i}.log"));
        }
        let out = std::fs::File::create(&log)?;
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(ServiceProcess {
            name: name.to_owned(),
            child: Some(child),
            log,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Kills it with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// True while it runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log());
        }
    }
}
