//! Running hooks: a command with arguments (no shell), its own process
//! group, a timeout after which the whole group is killed, and the tail of
//! its output kept for the job's events.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arca_schemas::HookSpec;
use arca_schemas::msg::HookReply;
use tokio::io::AsyncReadExt;

/// Most output kept from a hook (its tail).
pub const OUTPUT_TAIL: usize = 8 * 1024;

/// Runs `hook` with `env` added; never fails, the reply says what happened.
pub async fn run(hook: &HookSpec, env: &[(String, String)]) -> HookReply {
    let mut all = env.to_vec();
    all.extend(hook.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    run_command(&hook.command, &all, hook.timeout_secs, None).await
}

/// Runs `command` (program and arguments, no shell) with `env` added, as
/// `user` (uid, gid) when given, in its own process group that is killed
/// after `timeout_secs`.
pub async fn run_command(
    command: &[String],
    env: &[(String, String)],
    timeout_secs: u64,
    user: Option<(u32, u32)>,
) -> HookReply {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return HookReply {
                ran: true,
                success: false,
                exit_code: None,
                output: format!("cannot start {:?}: {e}", command[0]),
                seconds: started.elapsed().as_secs_f64(),
                by_agent_deadline: false,
            };
        }
    };
    let pgid = child.id();
    // Output is gathered as it comes, so that a hook killed at its timeout
    // still shows what it wrote.
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        drain(child.stdout.take().expect("piped"), out.clone()),
        drain(child.stderr.take().expect("piped"), err.clone()),
    ];
    let timeout = Duration::from_secs(timeout_secs);
    let (exit_code, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => (status.ok().and_then(|s| s.code()), false),
        Err(_) => {
            if let Some(pid) = pgid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            (None, true)
        }
    };
    // The pipes close when the last process holding them ends; one that
    // left the group (a daemon) may hold them longer, so this is bounded.
    let _ = tokio::time::timeout(
        Duration::from_secs(if timed_out { 2 } else { 10 }),
        futures::future::join_all(readers),
    )
    .await;
    let mut output = std::mem::take(&mut *out.lock().expect("output lock"));
    output.extend_from_slice(&err.lock().expect("output lock"));
    let mut text = tail(&output);
    if timed_out {
        text.push_str(&format!(
            "\nhook killed with its process group after its timeout of {timeout_secs}s"
        ));
    }
    HookReply {
        ran: true,
        success: !timed_out && exit_code == Some(0),
        exit_code,
        output: text,
        seconds: started.elapsed().as_secs_f64(),
        by_agent_deadline: false,
    }
}

/// The reply when no hook is configured.
pub fn none() -> HookReply {
    HookReply {
        ran: false,
        success: true,
        exit_code: None,
        output: String::new(),
        seconds: 0.0,
        by_agent_deadline: false,
    }
}

/// Reads a pipe to its end into `into`, keeping at most twice the tail.
fn drain(
    mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let mut v = into.lock().expect("output lock");
            v.extend_from_slice(&buf[..n]);
            if v.len() > 2 * OUTPUT_TAIL {
                let cut = v.len() - OUTPUT_TAIL;
                v.drain(..cut);
            }
        }
    })
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(OUTPUT_TAIL);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cmd: &[&str], timeout_secs: u64) -> HookSpec {
        HookSpec {
            command: cmd.iter().map(|s| s.to_string()).collect(),
            timeout_secs,
            env: Default::default(),
        }
    }

    #[tokio::test]
    async fn output_and_environment_are_captured() {
        let env = vec![("ARCA_JOB_ID".to_owned(), "j1".to_owned())];
        let r = run(
            &spec(
                &[
                    "/bin/sh",
                    "-c",
                    "echo job=$ARCA_JOB_ID; echo err >&2; exit 3",
                ],
                10,
            ),
            &env,
        )
        .await;
        assert!(!r.success);
        assert_eq!(r.exit_code, Some(3));
        assert!(r.output.contains("job=j1"), "{}", r.output);
        assert!(r.output.contains("err"), "{}", r.output);
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("grandchild-survived");
        let script = format!(
            "echo before the hang; (sleep 3; touch {}) & sleep 30",
            marker.display()
        );
        let r = run(&spec(&["/bin/sh", "-c", &script], 1), &[]).await;
        assert!(!r.success);
        assert!(r.output.contains("timeout"), "{}", r.output);
        assert!(r.output.contains("before the hang"), "{}", r.output);
        assert!(r.seconds < 10.0);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(
            !marker.exists(),
            "a process of the hook's group outlived the kill"
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_a_failed_hook() {
        let r = run(&spec(&["/nonexistent/hook"], 5), &[]).await;
        assert!(!r.success);
        assert!(r.output.contains("cannot start"));
    }
}
