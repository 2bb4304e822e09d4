//! The door: what the NATS server refuses is audited and said. A key the
//! server does not know is refused at connection: the scheduler's door
//! watcher records it with the key and the address tried, rate-limited, and
//! an agent holding such a key says at ERROR that it is not enrolled and
//! how to enroll it. An enrolled key used by an agent configured as
//! another system connects, but its subscriptions are refused: the
//! connection is recorded against the key's own system, and the agent
//! never says it is ready.

use std::time::Duration;

use arca_e2e::Stack;
use arca_e2e::security::agent_key;
use arca_runtime::trust::read_audit;
use arca_schemas::trust::{AuditKind, AuditRecord, DOOR_RECORDS_PER_MINUTE};
use arca_testkit::Pki;

/// The door refusals recorded so far.
async fn door_records(stack: &Stack) -> Vec<AuditRecord> {
    read_audit(&stack.js, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == AuditKind::DoorRefused)
        .collect()
}

/// Waits until a door refusal matching `pick` is recorded.
async fn wait_record(stack: &Stack, pick: impl Fn(&AuditRecord) -> bool) -> AuditRecord {
    for _ in 0..100 {
        if let Some(r) = door_records(stack).await.into_iter().find(&pick) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "no such door refusal in {:?}\nscheduler log:\n{}",
        door_records(stack).await,
        stack.log("scheduler")
    );
}

/// Waits until the log of `service` contains `needle`.
async fn wait_log(stack: &Stack, service: &str, needle: &str) -> String {
    for _ in 0..150 {
        let log = stack.log(service);
        if log.contains(needle) {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{service} never logged {needle:?}:\n{}", stack.log(service));
}

/// Tries to connect with the key of `key_of`'s agent (and a valid client
/// certificate); the server refuses a key it does not know.
async fn try_connect(stack: &Stack, key_of: &str) -> Result<async_nats::Client, String> {
    let pki = Pki::shared();
    let seed = arca_e2e::security::agent_seed(key_of);
    async_nats::ConnectOptions::with_nkey(seed)
        .require_tls(true)
        .add_root_certificates(pki.ca())
        .add_client_certificate(pki.client_cert(), pki.client_key())
        .connection_timeout(Duration::from_secs(5))
        .connect(stack.nats.url())
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unenrolled_key_is_refused_audited_and_told_how_to_enroll() {
    let mut stack = Stack::start().await.unwrap();

    // A client with an unknown key: refused, and recorded with the key
    // and the address it came from.
    let refused = try_connect(&stack, "stranger").await;
    assert!(refused.is_err(), "an unknown key connected");
    let key = agent_key("stranger");
    let r = wait_record(&stack, |r| r.key.as_deref() == Some(key.as_str())).await;
    assert_eq!(r.address.as_deref(), Some("127.0.0.1"), "{r:?}");
    assert_eq!(r.system, None, "{r:?}");
    assert_eq!(r.by, "scheduler/main");
    assert_eq!(r.count, Some(1));
    let reason = r.reason.clone().unwrap();
    assert!(reason.contains("not enrolled"), "{reason}");
    let out = stack.arca(&["audit"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains("door-refused")
            && l.contains(&format!("key={key}"))
            && l.contains("address=127.0.0.1")),
        "{text}"
    );

    // An agent with a key never enrolled: it says so at ERROR, with the
    // way to enroll it, not that the firewall may be closed; it is not
    // ready; and its attempts are recorded too.
    stack.spawn_agent_with_key("ghost", "ghost").unwrap();
    let log = wait_log(&stack, "agent-ghost", "not enrolled for system ghost").await;
    let line = log
        .lines()
        .find(|l| l.contains("not enrolled for system ghost"))
        .unwrap();
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(&agent_key("ghost")), "{line}");
    assert!(
        line.contains("arca system edit") && line.contains("arca nats-config"),
        "{line}"
    );
    assert!(!log.contains("closed firewall window"), "{log}");
    assert!(!log.contains("agent ready"), "{log}");
    let ghost = agent_key("ghost");
    let r = wait_record(&stack, |r| r.key.as_deref() == Some(ghost.as_str())).await;
    assert_eq!(r.address.as_deref(), Some("127.0.0.1"), "{r:?}");
    let reason = r.reason.unwrap();
    assert!(reason.contains("arca-agent-ghost"), "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_masquerading_agent_is_refused_audited_and_never_ready() {
    let mut stack = Stack::start().await.unwrap();
    // System aa is enrolled and admitted; its key is used by an agent
    // configured as system bb.
    stack
        .load_systems(vec![arca_e2e::system("aa", &[stack.dir()])])
        .await
        .unwrap();
    stack.enroll("aa").await.unwrap();
    stack.spawn_agent_with_key("bb", "aa").unwrap();

    let log = wait_log(&stack, "agent-bb", "refused this agent's subscriptions").await;
    let line = log
        .lines()
        .find(|l| l.contains("refused this agent's subscriptions"))
        .unwrap();
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("arca.agent.bb"), "{line}");
    assert!(
        line.contains("not enrolled for system bb") && line.contains("arca system edit"),
        "{line}"
    );
    // Long enough for a round trip that would have succeeded.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!stack.log("agent-bb").contains("agent ready"), "{log}");
    assert!(!stack.agent_answers("bb", Duration::from_millis(500)).await);

    // The server reports the connection of aa's key under bb's name; the
    // scheduler records it against aa, the key's own system.
    let key = agent_key("aa");
    let r = wait_record(&stack, |r| r.key.as_deref() == Some(key.as_str())).await;
    assert_eq!(r.system.as_deref(), Some("aa"), "{r:?}");
    assert_eq!(r.address.as_deref(), Some("127.0.0.1"), "{r:?}");
    let reason = r.reason.unwrap();
    assert!(reason.contains("\"bb\""), "{reason}");
    let out = stack.arca(&["audit", "--system", "aa"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("door-refused"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_refused_connections_is_rate_limited_in_the_audit() {
    let started = std::time::Instant::now();
    let stack = Stack::start().await.unwrap();
    // One key, many attempts: one record (the rest are counted into a
    // later one).
    for _ in 0..40 {
        assert!(try_connect(&stack, "flood").await.is_err());
    }
    let key = agent_key("flood");
    wait_record(&stack, |r| r.key.as_deref() == Some(key.as_str())).await;
    // Many keys: no more records than the budget of a minute.
    for i in 0..(2 * DOOR_RECORDS_PER_MINUTE) {
        assert!(try_connect(&stack, &format!("flood-{i}")).await.is_err());
    }
    let last = agent_key(&format!("flood-{}", DOOR_RECORDS_PER_MINUTE - 2));
    wait_record(&stack, |r| r.key.as_deref() == Some(last.as_str())).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let records = door_records(&stack).await;
    // Budgets are per minute of the scheduler's life: a slow run may have
    // crossed into a second one.
    let minutes = started.elapsed().as_secs() as usize / 60 + 1;
    let of_key = records
        .iter()
        .filter(|r| r.key.as_deref() == Some(key.as_str()))
        .count();
    assert!((1..=minutes).contains(&of_key), "{records:?}");
    assert!(
        records.len() >= DOOR_RECORDS_PER_MINUTE as usize
            && records.len() <= minutes * DOOR_RECORDS_PER_MINUTE as usize,
        "{} records in {minutes} minute(s): {records:?}",
        records.len()
    );
}
