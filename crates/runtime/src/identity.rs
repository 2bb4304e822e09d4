//! A service's identity: one ed25519 key pair, kept as an NATS nkey seed
//! in a file of mode 0600. The same key authenticates the service to the
//! NATS server (nkey authentication) and signs what it vouches for (the
//! scheduler its job tokens, an agent its snapshot manifests).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why an identity could not be loaded or a signature checked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The seed file could not be read or written.
    #[error("identity file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The seed file is readable by others than its owner.
    #[error(
        "identity file {path} has mode {mode:o}; it holds a private key and must be readable by its owner only (chmod 600 {path})"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The file does not hold a user nkey seed.
    #[error("identity file {path} does not hold an nkey user seed (SU...): {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Cause.
        message: String,
    },
    /// A public key is not an nkey user key.
    #[error("{0:?} is not a public user nkey (U... , 56 characters)")]
    BadPublicKey(String),
    /// A signature does not match.
    #[error("the signature does not match the key {0}")]
    BadSignature(String),
}

/// A loaded identity.
#[derive(Clone)]
pub struct Identity {
    pair: Arc<nkeys::KeyPair>,
    path: PathBuf,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &self.public_key())
            .field("path", &self.path)
            .finish()
    }
}

impl Identity {
    /// Loads the identity in `path`, creating a new key pair there (mode
    /// 0600, in a new file) when the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Identity, IdentityError> {
        if !path.exists() {
            let pair = nkeys::KeyPair::new_user();
            let seed = pair.seed().map_err(|e| IdentityError::Malformed {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            let io = |source| IdentityError::Io {
                path: path.to_owned(),
                source,
            };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            f.write_all(format!("{seed}\n").as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            tracing::info!(path = %path.display(), public_key = %pair.public_key(), "new identity created");
        }
        Self::load(path)
    }

    /// Loads the identity in `path`; refuses a file others may read.
    pub fn load(path: &Path) -> Result<Identity, IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Exposed {
                path: path.to_owned(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let pair =
            nkeys::KeyPair::from_seed(text.trim()).map_err(|e| IdentityError::Malformed {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        if !text.trim().starts_with("SU") {
            return Err(IdentityError::Malformed {
                path: path.to_owned(),
                message: "not a user seed".into(),
            });
        }
        Ok(Identity {
            pair: Arc::new(pair),
            path: path.to_owned(),
        })
    }

    /// The public key (`U...`): what enrollment records and the server's
    /// configuration names.
    pub fn public_key(&self) -> String {
        self.pair.public_key()
    }

    /// The seed, for the NATS connection.
    pub fn seed(&self) -> String {
        self.pair.seed().expect("a loaded identity has a seed")
    }

    /// Signs `data` (ed25519).
    pub fn sign(&self, data: &[u8]) -> Vec<u8> {
        self.pair.sign(data).expect("a loaded identity can sign")
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// True when `key` is a public user nkey.
pub fn valid_public_key(key: &str) -> bool {
    key.starts_with('U') && nkeys::KeyPair::from_public_key(key).is_ok()
}

/// Checks `signature` of `data` against the public user key `key`.
pub fn verify(key: &str, data: &[u8], signature: &[u8]) -> Result<(), IdentityError> {
    if !valid_public_key(key) {
        return Err(IdentityError::BadPublicKey(key.to_owned()));
    }
    let pair = nkeys::KeyPair::from_public_key(key)
        .map_err(|_| IdentityError::BadPublicKey(key.to_owned()))?;
    pair.verify(data, signature)
        .map_err(|_| IdentityError::BadSignature(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_600_and_signatures_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/agent.nk");
        let a = Identity::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = Identity::load_or_create(&path).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert!(valid_public_key(&a.public_key()));
        let sig = a.sign(b"manifest");
        verify(&a.public_key(), b"manifest", &sig).unwrap();
        assert!(verify(&a.public_key(), b"other", &sig).is_err());
        let c = Identity::load_or_create(&dir.path().join("c.nk")).unwrap();
        assert!(verify(&c.public_key(), b"manifest", &sig).is_err());
    }

    #[test]
    fn a_seed_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.nk");
        Identity::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(IdentityError::Exposed { .. })
        ));
    }
}
