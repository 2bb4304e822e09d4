//! Keys and sealing.
//!
//! One 32-byte master key per repository, kept in a key file with mode
//! 0600 that only the media service reads. From it, with BLAKE3's key
//! derivation, come:
//!
//! - the data key: XChaCha20-Poly1305 for every blob at rest (chunks,
//!   snapshots); a sealed blob is `nonce (24) || ciphertext || tag (16)`,
//!   and its associated data binds it to its place (kind, system, id), so a
//!   blob moved elsewhere fails to open;
//! - one chunk-id key per system: chunk ids are BLAKE3 keyed hashes, so
//!   equal data of two systems has unrelated ids and deduplication tells a
//!   system nothing about another. An agent receives its own system's
//!   chunk-id key, which decrypts nothing.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use chacha20poly1305::aead::Aead;
use chacha20poly1305::aead::Payload;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};

use crate::RepoError;

const KEY_FILE_TAG: &str = "arca-repository-key-v1";
const CONTEXT_DATA: &str = "arca repository 2026-11 data key v1";
const CONTEXT_CHUNK_ID: &str = "arca repository 2026-11 chunk id key v1";
const CONTEXT_CHECK: &str = "arca repository 2026-11 key check v1";

/// Bytes a sealed blob adds to its plaintext.
pub const SEAL_OVERHEAD: usize = 24 + 16;

/// The repository's keys.
#[derive(Clone)]
pub struct Keys {
    master: [u8; 32],
    aead: XChaCha20Poly1305,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    /// Keys from a master key.
    pub fn from_master(master: [u8; 32]) -> Self {
        let data = blake3::derive_key(CONTEXT_DATA, &master);
        Keys {
            master,
            aead: XChaCha20Poly1305::new(&data.into()),
        }
    }

    /// Reads the key file, or creates it (mode 0600) when it does not exist.
    /// A key file that others may read is refused.
    pub fn load_or_create(path: &Path) -> Result<Self, RepoError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mode = std::fs::metadata(path)
                    .map_err(|e| RepoError::io(path, e))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(RepoError::Key(format!(
                        "key file {} has mode {:o}; it must be readable by its owner only: chmod 600 {}",
                        path.display(),
                        mode & 0o777,
                        path.display()
                    )));
                }
                let hex = text
                    .trim()
                    .strip_prefix(KEY_FILE_TAG)
                    .map(str::trim)
                    .ok_or_else(|| {
                        RepoError::Key(format!("{} is not an Arca key file", path.display()))
                    })?;
                let bytes = crate::hex32(hex).ok_or_else(|| {
                    RepoError::Key(format!("{} holds a malformed key", path.display()))
                })?;
                Ok(Keys::from_master(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut master = [0u8; 32];
                getrandom::fill(&mut master)
                    .map_err(|e| RepoError::Key(format!("no randomness for a key: {e}")))?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| RepoError::io(dir, e))?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| RepoError::io(path, e))?;
                writeln!(f, "{KEY_FILE_TAG} {}", hex::encode(master))
                    .map_err(|e| RepoError::io(path, e))?;
                f.sync_all().map_err(|e| RepoError::io(path, e))?;
                tracing_free_log(&format!("created repository key file {}", path.display()));
                Ok(Keys::from_master(master))
            }
            Err(e) => Err(RepoError::io(path, e)),
        }
    }

    /// A short value that identifies the key, stored in the repository
    /// config so that a wrong key file is refused at once.
    pub fn check_value(&self) -> String {
        hex::encode(&blake3::derive_key(CONTEXT_CHECK, &self.master)[..16])
    }

    /// The chunk-id key of one system.
    pub fn chunk_id_key(&self, system: &str) -> [u8; 32] {
        let mut material = Vec::with_capacity(32 + system.len());
        material.extend_from_slice(&self.master);
        material.extend_from_slice(system.as_bytes());
        blake3::derive_key(CONTEXT_CHUNK_ID, &material)
    }

    /// Encrypts `plain`, binding it to `aad`.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).expect("the system has randomness");
        let ct = self
            .aead
            .encrypt(&nonce.into(), Payload { msg: plain, aad })
            .expect("XChaCha20-Poly1305 seals any length we store");
        let mut out = Vec::with_capacity(24 + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypts a sealed blob; `None` when it was altered or moved.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < SEAL_OVERHEAD {
            return None;
        }
        let (nonce, ct) = sealed.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().ok()?;
        self.aead
            .decrypt(&nonce.into(), Payload { msg: ct, aad })
            .ok()
    }
}

// The repository crate does not depend on tracing; creation of a key is
// rare enough to say on stderr.
fn tracing_free_log(msg: &str) {
    eprintln!("arca-repo: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_binds_to_associated_data() {
        let k = Keys::from_master([7; 32]);
        let s = k.seal(b"chunk/a", b"secret");
        assert_eq!(k.open(b"chunk/a", &s).unwrap(), b"secret");
        assert!(k.open(b"chunk/b", &s).is_none());
        let mut t = s.clone();
        t[30] ^= 1;
        assert!(k.open(b"chunk/a", &t).is_none());
    }

    #[test]
    fn chunk_id_keys_differ_per_system() {
        let k = Keys::from_master([1; 32]);
        assert_ne!(k.chunk_id_key("a"), k.chunk_id_key("b"));
        assert_eq!(
            k.chunk_id_key("a"),
            Keys::from_master([1; 32]).chunk_id_key("a")
        );
    }

    #[test]
    fn key_file_is_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let k1 = Keys::load_or_create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let k2 = Keys::load_or_create(&path).unwrap();
        assert_eq!(k1.check_value(), k2.check_value());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Keys::load_or_create(&path),
            Err(RepoError::Key(_))
        ));
    }
}
