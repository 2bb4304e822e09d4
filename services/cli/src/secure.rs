//! The console's part in trust between zones: its own credentials,
//! identities, the nats-server configuration, and the audit stream.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use arca_runtime::identity::Identity;
use arca_runtime::nats::{Credentials, TlsFiles};
use arca_runtime::natsconf::{self, ServerTls, Users};
use arca_schemas::system::SystemsFile;
use arca_schemas::text::escape;
use arca_schemas::trust::AuditRecord;

/// The console's NATS credentials from its global flags.
pub fn credentials(
    identity: Option<&PathBuf>,
    ca: Option<&PathBuf>,
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
) -> anyhow::Result<Credentials> {
    let identity = identity.map(|p| Identity::load(p)).transpose()?;
    let tls = match (ca, cert, key) {
        (None, None, None) => None,
        (Some(ca), cert, key) => Some(TlsFiles {
            ca_file: ca.clone(),
            cert_file: cert.cloned(),
            key_file: key.cloned(),
        }),
        _ => anyhow::bail!("--tls-cert and --tls-key need --tls-ca"),
    };
    Ok(Credentials {
        identity,
        tls,
        inbox_prefix: None,
    })
}

/// `arca identity FILE`: prints the public key, creating the identity first
/// when the file does not exist.
pub fn identity(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let id = Identity::load_or_create(file)?;
    println!("{}", id.public_key());
    Ok(ExitCode::SUCCESS)
}

/// `ID=KEY` of a service.
fn pair(what: &str, s: &str) -> anyhow::Result<(String, String)> {
    let (id, key) = s
        .split_once('=')
        .with_context(|| format!("--{what} {s:?}: give ID=PUBLIC-KEY, e.g. main=UABC..."))?;
    Ok((id.to_owned(), key.to_owned()))
}

/// `arca nats-config`: the server's users (from the systems files' enrolled
/// keys and the services' keys) and TLS blocks.
#[allow(clippy::too_many_arguments)]
pub fn nats_config(
    systems: &[PathBuf],
    schedulers: &[String],
    media: &[String],
    firewalls: &[String],
    operators: &[String],
    doors: &[String],
    tls_dir: Option<&PathBuf>,
    no_client_certs: bool,
    out: Option<&PathBuf>,
) -> anyhow::Result<ExitCode> {
    let mut users = Users {
        schedulers: schedulers
            .iter()
            .map(|s| pair("scheduler", s))
            .collect::<Result<_, _>>()?,
        media: media
            .iter()
            .map(|s| pair("media", s))
            .collect::<Result<_, _>>()?,
        firewalls: firewalls
            .iter()
            .map(|s| pair("firewall", s))
            .collect::<Result<_, _>>()?,
        operators: operators.to_vec(),
        agents: Vec::new(),
        dashboards: Vec::new(),
        doors: doors
            .iter()
            .map(|s| pair("door-key", s))
            .collect::<Result<_, _>>()?,
    };
    for file in systems {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let parsed: SystemsFile =
            toml::from_str(&text).with_context(|| format!("{}", file.display()))?;
        for s in parsed.systems {
            match s.agent {
                Some(key) => users.agents.push((s.name, key)),
                None => eprintln!(
                    "note: system {} has no `agent` key yet; its agent cannot connect until it is enrolled",
                    s.name
                ),
            }
        }
    }
    let tls = tls_dir.map(|d| {
        let abs = std::path::absolute(d).unwrap_or_else(|_| d.clone());
        ServerTls {
            cert_file: abs.join("server.pem"),
            key_file: abs.join("server.key"),
            ca_file: abs.join("ca.pem"),
            verify: !no_client_certs,
        }
    });
    let text = natsconf::render(&users, tls.as_ref())?;
    match out {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `arca audit`: the audit records, oldest first, as their subjects say
/// (see [`arca_runtime::trust::as_subject_says`]).
pub async fn audit(
    client: &async_nats::Client,
    since: Option<chrono::DateTime<chrono::Utc>>,
    system: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
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
