//! Public reading entry points: detect a package's format by its magic bytes, list its entries, and
//! extract it (all entries or only kernel modules) into a target directory through a staging
//! directory beside it, so a refused package leaves nothing behind.

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kernel_id::PackageFormat;

use crate::error::ReadError;
use crate::extract::{
    EntryInfo, ExtractOptions, ExtractReport, Extractor, Limits, Lister, ModuleCollector,
    PackagedModule, Policy, Sink,
};
use crate::io_util::{Counter, CountingReader};

const AR_MAGIC: &[u8] = b"!<arch>\n";
const RPM_MAGIC: &[u8] = &[0xed, 0xab, 0xee, 0xdb];
const READ_BUFFER: usize = 256 * 1024;

/// The package's format, from its first bytes (never from its name).
pub fn detect_format(path: &Path) -> Result<PackageFormat, ReadError> {
    let mut file = File::open(path).map_err(|source| ReadError::io(path, source))?;
    let mut magic = Vec::with_capacity(8);
    (&mut file)
        .take(8)
        .read_to_end(&mut magic)
        .map_err(|source| ReadError::io(path, source))?;
    if magic.starts_with(AR_MAGIC) {
        Ok(PackageFormat::Deb)
    } else if magic.starts_with(RPM_MAGIC) {
        Ok(PackageFormat::Rpm)
    } else {
        Err(ReadError::NotAPackage { magic })
    }
}

/// Feeds every entry of the package to `sink`; `compressed` counts package bytes read. With
/// `spool_dir`, a .deb's multi-block xz data.tar may be decoded in parallel with look-ahead blocks
/// spooled there; returns the spool's peak size in bytes (0 when nothing was spooled).
fn walk(
    path: &Path,
    format: PackageFormat,
    compressed: Counter,
    spool_dir: Option<&Path>,
    sink: &mut dyn Sink,
) -> Result<u64, ReadError> {
    match format {
        PackageFormat::Deb => {
            let file = File::open(path).map_err(|source| ReadError::io(path, source))?;
            let input = BufReader::with_capacity(
                READ_BUFFER,
                CountingReader::new(&file, compressed.clone()),
            );
            let spool_peak = Counter::default();
            let seekable = spool_dir.map(|spool_dir| crate::deb_read::Seekable {
                file: &file,
                spool_dir,
                compressed,
                spool_peak: spool_peak.clone(),
            });
            crate::deb_read::read_deb(input, seekable, sink)?;
            Ok(spool_peak.get())
        }
        PackageFormat::Rpm => crate::rpm_read::read_rpm(path, compressed, sink).map(|()| 0),
    }
}

/// Lists the package's entries after the same checks extraction applies (so a hostile package fails
/// here too). Directory entries for the archive root are omitted.
pub fn list(path: &Path, limits: &Limits) -> Result<Vec<EntryInfo>, ReadError> {
    let format = detect_format(path)?;
    let compressed = Counter::default();
    let mut lister = Lister {
        policy: Policy::new(
            limits.clone(),
            format == PackageFormat::Rpm,
            compressed.clone(),
        ),
        entries: Vec::new(),
    };
    walk(path, format, compressed, None, &mut lister)?;
    lister.finish()
}

/// Reads the package's kernel modules (`.ko`, `.ko.gz`, `.ko.xz`, `.ko.zst`) into memory, after
/// every entry passed the checks extraction applies (paths, types, sizes, counts, expansion, link
/// containment): what checking and loading a module needs, without writing it anywhere and reading
/// it back. A hard link to a module is read as a copy of it.
pub fn read_kernel_modules(
    package: &Path,
    limits: &Limits,
) -> Result<Vec<PackagedModule>, ReadError> {
    let format = detect_format(package)?;
    let compressed = Counter::default();
    let mut collector = ModuleCollector::new(Policy::new(
        limits.clone(),
        format == PackageFormat::Rpm,
        compressed.clone(),
    ));
    walk(package, format, compressed, None, &mut collector)?;
    collector.finish()
}

/// Extracts the package at `package` into `target`, which must not exist or be an empty directory.
///
/// Entries are written into a fresh staging directory next to `target` and renamed into place only
/// after the last entry passed every check, so on any error nothing is left in `target` or beside it.
/// Absolute symlink targets are kept as stored and are checked as if `target` were `/`.
pub fn extract(
    package: &Path,
    target: &Path,
    options: &ExtractOptions,
) -> Result<ExtractReport, ReadError> {
    let format = detect_format(package)?;
    match fs::read_dir(target) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ReadError::TargetNotEmpty {
                    path: target.to_path_buf(),
                });
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(ReadError::io(target, source)),
    }
    let parent = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|source| ReadError::io(&parent, source))?;
    let staging = tempfile::Builder::new()
        .prefix(".driver-package-extract-")
        .tempdir_in(&parent)
        .map_err(|source| ReadError::io(&parent, source))?;

    let compressed = Counter::default();
    let policy = Policy::new(
        options.limits.clone(),
        format == PackageFormat::Rpm,
        compressed.clone(),
    );
    let mut extractor = Extractor::new(policy, options.selection, staging.path().to_path_buf());
    let spool_peak_bytes = walk(package, format, compressed, Some(&parent), &mut extractor)?;
    let (entries, files, bytes) = extractor.finish()?;

    fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755))
        .map_err(|source| ReadError::io(staging.path(), source))?;
    // rename(2) replaces an empty directory atomically and fails on a non-empty one, so a target that
    // gained files meanwhile is never clobbered.
    fs::rename(staging.path(), target).map_err(|source| match source.raw_os_error() {
        Some(code) if code == 39 || code == 17 => ReadError::TargetNotEmpty {
            path: target.to_path_buf(),
        },
        _ => ReadError::io(target, source),
    })?;
    // The directory now lives at `target`; the TempDir must not delete anything on drop.
    let _ = staging.keep();
    Ok(ExtractReport {
        format,
        entries,
        files,
        bytes,
        spool_peak_bytes,
    })
}
