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
//!
//! The key file may be sealed by a passphrase: the master key is then
//! kept encrypted with a key derived from the passphrase by Argon2id, and
//! the media service needs the passphrase to start.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use chacha20poly1305::aead::Aead;
use chacha20poly1305::aead::Payload;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};

use crate::RepoError;

const KEY_FILE_TAG: &str = "arca-repository-key-v1";
const SEALED_KEY_FILE_TAG: &str = "arca-repository-key-sealed-v1";

/// Argon2id cost of a passphrase: memory in KiB, passes, lanes (the
/// second recommendation of RFC 9106: 64 MiB, 3 passes).
const ARGON2_MEMORY_KIB: u32 = 64 * 1024;
const ARGON2_PASSES: u32 = 3;
const ARGON2_LANES: u32 = 1;
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
    /// A key file that others may read is refused. A sealed key file needs
    /// its `passphrase`; a new key file is sealed when one is given.
    pub fn load_or_create(path: &Path, passphrase: Option<&[u8]>) -> Result<Self, RepoError> {
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
                Self::parse(path, &text, passphrase)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut master = [0u8; 32];
                getrandom::fill(&mut master)
                    .map_err(|e| RepoError::Key(format!("no randomness for a key: {e}")))?;
                let keys = Keys::from_master(master);
                keys.write_key_file(path, passphrase, false)?;
                tracing_free_log(&format!(
                    "created repository key file {}{}",
                    path.display(),
                    if passphrase.is_some() {
                        ", sealed by the passphrase"
                    } else {
                        ""
                    }
                ));
                Ok(keys)
            }
            Err(e) => Err(RepoError::io(path, e)),
        }
    }

    fn parse(path: &Path, text: &str, passphrase: Option<&[u8]>) -> Result<Self, RepoError> {
        let malformed = || RepoError::Key(format!("{} holds a malformed key", path.display()));
        let text = text.trim();
        if let Some(rest) = text.strip_prefix(SEALED_KEY_FILE_TAG) {
            let Some(passphrase) = passphrase else {
                return Err(RepoError::Key(format!(
                    "key file {} is sealed by a passphrase; give it to the media service \
                     (key-passphrase-file in its configuration, or ARCA_KEY_PASSPHRASE)",
                    path.display()
                )));
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let [salt, sealed] = fields[..] else {
                return Err(malformed());
            };
            let salt = hex::decode(salt).map_err(|_| malformed())?;
            let sealed = hex::decode(sealed).map_err(|_| malformed())?;
            let wrap = XChaCha20Poly1305::new(&passphrase_key(passphrase, &salt)?.into());
            if sealed.len() != SEAL_OVERHEAD + 32 {
                return Err(malformed());
            }
            let (nonce, ct) = sealed.split_at(24);
            let nonce: [u8; 24] = nonce.try_into().map_err(|_| malformed())?;
            let master = wrap
                .decrypt(
                    &nonce.into(),
                    Payload {
                        msg: ct,
                        aad: SEALED_KEY_FILE_TAG.as_bytes(),
                    },
                )
                .map_err(|_| {
                    RepoError::Key(format!(
                        "the passphrase does not open key file {}",
                        path.display()
                    ))
                })?;
            let master: [u8; 32] = master.try_into().map_err(|_| malformed())?;
            return Ok(Keys::from_master(master));
        }
        let hex = text
            .strip_prefix(KEY_FILE_TAG)
            .map(str::trim)
            .ok_or_else(|| RepoError::Key(format!("{} is not an Arca key file", path.display())))?;
        let bytes = crate::hex32(hex).ok_or_else(malformed)?;
        Ok(Keys::from_master(bytes))
    }

    /// Writes the key file at `path` (mode 0600, synced), sealed by
    /// `passphrase` when one is given; with `replace`, in place of the
    /// one there, atomically.
    pub fn write_key_file(
        &self,
        path: &Path,
        passphrase: Option<&[u8]>,
        replace: bool,
    ) -> Result<(), RepoError> {
        let line = match passphrase {
            None => format!("{KEY_FILE_TAG} {}\n", hex::encode(self.master)),
            Some(p) => {
                let mut salt = [0u8; 16];
                let mut nonce = [0u8; 24];
                getrandom::fill(&mut salt)
                    .and_then(|_| getrandom::fill(&mut nonce))
                    .map_err(|e| RepoError::Key(format!("no randomness for a key: {e}")))?;
                let wrap = XChaCha20Poly1305::new(&passphrase_key(p, &salt)?.into());
                let ct = wrap
                    .encrypt(
                        &nonce.into(),
                        Payload {
                            msg: &self.master,
                            aad: SEALED_KEY_FILE_TAG.as_bytes(),
                        },
                    )
                    .expect("XChaCha20-Poly1305 seals 32 bytes");
                let mut sealed = nonce.to_vec();
                sealed.extend_from_slice(&ct);
                format!(
                    "{SEALED_KEY_FILE_TAG} {} {}\n",
                    hex::encode(salt),
                    hex::encode(sealed)
                )
            }
        };
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).map_err(|e| RepoError::io(dir, e))?;
        }
        let target = if replace {
            let mut name = path.as_os_str().to_owned();
            name.push(".new");
            std::path::PathBuf::from(name)
        } else {
            path.to_owned()
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)
            .map_err(|e| RepoError::io(&target, e))?;
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| RepoError::io(&target, e))?;
        if replace {
            std::fs::rename(&target, path).map_err(|e| RepoError::io(path, e))?;
        }
        if let Some(dir) = dir {
            crate::fsutil::sync_dir(dir)?;
        }
        Ok(())
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

/// Whether the key file at `path` is sealed by a passphrase; `None` when
/// it cannot be read.
pub fn key_file_sealed(path: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.trim_start().starts_with(SEALED_KEY_FILE_TAG))
}

/// The key that seals the master key, from a passphrase (Argon2id).
fn passphrase_key(passphrase: &[u8], salt: &[u8]) -> Result<[u8; 32], RepoError> {
    let params = argon2::Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, ARGON2_LANES, Some(32))
        .map_err(|e| RepoError::Key(format!("Argon2 parameters: {e}")))?;
    let mut key = [0u8; 32];
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(passphrase, salt, &mut key)
        .map_err(|e| RepoError::Key(format!("cannot derive a key from the passphrase: {e}")))?;
    Ok(key)
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
        let k1 = Keys::load_or_create(&path, None).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let k2 = Keys::load_or_create(&path, None).unwrap();
        assert_eq!(k1.check_value(), k2.check_value());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Keys::load_or_create(&path, None),
            Err(RepoError::Key(_))
        ));
    }

    #[test]
    fn a_sealed_key_file_opens_only_with_its_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let k1 = Keys::load_or_create(&path, Some(b"correct horse")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(SEALED_KEY_FILE_TAG), "{text}");
        assert!(
            !text.contains(&hex::encode(k1.master)),
            "the master key is in the clear"
        );
        let k2 = Keys::load_or_create(&path, Some(b"correct horse")).unwrap();
        assert_eq!(k1.check_value(), k2.check_value());
        let wrong = Keys::load_or_create(&path, Some(b"wrong horse")).unwrap_err();
        assert!(wrong.to_string().contains("does not open"), "{wrong}");
        let none = Keys::load_or_create(&path, None).unwrap_err();
        assert!(none.to_string().contains("ARCA_KEY_PASSPHRASE"), "{none}");

        // Resealed with another passphrase, and unsealed: the same key.
        k1.write_key_file(&path, Some(b"battery staple"), true)
            .unwrap();
        assert!(Keys::load_or_create(&path, Some(b"correct horse")).is_err());
        let k3 = Keys::load_or_create(&path, Some(b"battery staple")).unwrap();
        assert_eq!(k1.check_value(), k3.check_value());
        k3.write_key_file(&path, None, true).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let k4 = Keys::load_or_create(&path, None).unwrap();
        assert_eq!(k1.check_value(), k4.check_value());
    }
}
