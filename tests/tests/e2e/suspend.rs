//! The `suspend` kind: a writer process group is stopped (SIGSTOP) for
//! the transfer and continued (SIGCONT) afterwards; with the scheduler
//! killed mid-transfer, the agent continues it at its own deadline.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use arca_e2e::{AgentUser, Stack, kinds, system};
use arca_schemas::event::EventDetail;
use arca_schemas::{Application, JobStatus, SuspendSpec};
use arca_testkit::tree::write_pseudo_random;

/// A writer appending a line to `file` every 10 ms, in a process group
/// of its own (its id is the writer's pid).
struct Writer(Child);

impl Writer {
    fn start(file: &Path) -> Writer {
        let script = format!(
            "i=0; while :; do i=$((i+1)); echo $i >> {}; sleep 0.01; done",
            file.display()
        );
        let child = Command::new("/bin/sh")
            .args(["-c", &script])
            .process_group(0)
            .spawn()
            .unwrap();
        Writer(child)
    }

    fn group(&self) -> i32 {
        self.0.id() as i32
    }

    /// Its state letter in /proc (`T` when stopped).
    fn state(&self) -> char {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap();
        s[s.rfind(')').unwrap() + 2..].chars().next().unwrap()
    }

    /// Stopped, or (the shell) waiting uninterruptibly for a vfork child
    /// that was stopped before it exec'd: it runs nothing until continued.
    fn stopped(&self) -> bool {
        let wchan =
            std::fs::read_to_string(format!("/proc/{}/wchan", self.0.id())).unwrap_or_default();
        match self.state() {
            'T' => true,
            'D' => matches!(wchan.trim(), "kernel_clone" | "wait_for_vfork_done"),
            _ => false,
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.group())])
            .status();
        let _ = self.0.wait();
    }
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Waits until `file` grows (the writer runs), up to `within`.
async fn grows(file: &Path, within: Duration) -> bool {
    let start = size(file);
    let until = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if size(file) > start {
            return true;
        }
    }
    false
}

/// A folder for the writer's file in memory when the machine has one:
/// on a disk busy with other tests, an append can wait in the kernel
/// (uninterruptibly, so not yet stopped) for a long time.
fn log_dir() -> tempfile::TempDir {
    match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().unwrap(),
    }
}

fn suspend_system(name: &str, paths: &[&Path], group: i32) -> arca_schemas::SystemConfig {
    let mut sys = system(name, paths);
    sys.applications = vec![Application::Suspend(SuspendSpec {
        process_group: Some(group),
        pid_file: None,
        unit: None,
        timeout_secs: 120,
    })];
    sys
}

/// Checks, while the transfer runs, that the writer stays stopped.
async fn assert_stopped(w: &Writer, file: &Path) {
    assert!(w.stopped(), "the writer runs during the transfer");
    let before = size(file);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(size(file), before, "the file changed during the transfer");
    assert!(w.stopped());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_is_stopped_for_the_transfer_and_continues_after_it() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    write_pseudo_random(&data.path().join("big"), 400_000_000, 11).unwrap();
    let logs = log_dir();
    let log = logs.path().join("app.log");
    let w = Writer::start(&log);
    assert!(
        grows(&log, Duration::from_secs(30)).await,
        "writer never wrote"
    );
    stack
        .load_systems(vec![suspend_system(
            "sp",
            &[data.path(), logs.path()],
            w.group(),
        )])
        .await
        .unwrap();
    stack.start_agent("sp", AgentUser::Same).await.unwrap();

    let job = stack.backup(&["sp"]).await.unwrap()[0];
    stack.wait_first_chunk().await;
    assert_stopped(&w, &log).await;
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    assert!(
        grows(&log, Duration::from_secs(60)).await,
        "the writer did not continue"
    );
    let outputs: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.detail {
            EventDetail::Prepared { output, .. } | EventDetail::Finished { output, .. } => {
                Some(output.clone())
            }
            _ => None,
        })
        .collect();
    assert!(outputs[0].contains("SIGSTOP"), "{outputs:?}");
    assert!(outputs[1].contains("SIGCONT"), "{outputs:?}");

    // The snapshot's copy of the log ends with a whole line: it was not
    // written while read.
    let target = tempfile::tempdir().unwrap();
    let job = stack
        .restore(rec.snapshot.as_ref().unwrap(), Some(target.path()))
        .await
        .unwrap();
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    let copy = std::fs::read_to_string(target.path().join(log.strip_prefix("/").unwrap())).unwrap();
    assert!(copy.ends_with('\n'));
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_scheduler_killed_mid_transfer_the_agent_continues_the_writer_at_its_deadline() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    write_pseudo_random(&data.path().join("big"), 400_000_000, 12).unwrap();
    let logs = log_dir();
    let log = logs.path().join("app.log");
    let w = Writer::start(&log);
    assert!(
        grows(&log, Duration::from_secs(30)).await,
        "writer never wrote"
    );
    stack
        .load_systems(vec![suspend_system(
            "sd",
            &[data.path(), logs.path()],
            w.group(),
        )])
        .await
        .unwrap();
    stack.start_agent("sd", AgentUser::Same).await.unwrap();
    // Long enough for the checks below to see the writer stopped, short
    // enough for the test.
    let deadline = "hook-deadline-secs = 20";
    stack.restart_scheduler(deadline, &[]).await.unwrap();

    let job = stack.backup(&["sd"]).await.unwrap()[0];
    stack.wait_first_chunk().await;
    stack.kill("scheduler");
    assert_stopped(&w, &log).await;
    // Nobody asks the agent to finish: its deadline continues the writer.
    assert!(
        grows(&log, Duration::from_secs(120)).await,
        "the writer was never continued\n{}",
        stack.log("agent-sd")
    );

    stack.restart_scheduler(deadline, &[]).await.unwrap();
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Failed, "{rec:#?}");
    let k = kinds(&events);
    assert!(k.contains(&"post-hook-by-agent"), "{k:?}");
    let by_agent = events
        .iter()
        .find_map(|e| match &e.detail {
            EventDetail::PostHookByAgent { output, .. } => Some(output.clone()),
            _ => None,
        })
        .unwrap();
    assert!(by_agent.contains("SIGCONT"), "{by_agent}");
}
