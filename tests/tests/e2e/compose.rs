//! The Docker Compose stack (`docker-compose.yml`), run as the README's
//! "Docker Compose" section says, step for step: images built here without
//! a registry (`ops/build-images`), `docker-compose up`, systems loaded,
//! the sample system and the PostgreSQL system (under pgbench) backed up
//! and restored, the lower-trust containers cut off from NATS outside
//! their windows, the scheduler and media killed mid-job, and the stack
//! taken down and up again with everything kept.
//!
//! Needs a Docker engine with docker-compose; skipped with a message when
//! none answers, unless `ARCA_REQUIRE_DOCKER=1` (which `ops/test` sets
//! when it finds one). Builds release binaries and the images first: the
//! longest test of the suite.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The project name of the test's stack (volumes, networks, containers).
const PROJECT: &str = "arcae2e";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// Why Docker tests cannot run here, if they cannot.
fn docker_missing() -> Option<String> {
    let answers = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !answers("docker", &["info"]) {
        return Some("no Docker engine answers (`docker info` fails)".into());
    }
    if !answers("docker-compose", &["version"]) {
        return Some("docker-compose is not installed".into());
    }
    None
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The stack of one test: the folders it mounts, and `down -v` at the end.
struct Compose {
    sample: tempfile::TempDir,
    restored: tempfile::TempDir,
}

impl Compose {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker-compose");
        c.current_dir(root())
            .env("COMPOSE_PROJECT_NAME", PROJECT)
            .env("ARCA_SAMPLE_DIR", self.sample.path())
            .env("ARCA_RESTORE_DIR", self.restored.path())
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("docker-compose runs")
    }

    /// Runs and requires success.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "docker-compose {}: {}",
            args.join(" "),
            text(&out)
        );
        text(&out)
    }

    /// The console, in the stack: `docker-compose run --rm arca ARGS`.
    fn arca(&self, args: &[&str]) -> Output {
        let mut all = vec!["run", "--rm", "-T", "arca"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Runs `arca ARGS`, requires success, returns what it printed on stdout.
    fn arca_ok(&self, args: &[&str]) -> String {
        let out = self.arca(args);
        assert!(
            out.status.success(),
            "arca {}: {}",
            args.join(" "),
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Retries `arca ARGS` until it succeeds, for at most `within`.
    fn arca_eventually(&self, within: Duration, args: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let out = self.arca(args);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                start.elapsed() < within,
                "arca {} did not succeed within {within:?}: {}\n{}",
                args.join(" "),
                text(&out),
                self.logs()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    fn logs(&self) -> String {
        text(&self.run(&["logs", "--no-color", "--tail", "40"]))
    }

    /// True when the container `service` opens a TCP connection to NATS
    /// within 3 s.
    fn reaches_nats(&self, service: &str) -> bool {
        self.run(&[
            "exec",
            "-T",
            service,
            "timeout",
            "3",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/172.31.1.2/4222",
        ])
        .status
        .success()
    }

    /// The id of the container of `service`.
    fn container(&self, service: &str) -> String {
        self.ok(&["ps", "-q", service]).trim().to_owned()
    }

    /// The windows the firewall container's nftables table holds (asked
    /// with `docker exec`, quicker than `docker-compose exec`, so that a
    /// window of a second is seen).
    fn window_elements(&self) -> String {
        let out = Command::new("docker")
            .args(["exec", &self.container("firewall")])
            .args(["nft", "list", "set", "inet", "arca", "allow4"])
            .output()
            .expect("docker exec runs");
        assert!(out.status.success(), "nft list set: {}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("elements"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn newest_snapshot(&self, system: &str) -> String {
        let json = self.arca_ok(&["snapshots", "--system", system, "--json"]);
        let start = json.find('[').expect("a JSON list");
        let list: Vec<serde_json::Value> =
            serde_json::from_str(json[start..].trim()).expect("snapshots as JSON");
        list.iter()
            .max_by_key(|s| s["time"].as_str().unwrap_or_default().to_owned())
            .and_then(|s| s["id"].as_str())
            .expect("a snapshot")
            .to_owned()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = self.run(&["--profile", "console", "down", "-v", "--remove-orphans"]);
    }
}

#[test]
fn the_compose_stack_backs_up_and_restores_across_its_zones_and_survives_kills_and_restarts() {
    if let Some(why) = docker_missing() {
        let name = "compose::the_compose_stack_...";
        if std::env::var("ARCA_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
            panic!("{name}: ARCA_REQUIRE_DOCKER=1 but {why}");
        }
        eprintln!("SKIPPED {name}: {why}; set ARCA_REQUIRE_DOCKER=1 to make this a failure");
        return;
    }
    // The README's first step.
    // As from a shell: without the variables `cargo test` gives a test,
    // which would make the nested release build start over.
    let mut build = Command::new(root().join("ops/build-images"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME") || k == "CARGO" || k == "LD_LIBRARY_PATH"
        {
            build.env_remove(&*k);
        }
    }
    let built = build
        .current_dir(root())
        .status()
        .expect("ops/build-images runs");
    assert!(built.success(), "ops/build-images failed");

    let stack = Compose {
        sample: tempfile::tempdir().unwrap(),
        restored: tempfile::tempdir().unwrap(),
    };
    let sample = stack.sample.path();
    std::fs::create_dir_all(sample.join("etc/app")).unwrap();
    std::fs::write(sample.join("etc/app/app.conf"), "workers = 4\n").unwrap();
    std::os::unix::fs::symlink("app.conf", sample.join("etc/app/link")).unwrap();
    arca_testkit::tree::write_pseudo_random(&sample.join("big.bin"), 200_000_000, 7).unwrap();
    let _ = stack.run(&["--profile", "console", "down", "-v", "--remove-orphans"]);

    let up = Instant::now();
    stack.ok(&["up", "-d"]);
    stack.arca_eventually(
        Duration::from_secs(120),
        &["systems", "load", "/secure/config/systems.toml"],
    );
    stack.arca_eventually(Duration::from_secs(60), &["firewall", "status", "local"]);

    // The lower-trust zone reaches NATS only through a window.
    assert!(
        !stack.reaches_nats("agent-sample"),
        "the sample system reaches NATS with no job running"
    );
    let before = stack.window_elements();
    assert!(before.is_empty(), "windows open before any job: {before}");

    stack.arca_ok(&["backup", "sample"]);
    eprintln!(
        "compose: from `up` to the first successful backup: {:.1} s",
        up.elapsed().as_secs_f64()
    );
    assert!(
        !stack.reaches_nats("agent-sample"),
        "the window stayed open after the job"
    );
    assert!(stack.window_elements().is_empty());

    // Restore into the folder mounted at /restore and compare.
    let snap = stack.newest_snapshot("sample");
    stack.arca_ok(&["restore", &snap, "--target", "/restore/sample"]);
    let restored = stack.restored.path().join("sample/data/sample");
    if let Err(diffs) = arca_testkit::tree::compare(sample, &restored) {
        panic!("the restored sample differs:\n{diffs}");
    }

    // PostgreSQL under pgbench, backed up in its backup mode.
    stack.arca_eventually(Duration::from_secs(60), &["system", "show", "db"]);
    stack.ok(&[
        "exec",
        "-T",
        "db",
        "su",
        "postgres",
        "-c",
        "pgbench -i -q -s 5 postgres",
    ]);
    let mut load = stack
        .command(&[
            "exec",
            "-T",
            "db",
            "su",
            "postgres",
            "-c",
            "pgbench -c 2 -T 20 postgres",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    stack.arca_ok(&["backup", "db"]);
    let _ = load.wait();
    let snap = stack.newest_snapshot("db");
    stack.arca_ok(&["restore", &snap, "--target", "/var/tmp/restored"]);
    // The restored cluster starts and its tables are whole.
    let check = "set -e; D=/var/tmp/restored/var/lib/postgresql/15/main; chown -R postgres:postgres /var/tmp/restored; \
        chmod 700 $D; rm -f $D/postmaster.pid; \
        su postgres -c \"/usr/lib/postgresql/15/bin/pg_ctl -D $D -w -o '-p 5499 -k /tmp' -l /tmp/restored.log start\"; \
        su postgres -c \"psql -h /tmp -p 5499 -Atc 'select count(*) from pgbench_accounts' postgres\"; \
        su postgres -c \"/usr/lib/postgresql/15/bin/pg_ctl -D $D -w stop\"";
    let out = stack.ok(&["exec", "-T", "db", "bash", "-c", check]);
    assert!(out.contains("500000"), "the restored cluster: {out}");

    // The scheduler and then media killed mid-job: the window closes, the
    // post hook runs, the repository verifies.
    for (seed, victim) in [(8, "scheduler"), (9, "media")] {
        // New content, so that the job has data to move while it is killed.
        arca_testkit::tree::write_pseudo_random(&sample.join("big.bin"), 600_000_000, seed)
            .unwrap();
        let started = stack.arca_ok(&["backup", "--full", "--detach", "sample"]);
        let job = started.split_whitespace().last().unwrap().to_owned();
        let start = Instant::now();
        let firewall = stack.container("firewall");
        let open = || {
            Command::new("docker")
                .args([
                    "exec", &firewall, "nft", "list", "set", "inet", "arca", "allow4",
                ])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("elements"))
        };
        while !open() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no window opened for {job}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        stack.ok(&["kill", victim]);
        stack.ok(&["start", victim]);
        let start = Instant::now();
        loop {
            let rec = stack.arca_ok(&["job", &job]);
            let status =
                serde_json::from_str::<serde_json::Value>(&rec).expect("a job record")["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
            if status != "running" && status != "queued" {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "job {job} did not end after {victim} was killed: {rec}"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
        let start = Instant::now();
        while !stack.window_elements().is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "a window stayed open after {victim} was killed"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        // The job may fail (a reply lost to the killed service) or succeed;
        // either way `watch` shows its clean-up.
        let events = text(&stack.arca(&["watch", &job]));
        assert!(
            events.contains("released sample"),
            "no post hook after {victim} was killed: {events}"
        );
    }
    stack.arca_ok(&["verify", "--read-data"]);

    // Down and up: the repository, the JetStream state and the credentials stay.
    let snapshots = stack.arca_ok(&["snapshots", "--system", "sample"]);
    stack.ok(&["down"]);
    stack.ok(&["up", "-d"]);
    let again = stack.arca_eventually(
        Duration::from_secs(120),
        &["snapshots", "--system", "sample"],
    );
    assert_eq!(
        snapshots.lines().filter(|l| !l.trim().is_empty()).count(),
        again.lines().filter(|l| !l.trim().is_empty()).count(),
        "before: {snapshots}\nafter: {again}"
    );
    stack.arca_eventually(Duration::from_secs(60), &["backup", "sample"]);
}
