//! The watcher's memory between passes: per index URL the HTTP validators of the last answer and
//! what was read from it — for an InRelease the digests of the Packages files it lists, for a
//! Packages or primary file its digest and the kernels found in it, for a repomd.xml where its
//! primary file is and that file's checksum. So an unchanged pass sends only the small conditional
//! requests and downloads nothing else, and a changed InRelease whose Packages digest is the same
//! reuses the stored kernel list.
//!
//! The file is JSON, written whole to a temporary file beside it and renamed into place (mode
//! 0644), so a crash leaves either the old or the new state. It is a cache: a missing file is an
//! empty state, and an unreadable one is reported and replaced by an empty state (which costs a
//! full download, never a wrong answer).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fetch::Validators;

/// The state file's format version; another version is read as an empty state.
pub const STATE_VERSION: u32 = 1;

/// A file's size and SHA-256 (lower-case hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Bytes.
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// One binary package of interest found in an index: its name's release and its version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FoundPackage {
    /// The kernel release (`uname -r`) the package is for.
    pub release: String,
    /// The package's version (deb `Version`; rpm `[epoch:]version-release`).
    pub version: String,
}

/// What is remembered about one index URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Stored {
    /// An apt InRelease: its validity and the Packages files it lists (path -> digest).
    InRelease {
        /// `Valid-Until`, as written, when present.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        valid_until: Option<String>,
        /// `<component>/binary-<arch>/Packages*` entries of its SHA256 list.
        packages: BTreeMap<String, FileDigest>,
    },
    /// An apt Packages file and the kernel packages in it.
    Packages {
        /// Its digest, as InRelease listed it when it was read.
        digest: FileDigest,
        /// `linux-image-<R>` packages.
        images: BTreeSet<FoundPackage>,
        /// `linux-headers-<R>` packages.
        headers: BTreeSet<FoundPackage>,
    },
    /// An rpm-md repomd.xml: where the primary metadata is and its checksum.
    Repomd {
        /// The primary file's `location href`.
        primary_href: String,
        /// `<type>:<hex>` of the primary file as stored.
        primary_checksum: String,
        /// Its size as stored, when repomd.xml gives it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        primary_size: Option<u64>,
    },
    /// rpm-md primary metadata and the kernel packages in it.
    Primary {
        /// `<type>:<hex>` it had when read.
        checksum: String,
        /// Kernel packages (`kernel`, `kernel-core`, `kernel-<variant>-core`, `kernel<stream>`).
        kernels: BTreeSet<FoundPackage>,
        /// Their `-devel` packages.
        devel: BTreeSet<FoundPackage>,
        /// Kernels named by AL2023 `kernel-livepatch-*` packages.
        livepatch: BTreeSet<FoundPackage>,
    },
}

/// One index URL's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Validators of the last 200 answer.
    #[serde(default, skip_serializing_if = "Validators::is_empty")]
    pub validators: Validators,
    /// What was read from it.
    pub stored: Stored,
}

/// The whole state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// By URL.
    pub indexes: BTreeMap<String, IndexEntry>,
}

impl Default for WatchState {
    fn default() -> Self {
        Self {
            version: STATE_VERSION,
            indexes: BTreeMap::new(),
        }
    }
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Filesystem trouble.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not a state file of this version.
    #[error("{path}: not a repository watcher state file (version {STATE_VERSION}): {rule}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        rule: String,
    },
}

impl WatchState {
    /// Reads the state at `path`; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(StateError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let state: Self = serde_json::from_str(&text).map_err(|e| StateError::Invalid {
            path: path.to_owned(),
            rule: e.to_string(),
        })?;
        if state.version != STATE_VERSION {
            return Err(StateError::Invalid {
                path: path.to_owned(),
                rule: format!("version {} is not {STATE_VERSION}", state.version),
            });
        }
        Ok(state)
    }

    /// Writes the state atomically: a temporary file beside `path` (mode 0644), synced, then
    /// renamed over it.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |p: &Path| {
            let p = p.to_owned();
            move |source| StateError::Io { path: p, source }
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let mut temp_name = path.as_os_str().to_owned();
        temp_name.push(format!(".tmp.{}", std::process::id()));
        let temp = PathBuf::from(temp_name);
        let text = serde_json::to_string_pretty(self).map_err(|e| StateError::Invalid {
            path: path.to_owned(),
            rule: e.to_string(),
        })?;
        let result = (|| {
            let mut file = fs::File::create(&temp)?;
            // The state holds no secret: readable by all, whatever the umask left.
            file.set_permissions(fs::Permissions::from_mode(0o644))?;
            file.write_all(text.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()
        })();
        if let Err(source) = result {
            let _ = fs::remove_file(&temp);
            return Err(StateError::Io { path: temp, source });
        }
        fs::rename(&temp, path).map_err(io(path))
    }

    /// Keeps only the entries of `used` URLs (what this pass consulted), so the file does not grow
    /// with every mirror or suite ever configured.
    pub fn retain(&mut self, used: &BTreeSet<String>) {
        self.indexes.retain(|url, _| used.contains(url));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_atomically_readable_by_all_and_loads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        assert_eq!(WatchState::load(&path).unwrap(), WatchState::default());
        let mut state = WatchState::default();
        state.indexes.insert(
            "http://m/dists/bookworm/InRelease".to_owned(),
            IndexEntry {
                validators: Validators {
                    etag: Some("\"abc\"".to_owned()),
                    last_modified: None,
                },
                stored: Stored::InRelease {
                    valid_until: None,
                    packages: BTreeMap::from([(
                        "main/binary-amd64/Packages.xz".to_owned(),
                        FileDigest {
                            size: 3,
                            sha256: "ab".to_owned(),
                        },
                    )]),
                },
            },
        );
        state.save(&path).unwrap();
        assert_eq!(WatchState::load(&path).unwrap(), state);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["state.json"]);
        state.retain(&BTreeSet::new());
        assert!(state.indexes.is_empty());
    }

    #[test]
    fn a_foreign_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, "{\"version\": 9, \"indexes\": {}}").unwrap();
        let error = WatchState::load(&path).unwrap_err().to_string();
        assert!(
            error.contains("state.json") && error.contains("version 9"),
            "{error}"
        );
        fs::write(&path, "not json").unwrap();
        assert!(WatchState::load(&path).is_err());
    }
}
