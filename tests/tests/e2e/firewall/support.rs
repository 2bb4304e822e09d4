//! What the firewall tests share: the lease, a held job's system, waiting
//! for a step and for the window to close.

use arca_e2e::{HI_FOR_OPS, Stack, sh_hook, system};
use arca_schemas::{JobId, JobStep, SystemConfig};
use std::path::Path;
use std::time::{Duration, Instant};

/// Lease of the namespace stacks: short, so that "closes by itself within
/// one lease" is quick to see; renewed every second.
pub(super) const LEASE: u64 = 5;

/// What polling the set may add to a measured closing time (a renewal can
/// come up to a second before the kill, and `nft` is a process to start).
pub(super) const KERNEL_SLACK: u64 = 2;

/// A system in `ops` (or `ops2`) whose pre-backup hook waits until the
/// file `release` exists, so that the test holds the window open.
pub(super) fn held_system(name: &str, address: &str, data: &Path, release: &Path) -> SystemConfig {
    let mut s = system(name, &[data]);
    s.address = address.to_owned();
    s.hooks.pre_backup = Some(sh_hook(&format!(
        "while [ ! -e '{}' ]; do sleep 0.1; done",
        release.display()
    )));
    s
}

/// Polls `f` every 200 ms until it is true or `within` has passed.
pub(super) async fn eventually(within: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(super) async fn wait_step(stack: &Stack, job: JobId, step: JobStep) {
    let ok = eventually(Duration::from_secs(90), async || {
        stack.job(job).await.is_ok_and(|r| r.step == step)
    })
    .await;
    let rec = stack.job(job).await.unwrap();
    assert!(ok, "job never reached {step:?}: {rec:#?}");
}

/// Waits until the port is closed to `ops`, returning how long it took:
/// first until the kernel dropped the pair from the set (polled every
/// 100 ms), then until a TCP probe from `ops` fails too.
pub(super) async fn closes_within(stack: &Stack, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let port = stack.nats.port();
    let hi = &stack.net().hi;
    while started.elapsed() < within {
        let out = hi
            .run("nft", &["-j", "list", "set", "inet", "arca", "allow4"])
            .unwrap();
        if !String::from_utf8_lossy(&out.stdout).contains("\"elem\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = started.elapsed();
    let closed = eventually(within.saturating_sub(gone), async || {
        !stack.net().ops.tcp_connects(HI_FOR_OPS, port, 1)
    })
    .await;
    closed.then_some(gone)
}
