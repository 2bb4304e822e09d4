//! Running hooks: a command with arguments (no shell), its own process
//! group, a timeout after which the whole group is killed, and the tail of
//! its output kept for the job's events.

use std::process::Stdio;
use std::time::{Duration, Instant};

use arca_schemas::HookSpec;
use arca_schemas::msg::HookReply;
use tokio::io::AsyncReadExt;

/// Most output kept from a hook (its tail).
pub const OUTPUT_TAIL: usize = 8 * 1024;

/// Runs `hook` with `env` added; never fails, the reply says what happened.
pub async fn run(hook: &HookSpec, env: &[(String, String)]) -> HookReply {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(&hook.command[0]);
    cmd.args(&hook.command[1..])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(&hook.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return HookReply {
                ran: true,
                success: false,
                exit_code: None,
                output: format!("cannot start {:?}: {e}", hook.command[0]),
                seconds: started.elapsed().as_secs_f64(),
                by_agent_deadline: false,
            };
        }
    };
    let pgid = child.id();
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let collect = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        out.extend_from_slice(&err);
        out
    };
    let timeout = Duration::from_secs(hook.timeout_secs);
    let waited = tokio::time::timeout(timeout, async {
        let (output, status) = tokio::join!(collect, child.wait());
        (output, status)
    })
    .await;
    let (output, exit_code, timed_out) = match waited {
        Ok((output, status)) => (output, status.ok().and_then(|s| s.code()), false),
        Err(_) => {
            if let Some(pid) = pgid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            (Vec::new(), None, true)
        }
    };
    let mut text = tail(&output);
    if timed_out {
        text.push_str(&format!(
            "\nhook killed with its process group after its timeout of {}s",
            hook.timeout_secs
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
        let script = format!("(sleep 3; touch {}) & sleep 30", marker.display());
        let r = run(&spec(&["/bin/sh", "-c", &script], 1), &[]).await;
        assert!(!r.success);
        assert!(r.output.contains("timeout"), "{}", r.output);
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
