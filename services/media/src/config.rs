//! The media service's configuration file, and the key-file operations
//! its binary offers (sealing the key by a passphrase, checking it opens).

use std::path::PathBuf;

use serde::Deserialize;

use crate::limits;

/// Configuration of a media service.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Id in subjects (`arca.media.<id>...`).
    #[serde(default = "default_id")]
    pub id: String,
    /// Folder of the repository; created when missing.
    pub repository: PathBuf,
    /// The repository's key file (mode 0600), created with the repository.
    /// Default: `key` inside the repository folder; keep it elsewhere (and
    /// backed up) to keep the key apart from the data.
    pub key_file: Option<PathBuf>,
    /// A file (mode 0600) holding the passphrase that seals the key file;
    /// `ARCA_KEY_PASSPHRASE` in the environment also gives it. With a
    /// passphrase, a new key file is created sealed.
    #[serde(default)]
    pub key_passphrase_file: Option<PathBuf>,
    /// Target size of a pack, MiB.
    #[serde(default = "default_pack_mib")]
    pub pack_size_mib: u64,
    /// Public key of the scheduler whose job tokens open sessions.
    pub scheduler_key: String,
    /// The service's identity (an nkey seed, mode 0600, created when
    /// missing), to authenticate to NATS.
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
    /// TLS settings of the NATS connection.
    #[serde(default)]
    pub tls: Option<arca_runtime::nats::TlsFiles>,
    /// A backup session no request used for this long is closed (its
    /// job ended without saying so, or its agent stopped), seconds.
    #[serde(default = "default_session_idle_secs")]
    pub session_idle_secs: u64,
    /// Most chunks one backup session may store or ask about (media keeps
    /// their ids while the backup runs, for a prune running meanwhile).
    #[serde(default = "default_session_max_chunks")]
    pub session_max_chunks: usize,
}

fn default_session_idle_secs() -> u64 {
    limits::DEFAULT_SESSION_IDLE_SECS
}

fn default_session_max_chunks() -> usize {
    limits::DEFAULT_SESSION_MAX_CHUNKS
}

impl Config {
    /// The key file: `key-file`, or `key` inside the repository folder.
    pub fn key_file_path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.repository.join("key"))
    }

    /// The passphrase of the key file, if one is configured: the content
    /// of `key-passphrase-file` (without its final line break), else
    /// `ARCA_KEY_PASSPHRASE`.
    pub fn passphrase(&self) -> anyhow::Result<Option<Vec<u8>>> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(path) = &self.key_passphrase_file {
            let mode = std::fs::metadata(path)
                .map_err(|e| anyhow::anyhow!("key-passphrase-file {}: {e}", path.display()))?
                .permissions()
                .mode();
            anyhow::ensure!(
                mode & 0o077 == 0,
                "key-passphrase-file {} has mode {:o}; it must be readable by its owner only: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            );
            let mut p = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("key-passphrase-file {}: {e}", path.display()))?;
            while p.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                p.pop();
            }
            anyhow::ensure!(
                !p.is_empty(),
                "key-passphrase-file {} is empty",
                path.display()
            );
            return Ok(Some(p));
        }
        Ok(std::env::var_os("ARCA_KEY_PASSPHRASE")
            .filter(|p| !p.is_empty())
            .map(|p| p.into_encoded_bytes()))
    }

    /// Credentials of the NATS connection.
    pub fn credentials(&self) -> anyhow::Result<arca_runtime::nats::Credentials> {
        arca_runtime::nats::Credentials::from_files(self.identity_file.as_deref(), self.tls.clone())
    }
}

fn default_pack_mib() -> u64 {
    arca_repo::DEFAULT_PACK_SIZE >> 20
}

fn default_id() -> String {
    arca_schemas::names::DEFAULT_MEDIA.to_owned()
}

/// Rewrites the key file sealed by `passphrase`, or without one; the
/// key file is opened with the configured passphrase. The key itself,
/// and so the repository, is unchanged.
pub fn reseal_key_file(config: &Config, passphrase: Option<&[u8]>) -> anyhow::Result<()> {
    let path = config.key_file_path();
    anyhow::ensure!(
        path.exists(),
        "key file {} does not exist (the media service creates it on its first start)",
        path.display()
    );
    let current = config.passphrase()?;
    let keys = arca_repo::Keys::load_or_create(&path, current.as_deref())?;
    keys.write_key_file(&path, passphrase, true)?;
    Ok(())
}

/// Opens the key file, if it exists, with the configured passphrase.
pub fn check_key_file(config: &Config) -> anyhow::Result<()> {
    let path = config.key_file_path();
    if path.exists() {
        let passphrase = config.passphrase()?;
        arca_repo::Keys::load_or_create(&path, passphrase.as_deref())?;
    }
    Ok(())
}
