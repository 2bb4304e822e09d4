//! Firewall windows with real nftables between network namespaces
//! (`Stack::start_net`), and the scheduler's handling of several firewalls
//! on a path. Namespace tests print `SKIPPED ...` and return when they
//! cannot run here (not root, no `nft`), and fail instead when
//! `ARCA_REQUIRE_NETNS=1` (as `ops/test` sets when run as root).

use std::path::Path;
use std::time::{Duration, Instant};

use arca_e2e::{
    FIREWALL, HI_FOR_OPS, HI_FOR_OPS2, HI_FOR_OPS6, OPS, OPS2, OPS6, Stack, Zone, kinds, sh_hook,
    system,
};
use arca_runtime::rpc;
use arca_schemas::event::EventDetail;
use arca_schemas::msg::*;
use arca_schemas::subject::{self, FirewallVerb};
use arca_schemas::{JobId, JobStatus, JobStep};
use arca_testkit::netns::can_run;

mod support;

use support::{KERNEL_SLACK, LEASE, closes_within, eventually, held_system, wait_step};

#[tokio::test(flavor = "multi_thread")]
async fn a_window_lets_one_agent_in_for_one_job_and_cuts_it_after() {
    if !can_run("a_window_lets_one_agent_in_for_one_job_and_cuts_it_after") {
        return;
    }
    let mut stack = Stack::start_net(LEASE).await.unwrap();
    let port = stack.nats.port();
    let before = stack.net().hi.ruleset().unwrap();
    assert!(before.contains("\"table\": {\"family\": \"inet\", \"name\": \"arca\""));

    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), b"across the firewall").unwrap();
    let release = data.path().join("release");
    let hold = tempfile::tempdir().unwrap();
    stack
        .load_systems(vec![
            held_system("ops", OPS, data.path(), &hold.path().join("go")),
            held_system("ops2", OPS2, data.path(), &release),
        ])
        .await
        .unwrap();
    stack.start_agent_in("ops", Zone::Ops, HI_FOR_OPS).unwrap();
    stack
        .start_agent_in("ops2", Zone::Ops2, HI_FOR_OPS2)
        .unwrap();

    // Before the window: neither agent reaches NATS.
    let net = stack.net();
    assert!(
        !net.ops.tcp_connects(HI_FOR_OPS, port, 2),
        "port open before the window"
    );
    assert!(!net.ops2.tcp_connects(HI_FOR_OPS2, port, 2));
    assert!(!stack.agent_answers("ops", Duration::from_secs(2)).await);

    // During the window: the agent of `ops` connects, the other does not.
    let job = stack.backup(&["ops"]).await.unwrap()[0];
    wait_step(&stack, job, JobStep::Preparing).await;
    let net = stack.net();
    assert!(
        net.ops.tcp_connects(HI_FOR_OPS, port, 2),
        "port closed during the window"
    );
    assert!(
        !net.ops2.tcp_connects(HI_FOR_OPS2, port, 2),
        "window open to the wrong system"
    );
    assert!(!stack.agent_answers("ops2", Duration::from_secs(2)).await);
    assert!(stack.agent_answers("ops", Duration::from_secs(5)).await);
    let during = stack.net().hi.ruleset().unwrap();
    assert!(
        during.contains(&format!("\"concat\": [\"{OPS}\", {port}]")),
        "{during}"
    );
    let status = stack.arca(&["firewall", "status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success()
            && text.contains("backend nftables")
            && text.contains(&job.to_string())
            && text.contains("left"),
        "{text}"
    );
    std::fs::write(hold.path().join("go"), b"").unwrap();
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    let k = kinds(&events);
    assert!(k.contains(&"window-renewed"), "{k:?}");
    let opened = k.iter().position(|k| *k == "window-opened").unwrap();
    let closed = k.iter().position(|k| *k == "window-closed").unwrap();
    let transferred = k.iter().position(|k| *k == "transferred").unwrap();
    assert!(opened < transferred && transferred < closed, "{k:?}");
    assert!(events.iter().any(|e| matches!(&e.detail,
        EventDetail::WindowOpened { backend, address, .. } if backend == "nftables" && address == OPS)));

    // After: the ruleset is as before, the connection is cut and stays cut.
    assert_eq!(stack.net().hi.ruleset().unwrap(), before);
    assert!(!stack.net().ops.tcp_connects(HI_FOR_OPS, port, 2));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        assert!(
            !stack.agent_answers("ops", Duration::from_secs(1)).await,
            "the agent still reaches NATS after the window closed"
        );
    }
    assert!(stack.open_windows().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn windows_work_for_ipv6_and_a_lease_runs_out_by_itself() {
    if !can_run("windows_work_for_ipv6_and_a_lease_runs_out_by_itself") {
        return;
    }
    let stack = Stack::start_net(LEASE).await.unwrap();
    let port = stack.nats.port();
    let before = stack.net().hi.ruleset().unwrap();
    let open = |address: &str, lease_secs: u64| OpenWindow {
        job: JobId::new(),
        system: "ops".into(),
        address: address.to_owned(),
        lease_secs,
    };
    let fw = |verb| subject::firewall(FIREWALL, verb);

    // IPv6: open, connect, close, refused.
    assert!(!stack.net().ops.tcp_connects(HI_FOR_OPS6, port, 2));
    let req = open(OPS6, 60);
    let _: WindowReply = rpc::request(&stack.client, fw(FirewallVerb::Open), &req)
        .await
        .unwrap();
    assert!(stack.net().ops.tcp_connects(HI_FOR_OPS6, port, 2));
    assert!(
        !stack.net().ops.tcp_connects(HI_FOR_OPS, port, 2),
        "IPv4 is another pair"
    );
    let r: CloseWindowReply = rpc::request(
        &stack.client,
        fw(FirewallVerb::Close),
        &CloseWindow { job: req.job },
    )
    .await
    .unwrap();
    assert!(r.was_open);
    assert!(!stack.net().ops.tcp_connects(HI_FOR_OPS6, port, 2));
    assert_eq!(stack.net().hi.ruleset().unwrap(), before);

    // A lease nobody renews ends the window by itself, in the kernel.
    let req = open(OPS, 3);
    let _: WindowReply = rpc::request(&stack.client, fw(FirewallVerb::Open), &req)
        .await
        .unwrap();
    assert!(stack.net().ops.tcp_connects(HI_FOR_OPS, port, 2));
    let took = closes_within(&stack, Duration::from_secs(20)).await;
    assert!(
        took.is_some_and(|t| t <= Duration::from_secs(3 + KERNEL_SLACK)),
        "{took:?}"
    );
    assert_eq!(stack.net().hi.ruleset().unwrap(), before);
    // A renewal after the lease ran out does not reopen it.
    let r: Result<WindowReply, _> = rpc::request(
        &stack.client,
        fw(FirewallVerb::Renew),
        &RenewWindow {
            job: req.job,
            lease_secs: 60,
        },
    )
    .await;
    assert!(r.is_err());
    assert!(!stack.net().ops.tcp_connects(HI_FOR_OPS, port, 2));
}

/// Starts a held backup of `ops` and waits until its agent is in.
async fn held_backup(stack: &mut Stack, hold: &Path) -> (JobId, tempfile::TempDir) {
    held_backup_at(stack, hold, OPS, HI_FOR_OPS).await
}

/// Like [`held_backup`], with the system at `address` and its agent
/// reaching NATS at `nats_host` (IPv4 or IPv6).
async fn held_backup_at(
    stack: &mut Stack,
    hold: &Path,
    address: &str,
    nats_host: &str,
) -> (JobId, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), b"x").unwrap();
    stack
        .load_systems(vec![held_system("ops", address, data.path(), hold)])
        .await
        .unwrap();
    stack.start_agent_in("ops", Zone::Ops, nats_host).unwrap();
    let job = stack.backup(&["ops"]).await.unwrap()[0];
    wait_step(stack, job, JobStep::Preparing).await;
    assert!(
        stack
            .net()
            .ops
            .tcp_connects(nats_host, stack.nats.port(), 2)
    );
    (job, data)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_controller_leaves_no_window_and_restarts_to_the_same_ruleset() {
    if !can_run("a_killed_controller_leaves_no_window_and_restarts_to_the_same_ruleset") {
        return;
    }
    let mut stack = Stack::start_net(LEASE).await.unwrap();
    let before = stack.net().hi.ruleset().unwrap();
    let hold = tempfile::tempdir().unwrap();
    let (job, _data) = held_backup(&mut stack, &hold.path().join("go")).await;

    stack.kill("firewall");
    let took = closes_within(&stack, Duration::from_secs(LEASE + 10)).await;
    eprintln!(
        "the kernel dropped the pair {took:?} after the controller was killed (lease {LEASE}s)"
    );
    assert!(
        took.is_some_and(|t| t <= Duration::from_secs(LEASE + KERNEL_SLACK)),
        "window still open {took:?} after the controller died"
    );
    // Fail closed: the table stays while the controller is down.
    assert_eq!(stack.net().hi.ruleset().unwrap(), before);

    // Restarted, it keeps its table as it was.
    restart_firewall(&mut stack).await;
    assert_eq!(stack.net().hi.ruleset().unwrap(), before);
    assert!(
        stack
            .log("firewall")
            .contains("nftables table in place; keeping it")
    );

    // The restarted controller does not hold the job's window any more:
    // the scheduler's next renewal is refused, and the job stops rather
    // than run unguarded.
    std::fs::write(hold.path().join("go"), b"").unwrap();
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Failed, "{rec:#?}");
    let error = rec.error.clone().unwrap_or_default();
    assert!(
        error.contains(&format!("firewall {FIREWALL} no longer holds")),
        "{error}"
    );
    assert!(kinds(&events).contains(&"window-closed"));
    assert_eq!(stack.net().hi.ruleset().unwrap(), before);

    // A pair of no running job, left by a controller that died, is removed
    // at start, long before its lease would end.
    let stray = OpenWindow {
        job: JobId::new(),
        system: "ops".into(),
        address: OPS.into(),
        lease_secs: 300,
    };
    let _: WindowReply = rpc::request(
        &stack.client,
        subject::firewall(FIREWALL, FirewallVerb::Open),
        &stray,
    )
    .await
    .unwrap();
    assert_ne!(stack.net().hi.ruleset().unwrap(), before);
    stack.kill("firewall");
    restart_firewall(&mut stack).await;
    assert_eq!(stack.net().hi.ruleset().unwrap(), before);
    assert!(
        !stack
            .net()
            .ops
            .tcp_connects(HI_FOR_OPS, stack.nats.port(), 2)
    );
    assert!(
        stack
            .log("firewall")
            .contains("window of no running job found; closing it")
    );
}

/// Starts the firewall controller again and waits until it answers.
async fn restart_firewall(stack: &mut Stack) {
    stack
        .spawn("firewall", "arca-firewall", "firewall.toml")
        .unwrap();
    let _: FirewallStatusReply = rpc::retry(Duration::from_secs(20), || {
        rpc::request(
            &stack.client,
            subject::firewall(FIREWALL, FirewallVerb::Status),
            &FirewallStatus {},
        )
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_controller_restarted_within_the_lease_keeps_the_window_of_a_running_job() {
    if !can_run("a_controller_restarted_within_the_lease_keeps_the_window_of_a_running_job") {
        return;
    }
    // A longer lease, so that the restart surely fits in it. The whole job
    // runs over IPv6.
    let mut stack = Stack::start_net(20).await.unwrap();
    let before = stack.net().hi.ruleset().unwrap();
    let hold = tempfile::tempdir().unwrap();
    let (job, _data) = held_backup_at(&mut stack, &hold.path().join("go"), OPS6, HI_FOR_OPS6).await;

    stack.kill("firewall");
    restart_firewall(&mut stack).await;
    assert!(
        stack
            .log("firewall")
            .contains("window of a running job kept"),
        "{}",
        stack.log("firewall")
    );
    let windows = stack.open_windows().await.unwrap();
    assert_eq!(windows.len(), 1, "{windows:?}");
    assert_eq!((windows[0].job, windows[0].address.as_str()), (job, OPS6));
    assert!(
        stack
            .net()
            .ops
            .tcp_connects(HI_FOR_OPS6, stack.nats.port(), 2)
    );

    std::fs::write(hold.path().join("go"), b"").unwrap();
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    assert!(kinds(&events).contains(&"window-closed"));
    assert_eq!(stack.net().hi.ruleset().unwrap(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_scheduler_leaves_no_window() {
    if !can_run("a_killed_scheduler_leaves_no_window") {
        return;
    }
    let mut stack = Stack::start_net(LEASE).await.unwrap();
    let before = stack.net().hi.ruleset().unwrap();
    let hold = tempfile::tempdir().unwrap();
    let (_job, _data) = held_backup(&mut stack, &hold.path().join("go")).await;

    stack.kill("scheduler");
    let took = closes_within(&stack, Duration::from_secs(LEASE + 10)).await;
    eprintln!(
        "the kernel dropped the pair {took:?} after the scheduler was killed (lease {LEASE}s)"
    );
    assert!(
        took.is_some_and(|t| t <= Duration::from_secs(LEASE + KERNEL_SLACK)),
        "window still open {took:?} after the scheduler died"
    );
    assert_eq!(stack.net().hi.ruleset().unwrap(), before);
    let gone = eventually(Duration::from_secs(5), async || {
        stack.open_windows().await.is_ok_and(|w| w.is_empty())
    })
    .await;
    assert!(gone, "the controller still reports the window");
    std::fs::write(hold.path().join("go"), b"").unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_jobs_leave_the_ruleset_as_it_was() {
    if !can_run("failed_jobs_leave_the_ruleset_as_it_was") {
        return;
    }
    let mut stack = Stack::start_net(LEASE).await.unwrap();
    let before = stack.net().hi.ruleset().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), b"x").unwrap();

    // The pre hook fails after the window opened.
    let mut bad_hook = system("ops", &[data.path()]);
    bad_hook.address = OPS.into();
    bad_hook.hooks.pre_backup = Some(sh_hook("exit 3"));
    // The second firewall on the path does not exist.
    let mut two_firewalls = system("ops2", &[data.path()]);
    two_firewalls.address = OPS2.into();
    two_firewalls.firewalls = vec![FIREWALL.into(), "absent".into()];
    stack
        .load_systems(vec![bad_hook, two_firewalls])
        .await
        .unwrap();
    stack.start_agent_in("ops", Zone::Ops, HI_FOR_OPS).unwrap();

    let job = stack.backup(&["ops"]).await.unwrap()[0];
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Failed, "{rec:#?}");
    assert!(kinds(&events).contains(&"window-closed"));
    assert_eq!(stack.net().hi.ruleset().unwrap(), before);

    let job = stack.backup(&["ops2"]).await.unwrap()[0];
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Failed, "{rec:#?}");
    assert!(
        rec.error.as_deref().unwrap_or("").contains("absent"),
        "{rec:#?}"
    );
    assert_eq!(stack.net().hi.ruleset().unwrap(), before);
    assert!(events.iter().any(|e| matches!(&e.detail,
        EventDetail::WindowClosed { firewall } if firewall == FIREWALL)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_job_leaves_the_ruleset_as_it_was() {
    if !can_run("a_cancelled_job_leaves_the_ruleset_as_it_was") {
        return;
    }
    let mut stack = Stack::start_net(LEASE).await.unwrap();
    let before = stack.net().hi.ruleset().unwrap();
    let hold = tempfile::tempdir().unwrap();
    let release = hold.path().join("go");
    let (job, _data) = held_backup(&mut stack, &release).await;
    assert_ne!(
        stack.net().hi.ruleset().unwrap(),
        before,
        "no window was opened"
    );
    stack.cancel(job).await.unwrap();
    // The pre hook is not cut short; once it returns, the job cleans up.
    std::fs::write(&release, b"").unwrap();
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Cancelled, "{rec:#?}");
    assert!(
        kinds(&events).contains(&"window-closed"),
        "{:?}",
        kinds(&events)
    );
    assert_eq!(stack.net().hi.ruleset().unwrap(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_system_behind_two_firewalls_one_on_a_router() {
    if !can_run("a_system_behind_two_firewalls_one_on_a_router") {
        return;
    }
    let mut stack = Stack::start_net(LEASE).await.unwrap();
    // `hi` routes between `ops` and `ops2`; a service listens in `ops2`.
    let net = stack.net();
    let sysctl = net
        .hi
        .run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    assert!(sysctl.status.success(), "{sysctl:?}");
    net.ops
        .ip(&["route", "add", "10.203.2.0/24", "via", HI_FOR_OPS])
        .unwrap();
    net.ops2
        .ip(&["route", "add", "10.203.1.0/24", "via", HI_FOR_OPS2])
        .unwrap();
    let port = arca_testkit::free_port();
    let mut cmd = net.ops2.command("python3");
    cmd.args([
        "-c",
        &format!(
            "import socket\ns = socket.socket()\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('0.0.0.0', {port}))\ns.listen(16)\n\
             while True:\n    c, _ = s.accept()\n    c.close()\n"
        ),
    ]);
    let _listener =
        arca_testkit::ServiceProcess::spawn_command("listener", cmd, &[], stack.dir.path())
            .unwrap();
    let up = eventually(Duration::from_secs(20), async || {
        stack.net().ops.tcp_connects(OPS2, port, 1)
    })
    .await;
    assert!(
        up,
        "nothing forwarded before the router's controller started"
    );

    // A second controller in `hi`, on the forward hook, in its own table.
    stack
        .write_service(
            "router.toml",
            &format!(
                "id = \"router\"\nbackend = \"nftables\"\ntable = \"arca_router\"\n\
                 ports = [{port}]\nguard-interfaces = [\"to-ops\"]\nforward = true\n"
            ),
            "firewall-router",
        )
        .unwrap();
    stack
        .spawn("router", "arca-firewall", "router.toml")
        .unwrap();
    let status: FirewallStatusReply = rpc::retry(Duration::from_secs(20), || {
        rpc::request(
            &stack.client,
            subject::firewall("router", FirewallVerb::Status),
            &FirewallStatus {},
        )
    })
    .await
    .unwrap();
    assert_eq!(
        (status.backend.as_str(), status.ports),
        ("nftables", vec![port])
    );
    let before = stack.net().hi.ruleset().unwrap();
    assert!(before.contains("\"name\": \"arca\"") && before.contains("\"name\": \"arca_router\""));
    assert!(before.contains("\"hook\": \"forward\""));
    assert!(
        !stack.net().ops.tcp_connects(OPS2, port, 2),
        "forwarded traffic not guarded"
    );

    let job = JobId::new();
    let _: WindowReply = rpc::request(
        &stack.client,
        subject::firewall("router", FirewallVerb::Open),
        &OpenWindow {
            job,
            system: "ops".into(),
            address: OPS.into(),
            lease_secs: 60,
        },
    )
    .await
    .unwrap();
    assert!(stack.net().ops.tcp_connects(OPS2, port, 2));
    // The other controller's port stays closed: its table is its own.
    assert!(
        !stack
            .net()
            .ops
            .tcp_connects(HI_FOR_OPS, stack.nats.port(), 2)
    );
    let _: CloseWindowReply = rpc::request(
        &stack.client,
        subject::firewall("router", FirewallVerb::Close),
        &CloseWindow { job },
    )
    .await
    .unwrap();
    assert!(!stack.net().ops.tcp_connects(OPS2, port, 2));
    assert_eq!(stack.net().hi.ruleset().unwrap(), before);

    // A job of a system behind both firewalls opens both, in order, and
    // closes both, in reverse order.
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), b"behind two firewalls").unwrap();
    let hold = tempfile::tempdir().unwrap();
    let mut s = held_system("ops", OPS, data.path(), &hold.path().join("go"));
    s.firewalls = vec![FIREWALL.into(), "router".into()];
    stack.load_systems(vec![s]).await.unwrap();
    stack.start_agent_in("ops", Zone::Ops, HI_FOR_OPS).unwrap();
    let job = stack.backup(&["ops"]).await.unwrap()[0];
    wait_step(&stack, job, JobStep::Preparing).await;
    let nats_port = stack.nats.port();
    assert!(stack.net().ops.tcp_connects(HI_FOR_OPS, nats_port, 2));
    assert!(stack.net().ops.tcp_connects(OPS2, port, 2));
    std::fs::write(hold.path().join("go"), b"").unwrap();
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    let windows: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.detail {
            EventDetail::WindowOpened { firewall, .. } => Some(format!("opened {firewall}")),
            EventDetail::WindowClosed { firewall } => Some(format!("closed {firewall}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        windows,
        [
            "opened local",
            "opened router",
            "closed router",
            "closed local"
        ]
    );
    assert!(!stack.net().ops.tcp_connects(HI_FOR_OPS, nats_port, 2));
    assert!(!stack.net().ops.tcp_connects(OPS2, port, 2));
    assert_eq!(stack.net().hi.ruleset().unwrap(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_the_controller_did_not_create_is_left_alone() {
    if !can_run("a_table_the_controller_did_not_create_is_left_alone") {
        return;
    }
    let mut stack = Stack::start_net(LEASE).await.unwrap();
    let made = stack
        .net()
        .hi
        .run("nft", &["add table inet other; add chain inet other keep"])
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let before = stack.net().hi.ruleset().unwrap();
    stack
        .write_service(
            "other.toml",
            "id = \"other\"\nbackend = \"nftables\"\ntable = \"other\"\n",
            "firewall-other",
        )
        .unwrap();
    stack.spawn("other", "arca-firewall", "other.toml").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while stack.is_running("other") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !stack.is_running("other"),
        "the controller started on a table that is not its own"
    );
    let log = stack.log("other");
    assert!(log.contains("was not created by arca-firewall"), "{log}");
    assert_eq!(stack.net().hi.ruleset().unwrap(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_configuration_replaces_the_table_in_one_step() {
    if !can_run("a_changed_configuration_replaces_the_table_in_one_step") {
        return;
    }
    let mut stack = Stack::start_net(LEASE).await.unwrap();
    let port = stack.nats.port();
    let before = stack.net().hi.ruleset().unwrap();
    let extra = arca_testkit::free_port();
    stack.kill("firewall");
    stack
        .write_service(
            "firewall.toml",
            &format!(
                "id = \"{FIREWALL}\"\nbackend = \"nftables\"\ntable = \"arca\"\n\
                 ports = [{port}, {extra}]\nguard-interfaces = [\"to-ops\", \"to-ops2\"]\n"
            ),
            "firewall",
        )
        .unwrap();
    restart_firewall(&mut stack).await;
    let after = stack.net().hi.ruleset().unwrap();
    assert_ne!(after, before);
    assert!(after.contains(&extra.to_string()), "{after}");
    let tables = "{\"table\": {\"family\": \"inet\", \"name\": \"arca\"";
    assert_eq!(after.matches(tables).count(), 1, "{after}");
    assert!(stack.log("firewall").contains("replacing it"));
    assert!(!stack.net().ops.tcp_connects(HI_FOR_OPS, port, 2));
}

/// Runs everywhere (`none` backend): a firewall on the path that does not
/// open fails the job with an event naming it, and the ones already open
/// are closed.
#[tokio::test(flavor = "multi_thread")]
async fn a_firewall_that_does_not_open_fails_the_job_and_the_others_close() {
    let stack = Stack::start().await.unwrap();
    assert!(stack.log("firewall").contains("firewall backend 'none'"));
    let data = tempfile::tempdir().unwrap();
    let mut s = system("two-fw", &[data.path()]);
    s.firewalls = vec![FIREWALL.into(), "absent".into()];
    stack.load_systems(vec![s]).await.unwrap();
    let job = stack.backup(&["two-fw"]).await.unwrap()[0];
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Failed);
    let failed = events
        .iter()
        .find_map(|e| match &e.detail {
            EventDetail::StepFailed { step, error } if step == "window-opened" => Some(error),
            _ => None,
        })
        .expect("a step-failed event for the window");
    assert!(failed.contains("firewall absent"), "{failed}");
    let opened: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.detail {
            EventDetail::WindowOpened { firewall, .. } => Some(firewall.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(opened, [FIREWALL]);
    // The window that opened closes first, not after the absent one's
    // close has been tried for a while.
    let closed = events
        .iter()
        .position(
            |e| matches!(&e.detail, EventDetail::WindowClosed { firewall } if firewall == FIREWALL),
        )
        .expect("the open window was closed");
    let tried = events
        .iter()
        .position(|e| matches!(&e.detail, EventDetail::StepFailed { step, .. } if step == "window-closed"))
        .expect("closing the absent firewall was tried and failed");
    assert!(closed < tried, "{:?}", kinds(&events));
    assert!(stack.open_windows().await.unwrap().is_empty());
}
