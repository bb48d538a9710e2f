//! The format-independent half of reading: the safety policy every entry passes (path rules, entry
//! types, size, count and expansion limits, duplicates, link containment) and the two consumers of
//! checked entries, listing and extraction into a staging directory that is renamed into place only
//! when the whole archive was accepted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::compression::is_kernel_module_name;
use crate::error::{ReadError, Rule};
use crate::io_util::Counter;

/// Limits that keep a hostile or corrupt package from exhausting disk, memory or time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest single entry, in bytes (declared size and bytes actually produced).
    pub max_entry_bytes: u64,
    /// Largest total of regular-file bytes in one package.
    pub max_total_bytes: u64,
    /// Most entries (of any type) in one package.
    pub max_entries: u64,
    /// Largest ratio of extracted bytes to compressed package bytes, checked once more than
    /// [`Limits::ratio_grace_bytes`] were extracted; `None` disables the check.
    pub max_expansion_ratio: Option<u64>,
    /// Extracted bytes allowed before the ratio check starts (small packages legitimately compress well).
    pub ratio_grace_bytes: u64,
}

impl Default for Limits {
    /// Sized for real distribution kernels (a Debian `linux-image` holds ~400 MB in ~5000 entries,
    /// compressed about 6:1) with a wide margin, while a bomb stops long before it fills a disk.
    fn default() -> Self {
        Limits {
            max_entry_bytes: 512 << 20,
            max_total_bytes: 4 << 30,
            max_entries: 200_000,
            max_expansion_ratio: Some(200),
            ratio_grace_bytes: 64 << 20,
        }
    }
}

/// Which entries [`crate::extract`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Selection {
    /// Every directory, file and link.
    #[default]
    All,
    /// Only kernel modules (`.ko`, `.ko.gz`, `.ko.xz`, `.ko.zst`), with the directories leading to them.
    KernelModules,
}

/// Options for [`crate::extract`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractOptions {
    /// Safety limits.
    pub limits: Limits,
    /// What to write.
    pub selection: Selection,
}

/// The type of an accepted entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Directory,
    /// A regular file.
    File,
    /// A symbolic link with its target exactly as stored (absolute targets are read as rooted at the
    /// extraction directory, the way dpkg and rpm install them under a root).
    Symlink {
        /// The link target.
        target: PathBuf,
    },
    /// A hard link to an earlier regular file, as a path relative to the extraction root.
    Hardlink {
        /// The linked file.
        target: PathBuf,
    },
}

/// One accepted entry of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// Path relative to the extraction root, without `./` or a leading `/`.
    pub path: PathBuf,
    /// The entry's type.
    pub kind: EntryKind,
    /// Size in bytes for regular files, 0 otherwise.
    pub size: u64,
    /// Permission bits (set-id and sticky bits are never applied on extraction).
    pub mode: u32,
}

/// The outcome of a successful [`crate::extract`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractReport {
    /// Package format, detected from the magic bytes.
    pub format: kernel_id::PackageFormat,
    /// Entries in the package (after path checks, including unselected ones).
    pub entries: u64,
    /// Regular files (and hard links) written, relative to the target, in archive order.
    pub files: Vec<PathBuf>,
    /// Bytes of regular-file data written.
    pub bytes: u64,
    /// Peak bytes of decoded data held in spool files (page cache on the target's filesystem, not
    /// process memory) while a multi-block xz data.tar was decoded in parallel; 0 when it was not.
    pub spool_peak_bytes: u64,
}

/// An entry as a format reader found it, before any check.
#[derive(Debug)]
pub(crate) struct RawEntry {
    /// The name exactly as stored, for error messages.
    pub name: String,
    /// The stored path.
    pub path: PathBuf,
    pub kind: RawKind,
    pub size: u64,
    pub mode: u32,
    pub mtime: Option<u64>,
}

#[derive(Debug)]
pub(crate) enum RawKind {
    Directory,
    File,
    Symlink(PathBuf),
    /// Target as stored: an archive path, same rooting rules as entry paths.
    Hardlink(PathBuf),
    Special(String),
}

/// Receives every entry of an archive in order with a reader over its data.
pub(crate) trait Sink {
    fn entry(&mut self, raw: RawEntry, data: &mut dyn Read) -> Result<(), ReadError>;
}

/// Symlink hops followed while checking containment, as the kernel's own limit.
const MAX_SYMLINK_HOPS: u32 = 40;

/// Turns a stored path into a clean relative path. `rooted` formats (rpm) store absolute paths by
/// design and have the leading `/` stripped; for tar-based formats a leading `/` is refused.
/// `Ok(None)` is the archive root itself (`./`).
pub(crate) fn normalize_entry_path(stored: &Path, rooted: bool) -> Result<Option<PathBuf>, Rule> {
    let bytes = stored.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.contains(&0) {
        return Err(Rule::InvalidPath);
    }
    let mut clean = PathBuf::new();
    for component in stored.components() {
        match component {
            Component::RootDir if rooted => {}
            Component::RootDir | Component::Prefix(_) => return Err(Rule::AbsolutePath),
            Component::CurDir => {}
            Component::ParentDir => return Err(Rule::ParentComponent),
            Component::Normal(part) => clean.push(part),
        }
    }
    Ok((!clean.as_os_str().is_empty()).then_some(clean))
}

/// The checks every entry passes whether it is listed or extracted.
#[derive(Debug)]
pub(crate) struct Policy {
    limits: Limits,
    rooted: bool,
    seen: HashSet<PathBuf>,
    symlinks: HashMap<PathBuf, PathBuf>,
    entries: u64,
    expanded: u64,
    compressed: Counter,
}

impl Policy {
    pub(crate) fn new(limits: Limits, rooted: bool, compressed: Counter) -> Self {
        Policy {
            limits,
            rooted,
            seen: HashSet::new(),
            symlinks: HashMap::new(),
            entries: 0,
            expanded: 0,
            compressed,
        }
    }

    /// Checks one entry's metadata. `Ok(None)` for the archive's root directory entry.
    fn admit(&mut self, raw: &RawEntry) -> Result<Option<EntryInfo>, ReadError> {
        let refuse = |rule| ReadError::refused(raw.name.clone(), rule);
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(refuse(Rule::TooManyEntries {
                limit: self.limits.max_entries,
            }));
        }
        let path = normalize_entry_path(&raw.path, self.rooted).map_err(refuse)?;
        let kind = match &raw.kind {
            RawKind::Special(kind) => return Err(refuse(Rule::SpecialFile { kind: kind.clone() })),
            RawKind::Directory => EntryKind::Directory,
            RawKind::File => EntryKind::File,
            RawKind::Symlink(target) => {
                if target.as_os_str().is_empty() || target.as_os_str().as_bytes().contains(&0) {
                    return Err(refuse(Rule::InvalidPath));
                }
                EntryKind::Symlink {
                    target: target.clone(),
                }
            }
            RawKind::Hardlink(target) => {
                let escapes = || Rule::HardlinkEscapes {
                    target: target.clone(),
                };
                match normalize_entry_path(target, self.rooted) {
                    Ok(Some(clean)) => EntryKind::Hardlink { target: clean },
                    Ok(None) | Err(_) => return Err(refuse(escapes())),
                }
            }
        };
        let Some(path) = path else {
            return match kind {
                EntryKind::Directory => Ok(None),
                _ => Err(refuse(Rule::InvalidPath)),
            };
        };
        if !self.seen.insert(path.clone()) {
            return Err(refuse(Rule::Duplicate));
        }
        let size = if kind == EntryKind::File { raw.size } else { 0 };
        if size > self.limits.max_entry_bytes {
            return Err(refuse(Rule::EntryTooLarge {
                size,
                limit: self.limits.max_entry_bytes,
            }));
        }
        if let EntryKind::Symlink { target } = &kind {
            self.symlinks.insert(path.clone(), target.clone());
            check_symlink_contained(&self.symlinks, &path, target).map_err(refuse)?;
        }
        Ok(Some(EntryInfo {
            path,
            kind,
            size,
            mode: raw.mode & 0o777,
        }))
    }

    /// Accounts `n` extracted bytes, enforcing the total and ratio limits as data arrives.
    fn account(&mut self, name: &str, n: u64) -> Result<(), ReadError> {
        self.expanded = self.expanded.saturating_add(n);
        if self.expanded > self.limits.max_total_bytes {
            return Err(ReadError::refused(
                name,
                Rule::TotalTooLarge {
                    limit: self.limits.max_total_bytes,
                },
            ));
        }
        if let Some(ratio) = self.limits.max_expansion_ratio
            && self.expanded > self.limits.ratio_grace_bytes
        {
            let compressed = self.compressed.get().max(1);
            if self.expanded / compressed >= ratio {
                return Err(ReadError::refused(
                    name,
                    Rule::ExpansionRatio {
                        expanded: self.expanded,
                        compressed,
                        limit: ratio,
                    },
                ));
            }
        }
        Ok(())
    }

    /// Re-checks every symlink against the final set of links: a link that looked contained when it
    /// was read can escape through a link that came later.
    fn check_all_symlinks(&self) -> Result<(), ReadError> {
        let mut links: Vec<_> = self.symlinks.iter().collect();
        links.sort();
        for (path, target) in links {
            check_symlink_contained(&self.symlinks, path, target)
                .map_err(|rule| ReadError::refused(path.to_string_lossy(), rule))?;
        }
        Ok(())
    }
}

/// One step of a path being resolved.
enum Step {
    Root,
    Parent,
    Name(OsString),
}

fn steps(path: &Path) -> impl Iterator<Item = Step> + '_ {
    path.components().filter_map(|component| match component {
        Component::RootDir | Component::Prefix(_) => Some(Step::Root),
        Component::CurDir => None,
        Component::ParentDir => Some(Step::Parent),
        Component::Normal(part) => Some(Step::Name(part.to_os_string())),
    })
}

/// Resolves `target` (a link at `link`) component by component through the archive's own symlinks,
/// with absolute targets rooted at the extraction root, and fails if any step climbs above the root.
fn check_symlink_contained(
    symlinks: &HashMap<PathBuf, PathBuf>,
    link: &Path,
    target: &Path,
) -> Result<(), Rule> {
    let mut stack: Vec<OsString> = link
        .parent()
        .map(|parent| parent.iter().map(OsStr::to_os_string).collect())
        .unwrap_or_default();
    let mut queue: VecDeque<Step> = steps(target).collect();
    let mut hops = 0;
    while let Some(step) = queue.pop_front() {
        match step {
            Step::Root => stack.clear(),
            Step::Parent => {
                if stack.pop().is_none() {
                    return Err(Rule::SymlinkEscapes {
                        target: target.to_path_buf(),
                    });
                }
            }
            Step::Name(part) => {
                stack.push(part);
                let here: PathBuf = stack.iter().collect();
                if let Some(next) = symlinks.get(&here) {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(Rule::SymlinkLoop);
                    }
                    stack.pop();
                    for step in steps(next).collect::<Vec<_>>().into_iter().rev() {
                        queue.push_front(step);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Collects the checked entries.
#[derive(Debug)]
pub(crate) struct Lister {
    pub(crate) policy: Policy,
    pub(crate) entries: Vec<EntryInfo>,
}

impl Sink for Lister {
    fn entry(&mut self, raw: RawEntry, _data: &mut dyn Read) -> Result<(), ReadError> {
        if let Some(info) = self.policy.admit(&raw)? {
            self.entries.push(info);
        }
        Ok(())
    }
}

impl Lister {
    pub(crate) fn finish(self) -> Result<Vec<EntryInfo>, ReadError> {
        self.policy.check_all_symlinks()?;
        Ok(self.entries)
    }
}

/// A kernel module of a package, read into memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackagedModule {
    /// Its path in the package, relative, as extraction would write it.
    pub path: PathBuf,
    /// Its bytes as stored (compressed when its name says so).
    pub bytes: Vec<u8>,
}

/// Collects checked kernel-module entries in memory: the same policy as extraction, nothing written.
#[derive(Debug)]
pub(crate) struct ModuleCollector {
    pub(crate) policy: Policy,
    modules: Vec<PackagedModule>,
    hardlinks: Vec<(String, PathBuf, PathBuf)>,
}

/// Memory reserved up front for one module: its declared size, up to this (a header's claim is not
/// trusted with memory; the data has to arrive).
const MODULE_RESERVE: u64 = 16 << 20;

impl ModuleCollector {
    pub(crate) fn new(policy: Policy) -> Self {
        ModuleCollector {
            policy,
            modules: Vec::new(),
            hardlinks: Vec::new(),
        }
    }

    fn is_module(info: &EntryInfo) -> bool {
        info.path
            .file_name()
            .is_some_and(|name| is_kernel_module_name(&name.to_string_lossy()))
    }

    /// Reads one entry's data in pieces, each counted by the policy as it arrives, so a bomb stops
    /// at the same limits as extraction before its bytes pile up in memory.
    fn read(
        &mut self,
        raw: &RawEntry,
        declared: u64,
        data: &mut dyn Read,
    ) -> Result<Vec<u8>, ReadError> {
        let mut bytes = Vec::with_capacity(declared.min(MODULE_RESERVE) as usize);
        let mut piece = [0u8; 16 * 1024];
        loop {
            let n = match data.read(&mut piece) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(ReadError::corrupt(&raw.name, err)),
            };
            let found = bytes.len() as u64 + n as u64;
            if found > declared {
                return Err(ReadError::refused(
                    raw.name.clone(),
                    Rule::SizeMismatch { declared, found },
                ));
            }
            self.policy.account(&raw.name, n as u64)?;
            bytes.extend_from_slice(&piece[..n]);
        }
        if (bytes.len() as u64) < declared {
            return Err(ReadError::Truncated {
                what: format!(
                    "entry '{}' declares {declared} bytes but the data ends after {}",
                    raw.name,
                    bytes.len()
                ),
            });
        }
        Ok(bytes)
    }

    /// The modules in archive order, hard links last (as extraction lists them).
    pub(crate) fn finish(mut self) -> Result<Vec<PackagedModule>, ReadError> {
        self.policy.check_all_symlinks()?;
        for (name, link, target) in std::mem::take(&mut self.hardlinks) {
            let Some(bytes) = self
                .modules
                .iter()
                .find(|module| module.path == target)
                .map(|module| module.bytes.clone())
            else {
                return Err(ReadError::refused(
                    name,
                    Rule::HardlinkTargetMissing { target },
                ));
            };
            self.modules.push(PackagedModule { path: link, bytes });
        }
        Ok(self.modules)
    }
}

impl Sink for ModuleCollector {
    fn entry(&mut self, raw: RawEntry, data: &mut dyn Read) -> Result<(), ReadError> {
        let Some(info) = self.policy.admit(&raw)? else {
            return Ok(());
        };
        if !Self::is_module(&info) {
            return Ok(());
        }
        match &info.kind {
            EntryKind::File => {
                let bytes = self.read(&raw, info.size, data)?;
                self.modules.push(PackagedModule {
                    path: info.path,
                    bytes,
                });
            }
            EntryKind::Hardlink { target } => {
                self.hardlinks
                    .push((raw.name.clone(), info.path.clone(), target.clone()));
            }
            EntryKind::Directory | EntryKind::Symlink { .. } => {}
        }
        Ok(())
    }
}

/// Writes checked entries under a staging directory.
#[derive(Debug)]
pub(crate) struct Extractor {
    pub(crate) policy: Policy,
    selection: Selection,
    root: PathBuf,
    known_dirs: HashSet<PathBuf>,
    dir_modes: Vec<(PathBuf, u32)>,
    regular_files: HashSet<PathBuf>,
    hardlinks: Vec<(String, PathBuf, PathBuf)>,
    files: Vec<PathBuf>,
    bytes: u64,
    entries: u64,
    buffer: Vec<u8>,
}

/// Copy buffer size: large enough to keep syscalls cheap, small enough to never matter for memory.
const COPY_BUFFER: usize = 256 * 1024;

impl Extractor {
    pub(crate) fn new(policy: Policy, selection: Selection, staging_root: PathBuf) -> Self {
        Extractor {
            policy,
            selection,
            root: staging_root,
            known_dirs: HashSet::new(),
            dir_modes: Vec::new(),
            regular_files: HashSet::new(),
            hardlinks: Vec::new(),
            files: Vec::new(),
            bytes: 0,
            entries: 0,
            buffer: vec![0; COPY_BUFFER],
        }
    }

    fn selected(&self, info: &EntryInfo) -> bool {
        match self.selection {
            Selection::All => true,
            Selection::KernelModules => {
                matches!(info.kind, EntryKind::File | EntryKind::Hardlink { .. })
                    && info
                        .path
                        .file_name()
                        .is_some_and(|name| is_kernel_module_name(&name.to_string_lossy()))
            }
        }
    }

    /// Creates the missing ancestors of `rel` as real directories, refusing to pass through anything
    /// that is not one (a symlink in particular), so no write ever follows a link.
    fn ensure_parents(&mut self, name: &str, rel: &Path) -> Result<(), ReadError> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        let mut prefix = PathBuf::new();
        for part in parent.iter() {
            prefix.push(part);
            if self.known_dirs.contains(&prefix) {
                continue;
            }
            let full = self.root.join(&prefix);
            match fs::symlink_metadata(&full) {
                Ok(meta) if meta.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(ReadError::refused(
                        name,
                        Rule::ParentNotDirectory {
                            ancestor: prefix.clone(),
                        },
                    ));
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&full)
                        .map_err(|source| ReadError::io(&full, source))?;
                }
                Err(source) => return Err(ReadError::io(&full, source)),
            }
            self.known_dirs.insert(prefix.clone());
        }
        Ok(())
    }

    fn write_file(
        &mut self,
        raw: &RawEntry,
        info: &EntryInfo,
        data: &mut dyn Read,
    ) -> Result<(), ReadError> {
        self.ensure_parents(&raw.name, &info.path)?;
        let full = self.root.join(&info.path);
        // create_new never follows a symlink in the last component and never truncates.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&full)
            .map_err(|source| ReadError::io(&full, source))?;
        let declared = info.size;
        let mut written: u64 = 0;
        loop {
            let n = match data.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(ReadError::corrupt(&raw.name, err)),
            };
            written += n as u64;
            if written > declared {
                return Err(ReadError::refused(
                    raw.name.clone(),
                    Rule::SizeMismatch {
                        declared,
                        found: written,
                    },
                ));
            }
            self.policy.account(&raw.name, n as u64)?;
            file.write_all(&self.buffer[..n])
                .map_err(|source| ReadError::io(&full, source))?;
        }
        if written < declared {
            return Err(ReadError::Truncated {
                what: format!(
                    "entry '{}' declares {declared} bytes but the data ends after {written}",
                    raw.name
                ),
            });
        }
        file.set_permissions(fs::Permissions::from_mode(info.mode))
            .map_err(|source| ReadError::io(&full, source))?;
        if let Some(mtime) = raw.mtime {
            // Matches what dpkg-deb -x and cpio -m leave behind; failure here is not worth an error.
            let _ = file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime));
        }
        self.regular_files.insert(info.path.clone());
        self.files.push(info.path.clone());
        self.bytes += written;
        Ok(())
    }

    fn write_entry(
        &mut self,
        raw: &RawEntry,
        info: &EntryInfo,
        data: &mut dyn Read,
    ) -> Result<(), ReadError> {
        match &info.kind {
            EntryKind::Directory => {
                self.ensure_parents(&raw.name, &info.path)?;
                let full = self.root.join(&info.path);
                match fs::symlink_metadata(&full) {
                    Ok(meta) if meta.file_type().is_dir() => {}
                    Ok(_) => {
                        return Err(ReadError::refused(
                            raw.name.clone(),
                            Rule::ParentNotDirectory {
                                ancestor: info.path.clone(),
                            },
                        ));
                    }
                    Err(_) => fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&full)
                        .map_err(|source| ReadError::io(&full, source))?,
                }
                self.known_dirs.insert(info.path.clone());
                self.dir_modes.push((info.path.clone(), info.mode));
            }
            EntryKind::File => self.write_file(raw, info, data)?,
            EntryKind::Symlink { target } => {
                self.ensure_parents(&raw.name, &info.path)?;
                let full = self.root.join(&info.path);
                std::os::unix::fs::symlink(target, &full)
                    .map_err(|source| ReadError::io(&full, source))?;
            }
            EntryKind::Hardlink { target } => {
                // Created at the end: rpm stores the data on the last member of a hard link set.
                self.hardlinks
                    .push((raw.name.clone(), info.path.clone(), target.clone()));
            }
        }
        Ok(())
    }

    /// Completes the staging tree after the last entry; returns the report's file list and byte count.
    pub(crate) fn finish(mut self) -> Result<(u64, Vec<PathBuf>, u64), ReadError> {
        self.policy.check_all_symlinks()?;
        for (name, link, target) in std::mem::take(&mut self.hardlinks) {
            if !self.regular_files.contains(&target) {
                return Err(ReadError::refused(
                    name,
                    Rule::HardlinkTargetMissing { target },
                ));
            }
            self.ensure_parents(&name, &link)?;
            let from = self.root.join(&target);
            let to = self.root.join(&link);
            fs::hard_link(&from, &to).map_err(|source| ReadError::io(&to, source))?;
            self.files.push(link);
        }
        // Deepest first, so a read-only directory is restricted only after everything below it exists.
        self.dir_modes
            .sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (path, mode) in &self.dir_modes {
            let full = self.root.join(path);
            fs::set_permissions(&full, fs::Permissions::from_mode(*mode))
                .map_err(|source| ReadError::io(&full, source))?;
        }
        Ok((self.entries, self.files, self.bytes))
    }
}

impl Sink for Extractor {
    fn entry(&mut self, raw: RawEntry, data: &mut dyn Read) -> Result<(), ReadError> {
        let Some(info) = self.policy.admit(&raw)? else {
            return Ok(());
        };
        self.entries += 1;
        if self.selected(&info) {
            self.write_entry(&raw, &info, data)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(pairs: &[(&str, &str)]) -> HashMap<PathBuf, PathBuf> {
        pairs
            .iter()
            .map(|(link, target)| (PathBuf::from(link), PathBuf::from(target)))
            .collect()
    }

    #[test]
    fn paths_are_normalized_or_refused() {
        let norm = |p: &str, rooted| normalize_entry_path(Path::new(p), rooted);
        assert_eq!(
            norm("./lib/modules/x.ko", false),
            Ok(Some(PathBuf::from("lib/modules/x.ko")))
        );
        assert_eq!(norm("./", false), Ok(None));
        assert_eq!(norm("/etc/passwd", false), Err(Rule::AbsolutePath));
        assert_eq!(norm("/lib/x.ko", true), Ok(Some(PathBuf::from("lib/x.ko"))));
        assert_eq!(norm("a/../../etc", false), Err(Rule::ParentComponent));
        assert_eq!(norm("/a/../b", true), Err(Rule::ParentComponent));
        assert_eq!(norm("", false), Err(Rule::InvalidPath));
    }

    #[test]
    fn contained_symlinks_are_accepted() {
        let map = links(&[]);
        for (link, target) in [
            ("a/b/l", "../c"),
            ("a/l", "/usr/src/linux-headers"),
            ("l", "./x/./y"),
            ("a/b/c/l", "../../../d"),
        ] {
            assert_eq!(
                check_symlink_contained(&map, Path::new(link), Path::new(target)),
                Ok(()),
                "{link} -> {target}"
            );
        }
    }

    #[test]
    fn escaping_symlinks_are_refused() {
        let map = links(&[]);
        for (link, target) in [
            ("l", ".."),
            ("a/l", "../../etc"),
            ("a/l", "/../etc"),
            ("l", "x/../../y"),
        ] {
            assert!(
                matches!(
                    check_symlink_contained(&map, Path::new(link), Path::new(target)),
                    Err(Rule::SymlinkEscapes { .. })
                ),
                "{link} -> {target}"
            );
        }
    }

    #[test]
    fn chains_through_other_links_are_resolved_physically() {
        // x/y/s2 -> ../.. is the root; x/y/w -> s2/../.. looks like x/ lexically but is above the root.
        let map = links(&[("x/y/s2", "../.."), ("x/y/w", "s2/../..")]);
        assert!(matches!(
            check_symlink_contained(&map, Path::new("x/y/w"), Path::new("s2/../..")),
            Err(Rule::SymlinkEscapes { .. })
        ));
        assert_eq!(
            check_symlink_contained(&map, Path::new("x/y/s2"), Path::new("../..")),
            Ok(())
        );
    }

    #[test]
    fn symlink_loops_are_refused() {
        let map = links(&[("a", "b"), ("b", "a")]);
        assert_eq!(
            check_symlink_contained(&map, Path::new("c"), Path::new("a/x")),
            Err(Rule::SymlinkLoop)
        );
    }

    fn raw(name: &str, kind: RawKind, size: u64) -> RawEntry {
        RawEntry {
            name: name.to_owned(),
            path: PathBuf::from(name),
            kind,
            size,
            mode: 0o644,
            mtime: None,
        }
    }

    #[test]
    fn policy_refuses_duplicates_specials_and_oversize() {
        let limits = Limits {
            max_entry_bytes: 100,
            max_entries: 3,
            ..Limits::default()
        };
        let mut policy = Policy::new(limits, false, Counter::default());
        policy
            .admit(&raw("./a", RawKind::File, 10))
            .expect("first entry");
        let dup = policy
            .admit(&raw("a", RawKind::File, 10))
            .expect_err("duplicate");
        assert_eq!(dup.refusal().map(|r| r.rule.clone()), Some(Rule::Duplicate));
        let dev = policy
            .admit(&raw("dev", RawKind::Special("character device".into()), 0))
            .expect_err("device");
        assert!(matches!(
            dev.refusal().map(|r| &r.rule),
            Some(Rule::SpecialFile { .. })
        ));
        let mut policy = Policy::new(
            Limits {
                max_entry_bytes: 100,
                ..Limits::default()
            },
            false,
            Counter::default(),
        );
        let big = policy
            .admit(&raw("big", RawKind::File, 101))
            .expect_err("too big");
        assert!(matches!(
            big.refusal().map(|r| &r.rule),
            Some(Rule::EntryTooLarge { .. })
        ));
    }

    #[test]
    fn policy_counts_entries() {
        let mut policy = Policy::new(
            Limits {
                max_entries: 2,
                ..Limits::default()
            },
            false,
            Counter::default(),
        );
        policy.admit(&raw("a", RawKind::Directory, 0)).expect("1");
        policy.admit(&raw("b", RawKind::Directory, 0)).expect("2");
        let err = policy
            .admit(&raw("c", RawKind::Directory, 0))
            .expect_err("3");
        assert!(matches!(
            err.refusal().map(|r| &r.rule),
            Some(Rule::TooManyEntries { limit: 2 })
        ));
    }

    #[test]
    fn ratio_check_starts_after_the_grace_bytes() {
        let compressed = Counter::default();
        let mut policy = Policy::new(
            Limits {
                max_expansion_ratio: Some(10),
                ratio_grace_bytes: 1000,
                ..Limits::default()
            },
            false,
            compressed,
        );
        // Nothing compressed was counted (ratio is huge) but we are within the grace bytes.
        policy.account("a", 1000).expect("within grace");
        let err = policy
            .account("a", 1)
            .expect_err("past grace with a huge ratio");
        assert!(matches!(
            err.refusal().map(|r| &r.rule),
            Some(Rule::ExpansionRatio { .. })
        ));
    }
}
