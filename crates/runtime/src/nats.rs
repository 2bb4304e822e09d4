//! Connecting to NATS, and refusing servers too old to trust.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use arca_schemas::MIN_NATS_SERVER;

/// Why a connection could not be made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// No server answered at the URL.
    #[error("cannot connect to NATS at {url}: {source}; {}", connect_hint(source))]
    Connect {
        /// URL tried.
        url: String,
        /// Cause.
        source: async_nats::ConnectError,
    },
    /// The server is older than Arca supports.
    #[error(
        "nats-server {found} at {url} is too old: Arca needs {}.{}.{} or later, because older servers silently ignore options it relies on; install a current release (ops/install-nats-server installs the pinned one)",
        MIN_NATS_SERVER.0, MIN_NATS_SERVER.1, MIN_NATS_SERVER.2
    )]
    TooOld {
        /// URL.
        url: String,
        /// Version the server reported.
        found: String,
    },
    /// The TLS settings are incomplete.
    #[error("TLS settings: {0}")]
    Tls(String),
}

/// TLS settings of a connection (a `[tls]` table in a service's
/// configuration). With them the connection requires TLS, trusts only
/// servers whose certificate `ca-file` signed, and presents the client
/// certificate when the server asks for one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate of the authority that signed the server's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate (signed by the same authority).
    pub cert_file: Option<PathBuf>,
    /// PEM key of the client certificate.
    pub key_file: Option<PathBuf>,
}

/// How a program proves who it is to the NATS server.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// nkey identity to authenticate with.
    pub identity: Option<crate::identity::Identity>,
    /// TLS settings.
    pub tls: Option<TlsFiles>,
    /// Inbox prefix (agents: `_INBOX_<system>`, the only inbox their
    /// permissions allow).
    pub inbox_prefix: Option<String>,
}

impl Credentials {
    /// The credentials of a service configured with an optional identity
    /// file (created on first use) and optional TLS files.
    pub fn from_files(
        identity_file: Option<&std::path::Path>,
        tls: Option<TlsFiles>,
    ) -> anyhow::Result<Credentials> {
        Ok(Credentials {
            identity: identity_file
                .map(crate::identity::Identity::load_or_create)
                .transpose()?,
            tls,
            inbox_prefix: None,
        })
    }

    /// Adds these credentials to `options`.
    pub fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, NatsError> {
        if let Some(id) = &self.identity {
            options = options.nkey(id.seed());
        }
        if let Some(tls) = &self.tls {
            for f in [
                Some(&tls.ca_file),
                tls.cert_file.as_ref(),
                tls.key_file.as_ref(),
            ]
            .into_iter()
            .flatten()
            {
                if !f.is_file() {
                    return Err(NatsError::Tls(format!("{} does not exist", f.display())));
                }
            }
            options = options
                .require_tls(true)
                .add_root_certificates(tls.ca_file.clone());
            match (&tls.cert_file, &tls.key_file) {
                (Some(c), Some(k)) => {
                    options = options.add_client_certificate(c.clone(), k.clone())
                }
                (None, None) => {}
                _ => {
                    return Err(NatsError::Tls(
                        "tls: cert-file and key-file go together".into(),
                    ));
                }
            }
        }
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        Ok(options)
    }
}

/// What to check after a failed connection.
fn connect_hint(e: &async_nats::ConnectError) -> &'static str {
    let text = e.to_string();
    if text.contains("certificate") || text.contains("tls") || text.contains("TLS") {
        "the server requires TLS: give the authority that signed its certificate and this \
         program's client certificate ([tls] ca-file, cert-file, key-file; for arca: --tls-ca, \
         --tls-cert, --tls-key)"
    } else if text.contains("uthorization") {
        "the server does not know this program's identity: give its identity file \
         (identity-file; for arca: --identity) and check that `arca nats-config` admitted its key"
    } else {
        "is nats-server running there? (start one with ops/start-nats)"
    }
}

/// Parses `major.minor.patch` (ignoring any suffix).
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.trim_start_matches('v').split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// True when `version` is at least [`MIN_NATS_SERVER`].
pub fn version_supported(version: &str) -> bool {
    parse_version(version).is_some_and(|v| v >= MIN_NATS_SERVER)
}

/// How long to wait before connection attempt `attempt` (counted from 1,
/// and again from 1 after each lost connection): the first at once, then a
/// bounded, short back-off, since an agent behind a closed firewall must be
/// present within seconds of its window opening. The client asks before
/// every attempt, the first included, so anything but zero for the first
/// delays every command's start.
fn reconnect_delay(attempt: usize) -> Duration {
    Duration::from_millis((250 * attempt.saturating_sub(1) as u64).min(2_000))
}

/// Connects as `name`, retrying the first connection for a while, and checks
/// the server version.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, NatsError> {
    connect_with(url, async_nats::ConnectOptions::new().name(name)).await
}

/// Connects as `name` with `credentials`, as [`connect`] does.
pub async fn connect_as(
    url: &str,
    name: &str,
    credentials: &Credentials,
) -> Result<async_nats::Client, NatsError> {
    connect_with(
        url,
        credentials.apply(async_nats::ConnectOptions::new().name(name))?,
    )
    .await
}

/// Like [`connect`], with the caller's options (credentials, inbox prefix).
pub async fn connect_with(
    url: &str,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, NatsError> {
    let options = options
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .reconnect_delay_callback(reconnect_delay);
    let client = options
        .connect(url)
        .await
        .map_err(|source| NatsError::Connect {
            url: url.to_owned(),
            source,
        })?;
    let found = client.server_info().version;
    if !version_supported(&found) {
        return Err(NatsError::TooOld {
            url: url.to_owned(),
            found,
        });
    }
    Ok(client)
}

/// What the server refused on one connection, as its error messages said:
/// the connection itself (an identity it does not know) and subscriptions
/// or publications its permissions do not allow. Filled by the
/// connection's event callback (see [`connect_patiently`]); the server
/// sends these asynchronously, so a caller learns of a refused
/// subscription only after a round trip.
#[derive(Debug, Clone, Default)]
pub struct Refusals {
    inner: std::sync::Arc<std::sync::Mutex<RefusalsSeen>>,
}

#[derive(Debug, Default)]
struct RefusalsSeen {
    /// Connection attempts refused ("authorization violation").
    connections: u64,
    /// Permission violations not yet taken, the latest few.
    violations: Vec<String>,
}

/// Permission violations a [`Refusals`] keeps until they are taken.
const VIOLATIONS_KEPT: usize = 16;

impl Refusals {
    /// An event callback for a connection that records its refusals here.
    pub fn callback(
        &self,
    ) -> impl Fn(async_nats::Event) -> std::future::Ready<()> + Send + Sync + 'static {
        let this = self.clone();
        move |event| {
            this.note(&event);
            std::future::ready(())
        }
    }

    /// Records `event` when it is a refusal.
    fn note(&self, event: &async_nats::Event) {
        use async_nats::{ClientError, Event, ServerError};
        let mut seen = self.inner.lock().expect("refusals lock");
        match event {
            Event::ServerError(ServerError::AuthorizationViolation) => seen.connections += 1,
            Event::ClientError(ClientError::Other(e)) if is_authorization_refusal(e) => {
                seen.connections += 1
            }
            Event::ServerError(ServerError::Other(e)) if e.contains("Permissions Violation") => {
                if seen.violations.len() >= VIOLATIONS_KEPT {
                    seen.violations.remove(0);
                }
                seen.violations.push(e.clone());
            }
            _ => {}
        }
    }

    /// Connection attempts the server refused so far.
    pub fn connections(&self) -> u64 {
        self.inner.lock().expect("refusals lock").connections
    }

    /// The permission violations reported since the last call, oldest
    /// first (at most the latest 16).
    pub fn take_violations(&self) -> Vec<String> {
        std::mem::take(&mut self.inner.lock().expect("refusals lock").violations)
    }
}

/// True for the error async-nats reports when the server refused the
/// credentials of a connection attempt.
fn is_authorization_refusal(error: &str) -> bool {
    error
        .to_ascii_lowercase()
        .contains("authorization violation")
}

/// Connects as `name` and keeps trying, with the same short bounded
/// back-off as reconnects, until a server answers; then checks its version.
///
/// For agents: behind a closed firewall window no server is reachable, and
/// the agent must be present within seconds of the window opening rather
/// than exit. Each attempt gives up after a few seconds (a closed window
/// drops the connection attempt silently). Logs every half minute while it
/// waits. A server that answers but refuses the credentials is not a
/// closed window: that is logged at ERROR with `refused_hint`, which tells
/// the operator what to do, and the attempts go on (the operator may admit
/// the key and reload the server). The returned [`Refusals`] go on
/// recording what the server refuses on the connection.
pub async fn connect_patiently(
    url: &str,
    name: &str,
    credentials: &Credentials,
    refused_hint: &str,
) -> Result<(async_nats::Client, Refusals), NatsError> {
    let refusals = Refusals::default();
    let options = credentials
        .apply(async_nats::ConnectOptions::new().name(name))?
        .event_callback(refusals.callback())
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(3))
        .request_timeout(Some(Duration::from_secs(10)))
        // A connection cut by a closing window is noticed within about
        // three ping intervals, and reconnecting starts.
        .ping_interval(Duration::from_secs(10))
        .reconnect_delay_callback(reconnect_delay);
    let client = options
        .connect(url)
        .await
        .map_err(|source| NatsError::Connect {
            url: url.to_owned(),
            source,
        })?;
    let started = std::time::Instant::now();
    let mut said = Duration::ZERO;
    let mut refused_said = 0;
    while client.connection_state() != async_nats::connection::State::Connected
        || client.server_info().version.is_empty()
    {
        let refused = refusals.connections();
        if refused > refused_said
            && (refused_said == 0 || started.elapsed() >= said + Duration::from_secs(30))
        {
            // The server answered and refused: not a closed window.
            refused_said = refused;
            said = started.elapsed();
            tracing::error!(
                %url,
                refused_attempts = refused,
                "the NATS server refused this program's credentials (authorization violation): \
                 {refused_hint}; still trying"
            );
        } else if refused == 0 && started.elapsed() >= said + Duration::from_secs(30) {
            said = started.elapsed();
            tracing::info!(
                %url,
                waited_secs = said.as_secs(),
                "NATS not reachable yet (a closed firewall window looks like this); still trying"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let found = client.server_info().version;
    if !version_supported(&found) {
        return Err(NatsError::TooOld {
            url: url.to_owned(),
            found,
        });
    }
    Ok((client, refusals))
}

/// The NATS URL from `NATS_URL`, or the local default.
pub fn default_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(!version_supported("2.9.10"));
        assert!(version_supported("2.10.0"));
        assert!(version_supported("2.15.1"));
        assert!(version_supported("3.0.0-beta"));
        assert!(!version_supported("garbage"));
    }

    #[test]
    fn refusals_are_told_apart_from_other_events() {
        use async_nats::{ClientError, Event, ServerError};
        let r = Refusals::default();
        r.note(&Event::Disconnected);
        r.note(&Event::ClientError(ClientError::Other("timed out".into())));
        r.note(&Event::ClientError(ClientError::Other(
            "authorization violation".into(),
        )));
        r.note(&Event::ServerError(ServerError::AuthorizationViolation));
        r.note(&Event::ServerError(ServerError::Other(
            "Permissions Violation for Subscription to \"arca.agent.b.*\"".into(),
        )));
        assert_eq!(r.connections(), 2);
        assert_eq!(
            r.take_violations(),
            vec!["Permissions Violation for Subscription to \"arca.agent.b.*\"".to_owned()]
        );
        assert!(r.take_violations().is_empty());
        for i in 0..40 {
            r.note(&Event::ServerError(ServerError::Other(format!(
                "Permissions Violation for Publish to \"x{i}\""
            ))));
        }
        let kept = r.take_violations();
        assert_eq!(kept.len(), VIOLATIONS_KEPT);
        assert!(kept.last().unwrap().contains("x39"));
    }

    #[test]
    fn the_first_attempt_is_not_delayed_and_later_ones_are_bounded() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(250));
        assert_eq!(reconnect_delay(3), Duration::from_millis(500));
        assert_eq!(reconnect_delay(100), Duration::from_secs(2));
    }
}
