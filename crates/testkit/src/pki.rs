//! Certificates for tests, made by `ops/gen-pki` (openssl): one authority
//! and one client certificate for every test of a build (kept in its build
//! folder, `target/<profile>/test-pki`), a server certificate per server
//! (for the addresses it is reached at).

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
    /// The authority of this build's tests: made once in the build folder
    /// (`target/<profile>/test-pki`) and kept there for later runs, so that
    /// no test run leaves an authority's key behind in the temporary folder.
    pub fn shared() -> &'static Pki {
        SHARED.get_or_init(|| {
            Pki::kept_in(&crate::process::build_dir().join("test-pki"))
                .expect("ops/gen-pki makes a test authority")
        })
    }

    /// The authority in `home`, made there first when it is missing: in a
    /// folder beside it, renamed into place whole, so that test processes
    /// starting together never see half of one.
    pub fn kept_in(home: &Path) -> anyhow::Result<Pki> {
        let done = |dir: &Path| dir.join("client.key").is_file();
        if !done(home) {
            let parent = home
                .parent()
                .context("the authority's folder has a parent")?;
            let fresh = tempfile::Builder::new()
                .prefix(".test-pki-")
                .tempdir_in(parent)?;
            gen_pki(fresh.path(), "", &["client"])?;
            let fresh = fresh.keep();
            if let Err(e) = std::fs::rename(&fresh, home) {
                let _ = std::fs::remove_dir_all(&fresh);
                // Another test process put its own in place first.
                if !done(home) {
                    return Err(e).with_context(|| format!("cannot keep {}", home.display()));
                }
            }
        }
        Ok(Pki {
            dir: home.to_owned(),
        })
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
