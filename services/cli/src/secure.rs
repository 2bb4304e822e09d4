//! The console's part in trust between zones: its own credentials,
//! identities and the nats-server configuration (the audit stream is
//! read by [`crate::cmd::audit`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use arca_runtime::identity::Identity;
use arca_runtime::nats::{Credentials, TlsFiles};
use arca_runtime::natsconf::{self, ServerTls, Users};
use arca_schemas::system::SystemsFile;

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
