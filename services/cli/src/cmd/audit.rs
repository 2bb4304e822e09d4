//! `arca audit`: the audit stream of enrollments, key changes,
//! cross-system restores and refused requests.

use std::process::ExitCode;

use arca_schemas::text::escape;
use arca_schemas::trust::AuditRecord;

use crate::parse_since;

/// `arca audit`: the audit records, oldest first, as their subjects say
/// (see [`arca_runtime::trust::as_subject_says`]).
pub async fn run(
    client: &async_nats::Client,
    since: Option<String>,
    system: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let since = since.as_deref().map(parse_since).transpose()?;
    let system = system.as_deref();
    let js = async_nats::jetstream::new(client.clone());
    let mut records = arca_runtime::trust::read_audit(&js, since).await?;
    if let Some(s) = system {
        records.retain(|r| r.system.as_deref() == Some(s) || r.source_system.as_deref() == Some(s));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(ExitCode::SUCCESS);
    }
    for r in &records {
        println!("{}", line(r));
    }
    if records.is_empty() {
        println!("no audit records");
    }
    Ok(ExitCode::SUCCESS)
}

/// One record on one line, every field escaped (a reason may quote what
/// a system sent). An agent's own report reads as its claim, and a record
/// whose body disagreed with its subject says so.
fn line(r: &AuditRecord) -> String {
    let mut parts = vec![
        r.time.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        r.kind.as_str().to_owned(),
    ];
    match r.by.strip_prefix("agent/").filter(|_| r.claim) {
        Some(system) => parts.push(format!("claimed-by=agent/{}", escape(system))),
        None => parts.push(format!("by={}", escape(&r.by))),
    }
    let mut field = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            parts.push(format!("{k}={}", escape(&v)));
        }
    };
    field("system", r.system.clone());
    field("from", r.source_system.clone());
    field("operator", r.operator.clone());
    field("job", r.job.map(|j| j.to_string()));
    field("snapshot", r.snapshot.as_ref().map(|s| s.to_string()));
    field("key", r.key.clone());
    field("previous-key", r.previous_key.clone());
    field("subject", r.subject.clone());
    field("address", r.address.clone());
    field("count", r.count.map(|n| n.to_string()));
    field("reason", r.reason.as_ref().map(|s| format!("{s:?}")));
    field(
        "MISMATCH",
        r.mismatch
            .as_ref()
            .map(|m| format!("{m:?} (shown as its subject says)")),
    );
    parts.join(" ")
}
