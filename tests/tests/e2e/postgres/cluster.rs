//! The PostgreSQL the tests start: its programs, a cluster in a temporary
//! folder run as the user `postgres`, checkpoints in a loop.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Settings of every test cluster: small WAL, so that checkpoints happen
/// during the transfers; no TCP.
pub(super) const BASE_SETTINGS: &str =
    "max_wal_size = 32MB\nmin_wal_size = 32MB\nfsync = off\nlisten_addresses = ''\n";

/// PostgreSQL's programs and the user that runs them.
pub(super) struct Pg {
    pub(super) bin: PathBuf,
    pub(super) uid: u32,
    pub(super) gid: u32,
}

pub(super) fn required() -> bool {
    std::env::var("ARCA_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

pub(super) fn find() -> Result<Pg, String> {
    let id = |args: &[&str]| -> Option<u32> {
        let o = Command::new("id").args(args).output().ok()?;
        if !o.status.success() {
            return None;
        }
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    };
    if id(&["-u"]) != Some(0) {
        return Err("not running as root (the test runs PostgreSQL as the user postgres)".into());
    }
    let bin = match std::env::var_os("ARCA_PG_BIN") {
        Some(b) => PathBuf::from(b),
        None => {
            let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
                .map_err(|_| "no /usr/lib/postgresql (apt-get install postgresql)".to_owned())?
                .flatten()
                .filter_map(|e| {
                    let v = e.file_name().to_str()?.parse().ok()?;
                    Some((v, e.path().join("bin")))
                })
                .filter(|(_, b)| b.join("initdb").exists())
                .collect();
            found.sort();
            found
                .pop()
                .ok_or("no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)")?
                .1
        }
    };
    for tool in [
        "initdb",
        "pg_ctl",
        "postgres",
        "psql",
        "pgbench",
        "pg_amcheck",
        "pg_config",
    ] {
        if !bin.join(tool).exists() {
            return Err(format!("{} is missing", bin.join(tool).display()));
        }
    }
    let share = Command::new(bin.join("pg_config"))
        .arg("--sharedir")
        .output()
        .map_err(|e| format!("pg_config: {e}"))?;
    let share = PathBuf::from(String::from_utf8_lossy(&share.stdout).trim());
    if !share.join("extension/amcheck.control").exists() {
        return Err("the amcheck extension is missing (apt-get install postgresql-contrib)".into());
    }
    let uid = id(&["-u", "postgres"]).ok_or("there is no user postgres")?;
    let gid = id(&["-g", "postgres"]).ok_or("there is no user postgres")?;
    Ok(Pg { bin, uid, gid })
}

/// For the first line of a test: `None` (after saying why) when PostgreSQL
/// cannot run here and is not required; panics when it is required.
pub(super) fn postgres(test: &str) -> Option<Pg> {
    match find() {
        Ok(pg) => Some(pg),
        Err(why) if required() => {
            panic!("{test}: ARCA_REQUIRE_POSTGRES=1 but PostgreSQL cannot run: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}; set ARCA_REQUIRE_POSTGRES=1 to make this a failure");
            None
        }
    }
}

impl Pg {
    /// A command run as the user postgres.
    pub(super) fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bin.join(tool));
        c.uid(self.uid).gid(self.gid).current_dir("/");
        c
    }

    /// A folder the user postgres owns.
    pub(super) fn folder(&self, path: &Path) -> PathBuf {
        std::fs::create_dir_all(path).unwrap();
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).unwrap();
        path.to_path_buf()
    }
}

/// A PostgreSQL server on a data directory.
pub(super) struct Cluster<'a> {
    pub(super) pg: &'a Pg,
    pub(super) data: PathBuf,
    pub(super) sock: PathBuf,
    pub(super) port: u16,
    pub(super) log: PathBuf,
    /// Port and socket folder given on the server's command line
    /// (`pg_ctl start -o '-p PORT -k DIR'`), not in its configuration.
    pub(super) on_command_line: bool,
}

impl<'a> Cluster<'a> {
    /// A new cluster under `root` (initdb), not started.
    pub(super) fn init(pg: &'a Pg, root: &Path) -> Cluster<'a> {
        let root = pg.folder(root);
        let data = Cluster::initdb(pg, &root);
        let c = Cluster::on(pg, data, &root);
        c.configure(BASE_SETTINGS);
        c
    }

    /// A new cluster under `root` (initdb), not started, whose port and
    /// socket folder are given only on the server's command line: its
    /// configuration files name neither.
    pub(super) fn init_on_command_line(pg: &'a Pg, root: &Path) -> Cluster<'a> {
        let root = pg.folder(root);
        let data = Cluster::initdb(pg, &root);
        let mut c = Cluster::at(pg, data, &root);
        c.on_command_line = true;
        c.configure(BASE_SETTINGS);
        c
    }

    /// `initdb` of `root/data`.
    pub(super) fn initdb(pg: &Pg, root: &Path) -> PathBuf {
        let data = root.join("data");
        let o = pg
            .command("initdb")
            .args(["-D", data.to_str().unwrap()])
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .output()
            .unwrap();
        assert!(o.status.success(), "initdb: {o:?}");
        data
    }

    /// A server to run on an existing data directory, with its socket and
    /// log under `root`.
    pub(super) fn on(pg: &'a Pg, data: PathBuf, root: &Path) -> Cluster<'a> {
        let c = Cluster::at(pg, data, root);
        c.configure(&format!(
            "port = {}\nunix_socket_directories = '{}'\n",
            c.port,
            c.sock.display()
        ));
        c
    }

    /// A socket folder and log under `root`, a free port; nothing
    /// configured.
    pub(super) fn at(pg: &'a Pg, data: PathBuf, root: &Path) -> Cluster<'a> {
        let sock = pg.folder(&root.join("sock"));
        let port = arca_testkit::free_port();
        let c = Cluster {
            pg,
            log: root.join("server.log"),
            data,
            sock,
            port,
            on_command_line: false,
        };
        let _ = std::fs::File::create(&c.log);
        std::os::unix::fs::chown(&c.log, Some(pg.uid), Some(pg.gid)).unwrap();
        c
    }

    pub(super) fn configure(&self, lines: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .unwrap();
        f.write_all(lines.as_bytes()).unwrap();
    }

    /// `pg_ctl start`: Ok when the server accepts connections.
    pub(super) fn start(&self) -> Result<(), String> {
        let mut c = self.pg.command("pg_ctl");
        c.args(["start", "-w", "-t", "300", "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log);
        if self.on_command_line {
            c.arg("-o")
                .arg(format!("-p {} -k {}", self.port, self.sock.display()));
        }
        let o = c.stdin(Stdio::null()).output().unwrap();
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start failed: {}{}\nserver log:\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                self.server_log()
            ))
        }
    }

    pub(super) fn stop(&self) {
        let _ = self
            .pg
            .command("pg_ctl")
            .args(["stop", "-m", "fast", "-w", "-D"])
            .arg(&self.data)
            .output();
    }

    pub(super) fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(super) fn client(&self, tool: &str) -> Command {
        let mut c = Command::new(self.pg.bin.join(tool));
        c.args(["-h", self.sock.to_str().unwrap()]).args([
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ]);
        c
    }

    /// One query's result, unaligned, tuples only.
    pub(super) fn sql(&self, sql: &str) -> String {
        let o = self
            .client("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "psql {sql:?}: {}\nserver log:\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.server_log()
        );
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    /// Starts pgbench writing (two clients) until killed.
    pub(super) fn pgbench(&self) -> Child {
        self.client("pgbench")
            .args([
                "-n", "-c", "2", "-j", "2", "-T", "3600", "-R", "300", "postgres",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Runs `CHECKPOINT` every 200 ms until the returned guard is
    /// dropped: checkpoints then happen while the data directory is read,
    /// moving `global/pg_control` on and recycling WAL segments.
    pub(super) fn checkpoints(&self) -> Checkpoints {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut cmd = self.client("psql");
        cmd.args(["-X", "-q", "-d", "postgres", "-c", "CHECKPOINT"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if cmd.status().is_ok_and(|s| s.success()) {
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            n
        });
        Checkpoints {
            stop,
            thread: Some(thread),
        }
    }

    /// The pgbench invariant: every transaction adds the same delta to one
    /// account, teller and branch and logs it in the history, so the sums
    /// agree in any consistent state. Returns the sums, in that order.
    pub(super) fn balances(&self) -> Vec<i64> {
        self.sql(
            "SELECT (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches) || ',' || \
                    (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers) || ',' || \
                    (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts) || ',' || \
                    (SELECT coalesce(sum(delta), 0) FROM pgbench_history) || ',' || \
                    (SELECT count(*) FROM pgbench_history)",
        )
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect()
    }

    /// Every table and btree index checked by amcheck (`pg_amcheck`,
    /// installing the extension): Err with its report when it finds
    /// corruption.
    pub(super) fn amcheck(&self) -> Result<String, String> {
        let o = self
            .client("pg_amcheck")
            .args(["--install-missing", "--heapallindexed", "--parent-check"])
            .args(["--rootdescend", "--progress", "-d", "postgres"])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        if o.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        let _ = self
            .pg
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-D"])
            .arg(&self.data)
            .output();
    }
}

/// Checkpoints running in a loop; dropping stops them.
pub(super) struct Checkpoints {
    pub(super) stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub(super) thread: Option<std::thread::JoinHandle<u32>>,
}

impl Checkpoints {
    /// Stops the loop; how many checkpoints were made.
    pub(super) fn done(mut self) -> u32 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
