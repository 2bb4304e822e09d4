//! The operator's view through `arca`: the registry of systems, job
//! history and the catalog rebuilt from the repository alone.

use arca_e2e::{AgentUser, Stack};
use arca_schemas::JobStatus;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn systems_file(dir: &std::path::Path, name: &str, body: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

fn web01(data: &std::path::Path, extra: &str) -> String {
    format!(
        r#"[[system]]
name = "web01"
address = "10.0.5.21"
paths = ["{}"]
exclude = ["*.tmp"]
agent = "{}"
firewalls = ["local"]
priority = 5
{extra}
[system.schedules.full]
cron = "0 1 * * SUN"
time-zone = "Europe/Berlin"

[system.schedules.incremental]
cron = "0 1 * * MON-SAT"
time-zone = "Europe/Berlin"

[system.retention]
keep-daily = 7
keep-weekly = 4
"#,
        data.display(),
        arca_e2e::agent_key("web01")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn systems_are_added_shown_edited_and_removed_and_bad_input_names_the_field() {
    let mut stack = Stack::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let file = systems_file(dir.path(), "web01", &web01(data.path(), ""));

    let out = stack.arca(&["system", "add", &file]);
    assert!(out.status.success(), "{}", text(&out));
    // A second add of the same name is refused.
    let out = stack.arca(&["system", "add", &file]);
    assert!(!out.status.success());
    assert!(text(&out).contains("already registered"), "{}", text(&out));

    let out = stack.arca(&["system", "list"]);
    let t = text(&out);
    assert!(
        t.contains("web01") && t.contains("0 1 * * SUN Europe/Berlin"),
        "{t}"
    );

    // `show` prints a systems file that `edit` takes back.
    let out = stack.arca(&["system", "show", "web01"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(shown.contains("keep-weekly = 4"), "{shown}");
    let edited = systems_file(
        dir.path(),
        "edited",
        &shown.replace("priority = 5", "priority = 7"),
    );
    let out = stack.arca(&["system", "edit", &edited]);
    assert!(out.status.success(), "{}", text(&out));
    let out = stack.arca(&["system", "show", "web01", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["priority"], 7);
    assert_eq!(json["schedules"]["full"]["time-zone"], "Europe/Berlin");
    assert_eq!(json["exclude"][0], "*.tmp");

    // Editing a name that is not registered is refused.
    let other = systems_file(dir.path(), "other", &shown.replace("web01", "web02"));
    let out = stack.arca(&["system", "edit", &other]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not registered"), "{}", text(&out));

    // Bad input is refused naming the field; nothing stored changes.
    let cases = [
        (
            web01(data.path(), "").replace("0 1 * * SUN", "0 25 * * SUN"),
            "schedules.full.cron",
        ),
        (
            web01(data.path(), "").replace("Europe/Berlin", "Mars/Olympus"),
            "schedules.full.time-zone",
        ),
        (
            web01(data.path(), "").replace("firewalls = [\"local\"]", "firewalls = [\"nosuchfw\"]"),
            "unknown firewall \"nosuchfw\"",
        ),
        (
            web01(data.path(), "").replace("keep-daily = 7", "keep-daily = 0"),
            "retention.keep-daily",
        ),
    ];
    for (i, (body, expected)) in cases.iter().enumerate() {
        let f = systems_file(dir.path(), &format!("bad{i}"), body);
        let out = stack.arca(&["system", "edit", &f]);
        assert!(!out.status.success(), "case {i} accepted");
        assert!(text(&out).contains(expected), "case {i}: {}", text(&out));
    }
    let out = stack.arca(&["system", "show", "web01", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["priority"], 7, "a refused edit changed the record");

    // A firewall the scheduler's configuration lists is known even when no
    // controller answers for it.
    // The restart also changes the events stream's retention limits.
    stack
        .restart_scheduler(
            "firewalls = [\"edge\"]\nevents-max-msgs = 100000\nevents-max-age-days = 30",
            &[],
        )
        .await
        .unwrap();
    let mut events = stack
        .js
        .get_stream(arca_schemas::names::EVENTS_STREAM)
        .await
        .unwrap();
    let config = &events.info().await.unwrap().config;
    assert_eq!(config.max_messages, 100_000);
    assert_eq!(
        config.max_age,
        std::time::Duration::from_secs(30 * 24 * 3600)
    );
    assert_eq!(config.max_bytes, 1 << 30);
    let edge = systems_file(
        dir.path(),
        "edge",
        &web01(data.path(), "").replace("\"local\"", "\"edge\""),
    );
    let out = stack.arca(&["system", "edit", &edge]);
    assert!(out.status.success(), "{}", text(&out));

    let out = stack.arca(&["system", "remove", "web01"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = stack.arca(&["system", "show", "web01"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("unknown system"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn job_history_and_a_catalog_rebuilt_from_the_repository() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), vec![7u8; 300_000]).unwrap();
    stack
        .load_systems(vec![arca_e2e::system("cat", &[data.path()])])
        .await
        .unwrap();
    stack.start_agent("cat", AgentUser::Same).await.unwrap();
    let out = stack.arca(&["backup", "cat", "--full"]);
    assert!(out.status.success(), "{}", text(&out));
    let jobs = stack.jobs().await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].status, JobStatus::Succeeded);
    let snapshot = jobs[0].snapshot.clone().unwrap();

    let out = stack.arca(&["jobs", "--system", "cat", "--since", "1h"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains(&jobs[0].id.to_string()) && t.contains("backup full") && t.contains("KiB"),
        "{t}"
    );
    let out = stack.arca(&["jobs", "--since", "2999-01-01T00:00:00Z", "--json"]);
    let none: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(none.as_array().unwrap().len(), 0);
    let out = stack.arca(&["jobs", "--since", "yesterday-ish"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--since"), "{}", text(&out));

    // Lose the catalog, then rebuild it from what media holds.
    let kv = stack
        .js
        .get_key_value(arca_schemas::names::SNAPSHOTS_BUCKET)
        .await
        .unwrap();
    kv.purge(&snapshot.0).await.unwrap();
    assert!(stack.snapshots("cat").await.unwrap().is_empty());
    let out = stack.arca(&["catalog", "rebuild"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 added"), "{}", text(&out));
    let back = stack.snapshots("cat").await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].id, snapshot);
    assert_eq!(back[0].job, jobs[0].id);
}
