//! Keys: minisign Ed25519 key pairs, identified by minisign's 8-byte key id, and the keyring of
//! trusted public keys a verifier holds. A keyring rather than a key, so that a key can be rotated:
//! while the old and the new key are both trusted, artifacts of either verify; every signature
//! names the key that made it.
//!
//! Secret keys (feature `sign`) are read from minisign's file format, as written by the minisign
//! CLI (`minisign -G`, optionally `-W` for no password) or the `minisign` crate, and are refused
//! when the file is readable by group or others. Keys this project generates are created 0600.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use thiserror::Error;

/// minisign's signature algorithm tag for Ed25519 (`Ed`), first in keys and signatures.
const ALG_ED25519: [u8; 2] = *b"Ed";
/// minisign's tag for signatures over the BLAKE2b-512 hash of the file (`ED`).
pub(crate) const ALG_PREHASHED: [u8; 2] = *b"ED";

/// Why a key could not be used.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: not a minisign key: {reason}")]
    Format { origin: String, reason: String },
    #[error(
        "{path}: a secret key must not be readable by group or others (mode {mode:04o}); \
         run `chmod 600 {path}`"
    )]
    Exposed { path: String, mode: u32 },
    #[error("{path}: the key is encrypted and no password was given")]
    Encrypted { path: String },
    #[error("key id {id} appears twice in the keyring with different keys ({first} and {second})")]
    Conflict {
        id: KeyId,
        first: String,
        second: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// minisign's key id: 8 bytes, shown as minisign shows it (16 upper-case hex digits of the
/// little-endian number).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 8]);

impl KeyId {
    /// The id from its 8 bytes as they appear in keys and signatures.
    pub fn from_bytes(bytes: [u8; 8]) -> Self {
        Self(bytes)
    }

    /// The 8 bytes as they appear in keys and signatures.
    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }

    /// Parses the displayed form (16 hex digits, either case).
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let number = u64::from_str_radix(text, 16).ok()?;
        Some(Self(number.to_le_bytes()))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A minisign (Ed25519) public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    id: KeyId,
    ed25519: [u8; 32],
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

impl PublicKey {
    /// Parses a public key: a `.pub` file's text (comment line and key line) or the bare base64
    /// key line. `origin` names where it came from in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, KeyError> {
        let format = |reason: String| KeyError::Format {
            origin: origin.to_owned(),
            reason,
        };
        let trimmed = text.trim();
        let line = match trimmed.lines().count() {
            0 => return Err(format("empty".to_owned())),
            1 => trimmed,
            _ => {
                let mut lines = trimmed.lines();
                let comment = lines.next().unwrap_or_default();
                if !comment.starts_with("untrusted comment:") {
                    return Err(format(
                        "a key file's first line must be 'untrusted comment: ...'".to_owned(),
                    ));
                }
                lines.next().unwrap_or_default()
            }
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(line.trim())
            .map_err(|error| format(format!("key line is not base64 ({error})")))?;
        if bytes.len() != 42 || bytes[..2] != ALG_ED25519 {
            return Err(format(format!(
                "expected 42 bytes starting with 'Ed' (an Ed25519 minisign key), found {} bytes",
                bytes.len()
            )));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[2..10]);
        let mut ed25519 = [0u8; 32];
        ed25519.copy_from_slice(&bytes[10..42]);
        Ok(Self {
            id: KeyId(id),
            ed25519,
        })
    }

    /// Reads a `.pub` file.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The key id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The raw Ed25519 public key.
    pub fn ed25519(&self) -> &[u8; 32] {
        &self.ed25519
    }

    /// The key line (base64), as in the second line of a `.pub` file.
    pub fn to_base64(&self) -> String {
        let mut bytes = Vec::with_capacity(42);
        bytes.extend_from_slice(&ALG_ED25519);
        bytes.extend_from_slice(&self.id.0);
        bytes.extend_from_slice(&self.ed25519);
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// A `.pub` file's text, as `minisign -G` writes it.
    pub fn to_file_text(&self) -> String {
        format!(
            "untrusted comment: minisign public key {}\n{}\n",
            self.id,
            self.to_base64()
        )
    }

    pub(crate) fn minisign_verifier(&self) -> minisign_verify::PublicKey {
        minisign_verify::PublicKey::from_base64(&self.to_base64())
            .expect("a parsed Ed25519 key re-encodes to a key minisign-verify reads")
    }

    /// Checks an Ed25519 signature over `message`.
    pub(crate) fn verify_ed25519(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = ed25519_compact::Signature::from_slice(signature) else {
            return false;
        };
        ed25519_compact::PublicKey::new(self.ed25519)
            .verify(message, &signature)
            .is_ok()
    }
}

/// The trusted public keys, by key id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keyring {
    keys: BTreeMap<KeyId, PublicKey>,
    origins: BTreeMap<KeyId, String>,
}

impl Keyring {
    /// An empty keyring: nothing verifies against it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key. The same key twice is fine; two different keys under one id are refused, since
    /// a signature could then not say which one made it.
    pub fn insert(&mut self, key: PublicKey, origin: &str) -> Result<(), KeyError> {
        if let Some(existing) = self.keys.get(&key.id) {
            if existing == &key {
                return Ok(());
            }
            return Err(KeyError::Conflict {
                id: key.id,
                first: self.origins[&key.id].clone(),
                second: origin.to_owned(),
            });
        }
        self.origins.insert(key.id, origin.to_owned());
        self.keys.insert(key.id, key);
        Ok(())
    }

    /// Adds the key of a `.pub` file.
    pub fn add_file(&mut self, path: &Path) -> Result<KeyId, KeyError> {
        let key = PublicKey::from_file(path)?;
        let id = key.id;
        self.insert(key, &path.display().to_string())?;
        Ok(id)
    }

    /// Adds every `*.pub` file of a directory (a mounted Secret, a directory baked into an image).
    /// Other entries are ignored, so Kubernetes' `..data` links do not count; a `.pub` file that is
    /// not a key is an error, not skipped.
    pub fn add_dir(&mut self, dir: &Path) -> Result<Vec<KeyId>, KeyError> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_error(dir))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| {
                path.extension().is_some_and(|ext| ext == "pub")
                    && !path
                        .file_name()
                        .is_some_and(|name| name.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        paths.iter().map(|path| self.add_file(path)).collect()
    }

    /// The key with this id, when trusted.
    pub fn get(&self, id: &KeyId) -> Option<&PublicKey> {
        self.keys.get(id)
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted key ids, sorted.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.keys().copied().collect()
    }

    /// The trusted key ids as one human-readable list.
    pub fn describe(&self) -> String {
        if self.keys.is_empty() {
            return "no trusted key".to_owned();
        }
        self.keys
            .keys()
            .map(KeyId::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(feature = "sign")]
pub use secret::SecretKey;

#[cfg(feature = "sign")]
mod secret {
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use std::path::Path;

    use base64::Engine as _;

    use super::{KeyError, KeyId, PublicKey, io_error};

    /// Where the KDF algorithm sits in a secret key's bytes (after the signature algorithm);
    /// `[0, 0]` means stored unencrypted.
    const KDF_ALG: std::ops::Range<usize> = 2..4;
    /// Where the key id and the 64-byte Ed25519 secret key (seed and public key) sit in a
    /// decrypted secret key's bytes.
    const KEY_ID: std::ops::Range<usize> = 54..62;
    const ED25519_SECRET: std::ops::Range<usize> = 62..126;

    /// A minisign secret key, decrypted, with its public half.
    pub struct SecretKey {
        minisign: minisign::SecretKey,
        minisign_public: minisign::PublicKey,
        ed25519: ed25519_compact::SecretKey,
        public: PublicKey,
    }

    impl std::fmt::Debug for SecretKey {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SecretKey({})", self.public.id())
        }
    }

    impl SecretKey {
        /// Loads a minisign secret key file, refusing one readable by group or others. An
        /// unencrypted key (`minisign -G -W`) needs no password; an encrypted one needs it and is
        /// never prompted for: the service and the builder run unattended.
        pub fn load(path: &Path, password: Option<String>) -> Result<Self, KeyError> {
            let mode = std::fs::metadata(path)
                .map_err(io_error(path))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(KeyError::Exposed {
                    path: path.display().to_string(),
                    mode: mode & 0o7777,
                });
            }
            let text = std::fs::read_to_string(path).map_err(io_error(path))?;
            Self::parse(&text, password, &path.display().to_string())
        }

        /// Parses a secret key file's text. `origin` names it in errors.
        pub fn parse(text: &str, password: Option<String>, origin: &str) -> Result<Self, KeyError> {
            let format = |reason: String| KeyError::Format {
                origin: origin.to_owned(),
                reason,
            };
            let encoded = text
                .lines()
                .nth(1)
                .ok_or_else(|| format("no key line after the comment".to_owned()))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|error| format(format!("not base64: {error}")))?;
            let unencrypted = bytes.get(KDF_ALG) == Some(&[0, 0][..]);
            // The minisign CLI leaves the checksum of unencrypted keys zeroed, which the crate's
            // box loader rejects; such keys are read from their bytes, and the key pair is checked
            // below by signing and verifying instead.
            let minisign = match (unencrypted, password) {
                (true, _) => minisign::SecretKey::from_bytes(&bytes)
                    .map_err(|error| format(error.to_string()))?,
                (false, Some(password)) => {
                    let sk_box = minisign::SecretKeyBox::from_string(text)
                        .map_err(|error| format(error.to_string()))?;
                    minisign::SecretKey::from_box(sk_box, Some(password))
                        .map_err(|error| format(error.to_string()))?
                }
                (false, None) => {
                    return Err(KeyError::Encrypted {
                        path: origin.to_owned(),
                    });
                }
            };
            let decrypted = minisign.to_bytes();
            let (Some(id), Some(secret)) = (decrypted.get(KEY_ID), decrypted.get(ED25519_SECRET))
            else {
                return Err(format("secret key is too short".to_owned()));
            };
            let ed25519 = ed25519_compact::SecretKey::from_slice(secret)
                .map_err(|error| format(format!("not an Ed25519 secret key ({error})")))?;
            let mut id_bytes = [0u8; 8];
            id_bytes.copy_from_slice(id);
            let public = PublicKey {
                id: KeyId(id_bytes),
                ed25519: *ed25519.public_key(),
            };
            let probe = ed25519.sign(b"key check", None);
            if !public.verify_ed25519(b"key check", probe.as_ref()) {
                return Err(format(
                    "the secret key does not match its own public key (wrong password or damaged key)"
                        .to_owned(),
                ));
            }
            let minisign_public = minisign::PublicKey::from_base64(&public.to_base64())
                .map_err(|error| format(error.to_string()))?;
            Ok(Self {
                minisign,
                minisign_public,
                ed25519,
                public,
            })
        }

        /// Makes a new unencrypted key pair: the secret key at `secret_path`, created 0600 and
        /// never over an existing file, and its public key beside it as `<secret_path>.pub`
        /// unless `public_path` says otherwise.
        pub fn generate(secret_path: &Path, public_path: &Path) -> Result<Self, KeyError> {
            let pair = minisign::KeyPair::generate_unencrypted_keypair().map_err(|error| {
                KeyError::Format {
                    origin: secret_path.display().to_string(),
                    reason: error.to_string(),
                }
            })?;
            let text = pair
                .sk
                .to_box(None)
                .map_err(|error| KeyError::Format {
                    origin: secret_path.display().to_string(),
                    reason: error.to_string(),
                })?
                .into_string();
            let key = Self::parse(&text, None, &secret_path.display().to_string())?;
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(secret_path)
                .map_err(io_error(secret_path))?;
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_error(secret_path))?;
            let mut public = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(public_path)
                .map_err(io_error(public_path))?;
            public
                .write_all(key.public.to_file_text().as_bytes())
                .and_then(|()| public.sync_all())
                .map_err(io_error(public_path))?;
            Ok(key)
        }

        /// The public half.
        pub fn public(&self) -> &PublicKey {
            &self.public
        }

        /// The key id.
        pub fn id(&self) -> KeyId {
            self.public.id()
        }

        pub(crate) fn minisign(&self) -> (&minisign::SecretKey, &minisign::PublicKey) {
            (&self.minisign, &self.minisign_public)
        }

        /// An Ed25519 signature over `message` (deterministic, as Ed25519 is).
        pub(crate) fn sign_ed25519(&self, message: &[u8]) -> [u8; 64] {
            *self.ed25519.sign(message, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_show_as_minisign_shows_them() {
        let id = KeyId::from_bytes([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08]);
        assert_eq!(id.to_string(), "0807060504030201");
        assert_eq!(KeyId::parse("0807060504030201"), Some(id));
        assert_eq!(KeyId::parse("080706050403020"), None);
        assert_eq!(KeyId::parse("080706050403020G"), None);
    }

    #[test]
    fn public_keys_parse_from_files_and_lines_and_round_trip() {
        let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let file_text = pair.pk.to_box().unwrap().into_string();
        let from_file = PublicKey::parse(&file_text, "test").unwrap();
        let from_line = PublicKey::parse(&pair.pk.to_base64(), "test").unwrap();
        assert_eq!(from_file, from_line);
        assert_eq!(from_file.to_base64(), pair.pk.to_base64());
        assert_eq!(
            PublicKey::parse(&from_file.to_file_text(), "test").unwrap(),
            from_file
        );
        assert_eq!(from_file.id().as_bytes()[..], pair.pk.keynum()[..]);
        for bad in ["", "not base64!", "untrusted comment: x\nAAAA", "RWQ="] {
            let error = PublicKey::parse(bad, "config").unwrap_err();
            assert!(
                error.to_string().starts_with("config: not a minisign key"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_keyring_refuses_two_keys_under_one_id_and_reads_only_pub_files() {
        let dir = tempfile::tempdir().unwrap();
        let one = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let two = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        std::fs::write(
            dir.path().join("a.pub"),
            one.pk.to_box().unwrap().into_string(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.pub"),
            two.pk.to_box().unwrap().into_string(),
        )
        .unwrap();
        std::fs::write(dir.path().join("README"), "not a key").unwrap();
        std::fs::write(dir.path().join(".hidden.pub"), "not a key").unwrap();
        let mut ring = Keyring::new();
        assert_eq!(ring.add_dir(dir.path()).unwrap().len(), 2);
        assert_eq!(ring.ids().len(), 2);
        // The same key again is not a conflict.
        ring.add_file(&dir.path().join("a.pub")).unwrap();
        let mut impostor = PublicKey::parse(&two.pk.to_base64(), "x").unwrap();
        impostor.id = PublicKey::parse(&one.pk.to_base64(), "x").unwrap().id;
        assert!(matches!(
            ring.insert(impostor, "impostor"),
            Err(KeyError::Conflict { .. })
        ));
        std::fs::write(dir.path().join("c.pub"), "garbage").unwrap();
        assert!(Keyring::new().add_dir(dir.path()).is_err());
    }

    #[cfg(feature = "sign")]
    #[test]
    fn secret_keys_are_made_0600_and_refused_when_exposed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("signing.key");
        let public = dir.path().join("signing.pub");
        let key = SecretKey::generate(&secret, &public).unwrap();
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(PublicKey::from_file(&public).unwrap(), *key.public());
        assert!(SecretKey::generate(&secret, &dir.path().join("other.pub")).is_err());
        let loaded = SecretKey::load(&secret, None).unwrap();
        assert_eq!(loaded.public(), key.public());
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
        let error = SecretKey::load(&secret, None).unwrap_err();
        assert!(
            matches!(error, KeyError::Exposed { mode: 0o640, .. }),
            "{error}"
        );
    }

    #[cfg(feature = "sign")]
    #[test]
    fn encrypted_keys_need_their_password() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pair = minisign::KeyPair::generate_encrypted_keypair(Some("pw".to_owned())).unwrap();
        let path = dir.path().join("enc.key");
        std::fs::write(&path, pair.sk.to_box(None).unwrap().into_string()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            SecretKey::load(&path, None),
            Err(KeyError::Encrypted { .. })
        ));
        assert!(SecretKey::load(&path, Some("wrong".to_owned())).is_err());
        let key = SecretKey::load(&path, Some("pw".to_owned())).unwrap();
        assert_eq!(key.public().to_base64(), pair.pk.to_base64());
    }
}
