//! Certificates for tests, made by `ops/gen-pki` (openssl): one authority
//! and one client certificate per test process, a server certificate per
//! server (for the addresses it is reached at).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, bail};

/// A certificate authority and a client certificate it signed.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
}

static SHARED: OnceLock<Pki> = OnceLock::new();

fn gen_pki(dir: &Path, sans: &str, clients: &[&str]) -> anyhow::Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/gen-pki");
    let out = Command::new(&script)
        .arg(dir)
        .args(clients)
        .env("ARCA_TLS_SANS", sans)
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Pki {
    /// The authority of this test process (made on first use, kept until
    /// the process ends).
    pub fn shared() -> &'static Pki {
        SHARED.get_or_init(|| Pki::new().expect("ops/gen-pki makes a test authority"))
    }

    /// A new authority with a client certificate, in a folder of its own.
    pub fn new() -> anyhow::Result<Pki> {
        let dir = tempfile::Builder::new()
            .prefix("arca-pki-")
            .tempdir()?
            .keep();
        gen_pki(&dir, "", &["client"])?;
        Ok(Pki { dir })
    }

    /// The authority's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The client certificate.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    /// Its key (mode 0600).
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }

    /// Makes a server certificate for `sans` (addresses and names besides
    /// localhost, 127.0.0.1 and ::1) in `dir`: (`cert`, `key`).
    pub fn server_cert(&self, dir: &Path, sans: &[&str]) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        for f in ["ca.pem", "ca.key"] {
            std::fs::copy(self.dir.join(f), dir.join(f))?;
        }
        gen_pki(dir, &sans.join(","), &[])?;
        Ok((dir.join("server.pem"), dir.join("server.key")))
    }
}

/// How a test client authenticates to a secured server.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// nkey seed.
    pub seed: String,
    /// Authority to trust.
    pub ca: PathBuf,
    /// Client certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

impl ClientAuth {
    /// Connect options carrying these credentials.
    pub fn options(&self) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::with_nkey(self.seed.clone())
            .require_tls(true)
            .add_root_certificates(self.ca.clone())
            .add_client_certificate(self.cert.clone(), self.key.clone())
    }
}
