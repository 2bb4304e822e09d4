//! A dashboard that is not written in Rust: the Python client nats-py reads
//! every event of a successful, a failed and a cancelled backup and a
//! restore from the events stream and validates each against
//! `schemas/json/job-event.json` (tests/python/validate_events.py).

use std::path::Path;
use std::process::Command;

use arca_e2e::{AgentUser, Stack, sh_hook, system};
use arca_schemas::JobStatus;

#[tokio::test(flavor = "multi_thread")]
async fn every_event_validates_against_its_json_schema_from_python() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let big = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), b"dashboard").unwrap();
    arca_testkit::tree::write_pseudo_random(&big.path().join("big"), 300_000_000, 21).unwrap();
    let mut ok = system("ok", &[data.path()]);
    ok.hooks.pre_backup = Some(sh_hook("echo quiesced"));
    ok.hooks.post_backup = Some(sh_hook("echo released"));
    let bad = system("bad", &[Path::new("/nonexistent/arca-dashboard")]);
    let slow = system("slow", &[big.path()]);
    stack.load_systems(vec![ok, bad, slow]).await.unwrap();
    for s in ["ok", "bad", "slow"] {
        stack.start_agent(s, AgentUser::Same).await.unwrap();
    }

    let job = stack.backup(&["ok"]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    let target = tempfile::tempdir().unwrap();
    let restore = stack
        .restore(rec.snapshot.as_ref().unwrap(), Some(target.path()))
        .await
        .unwrap();
    let (_, rrec) = stack.wait_job(restore).await.unwrap();
    assert_eq!(rrec.status, JobStatus::Succeeded, "{rrec:#?}");

    let job = stack.backup(&["bad"]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Failed, "{rec:#?}");

    let job = stack.backup(&["slow"]).await.unwrap()[0];
    // Cancel once chunks reach the repository.
    stack.wait_first_chunk().await;
    stack.cancel(job).await.unwrap();
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Cancelled, "{rec:#?}");

    let out = validate(&stack);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python validator refused events:\n{stderr}\n{stdout}"
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let statuses: Vec<&str> = summary["jobs"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    for s in ["succeeded", "failed", "cancelled"] {
        assert!(statuses.contains(&s), "{s} missing: {summary}");
    }
    assert_eq!(statuses.len(), 4, "{summary}");
    let kinds: Vec<&str> = summary["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for k in [
        "selected",
        "window-opened",
        "agent-present",
        "prepared",
        "transferred",
        "finished",
        "window-closed",
        "step-failed",
        "cancel-requested",
        "ended",
    ] {
        assert!(kinds.contains(&k), "no {k} event validated: {summary}");
    }

    // The validator is not vacuous: an event that breaks its schema fails it.
    let bad = serde_json::json!({
        "v": 1, "job": job.to_string(), "job-kind": "backup", "system": "slow",
        "time": "2026-01-01T00:00:00Z", "kind": "ended", "status": "exploded"
    });
    stack
        .js
        .publish(
            arca_schemas::subject::event(&job, "ended"),
            serde_json::to_vec(&bad).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let out = validate(&stack);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("status"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn validate(stack: &Stack) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    Command::new("python3")
        .arg(root.join("tests/python/validate_events.py"))
        .args(["--nats-url", &stack.nats.url()])
        .args(["--user", arca_e2e::security::DASHBOARD.0])
        .args(["--password", arca_e2e::security::DASHBOARD.1])
        .arg("--tls-ca")
        .arg(arca_testkit::Pki::shared().ca())
        .arg("--tls-cert")
        .arg(arca_testkit::Pki::shared().client_cert())
        .arg("--tls-key")
        .arg(arca_testkit::Pki::shared().client_key())
        .arg("--schema")
        .arg(root.join("schemas/json/job-event.json"))
        .output()
        .expect("python3 runs (ops/test installs nats-py and jsonschema)")
}
