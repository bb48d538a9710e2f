//! Writing driver packages from a [`PackageSpec`]: a .deb built by hand (ar in deb(5) order with
//! deterministic tar members, md5sums, copyright, changelog and depmod maintainer scripts) and an .rpm
//! built with the `rpm` crate (depmod scriptlets, chosen payload compression).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use kernel_id::PackageFormat;
use md5::{Digest, Md5};

use crate::compression::Compression;
use crate::error::{SpecError, WriteError};
use crate::spec::{DEB_SOURCE_COMMIT_FIELD, PackageSpec};

/// The release field of every rpm we write: one build per identity, so it never needs bumping.
pub const RPM_RELEASE: &str = "1";

/// ar members are written like dpkg-deb writes them: regular files, 0644.
const AR_MEMBER_MODE: u32 = 0o100644;

/// How to compress what goes into a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// `data.tar` compression for a .deb, payload compression for an .rpm.
    pub compression: Compression,
}

impl WriteOptions {
    /// The compression each format's current distributions expect by default: xz for .deb (what
    /// Debian's dpkg-deb uses), zstd for .rpm (Fedora, CentOS Stream 9+, Amazon Linux 2023).
    pub fn default_for(format: PackageFormat) -> Self {
        WriteOptions {
            compression: match format {
                PackageFormat::Deb => Compression::Xz,
                PackageFormat::Rpm => Compression::Zstd,
            },
        }
    }
}

/// Writes the package described by `spec` in its format to `out`.
pub fn write_package(
    spec: &PackageSpec,
    options: WriteOptions,
    out: impl Write,
) -> Result<(), WriteError> {
    match spec.format {
        PackageFormat::Deb => write_deb(spec, options.compression, out),
        PackageFormat::Rpm => write_rpm(spec, options.compression, out),
    }
}

/// Writes the package into `dir` under `file_name` (e.g. from `KernelIdentity::package_file_name`),
/// through a temporary file renamed into place, and refuses to replace an existing file.
pub fn write_package_file(
    spec: &PackageSpec,
    options: WriteOptions,
    dir: &Path,
    file_name: &str,
) -> Result<PathBuf, WriteError> {
    if file_name.is_empty() || file_name.contains('/') || file_name.starts_with('.') {
        return Err(SpecError::new(
            "file_name",
            format!("'{file_name}' must be a plain file name"),
        )
        .into());
    }
    spec.validate()?;
    let target = dir.join(file_name);
    let mut temp = tempfile::Builder::new()
        .prefix(".driver-package-write-")
        .tempfile_in(dir)
        .map_err(|source| WriteError::io(dir, source))?;
    {
        let mut out = io::BufWriter::new(temp.as_file_mut());
        write_package(spec, options, &mut out)?;
        out.flush()
            .map_err(|source| WriteError::io(&target, source))?;
    }
    temp.as_file()
        .sync_all()
        .map_err(|source| WriteError::io(&target, source))?;
    // persist_noclobber: an artifact already stored is never overwritten.
    temp.persist_noclobber(&target)
        .map_err(|err| WriteError::io(&target, err.error))?;
    fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(|source| WriteError::io(&target, source))?;
    Ok(target)
}

fn postinst(spec: &PackageSpec) -> String {
    let release = spec.kernel_release.as_str();
    format!(
        "#!/bin/sh\n\
         set -e\n\
         # Refresh the module index of the kernel these modules were built for (under DPKG_ROOT when\n\
         # dpkg installs into another root).\n\
         if [ \"$1\" = \"configure\" ] && command -v depmod >/dev/null 2>&1; then\n\
         \tdepmod ${{DPKG_ROOT:+-b \"$DPKG_ROOT\"}} -a '{release}'\n\
         fi\n\
         exit 0\n"
    )
}

fn postrm(spec: &PackageSpec) -> String {
    let release = spec.kernel_release.as_str();
    format!(
        "#!/bin/sh\n\
         set -e\n\
         # Drop the removed modules from the module index, unless the kernel itself is gone too.\n\
         case \"$1\" in\n\
         \tremove|purge)\n\
         \t\tif [ -d \"${{DPKG_ROOT:-}}/lib/modules/{release}\" ] && command -v depmod >/dev/null 2>&1; then\n\
         \t\t\tdepmod ${{DPKG_ROOT:+-b \"$DPKG_ROOT\"}} -a '{release}'\n\
         \t\tfi\n\
         \t\t;;\n\
         esac\n\
         exit 0\n"
    )
}

fn rpm_post_script(spec: &PackageSpec) -> String {
    let release = spec.kernel_release.as_str();
    format!("if command -v depmod >/dev/null 2>&1; then\n\tdepmod -a '{release}' || :\nfi\n")
}

fn rpm_postun_script(spec: &PackageSpec) -> String {
    let release = spec.kernel_release.as_str();
    format!(
        "if [ -d '/lib/modules/{release}' ] && command -v depmod >/dev/null 2>&1; then\n\tdepmod -a '{release}' || :\nfi\n"
    )
}

/// `YYYY-MM-DD` of a day count since 1970-01-01 (proleptic Gregorian; Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// RFC 2822 date as Debian changelogs require, in UTC.
fn rfc2822(epoch: u32) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = i64::from(epoch);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn debian_changelog(spec: &PackageSpec) -> String {
    format!(
        "{name} ({version}) unstable; urgency=medium\n\n  * Automated build of the kernel module package.\n\n -- {maintainer}  {date}\n",
        name = spec.name,
        version = spec.version,
        maintainer = spec.maintainer,
        date = rfc2822(spec.source_date_epoch),
    )
}

fn debian_copyright(spec: &PackageSpec) -> String {
    let mut text = format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: {name}\n\
         \n\
         Files: *\n\
         Copyright: {year} {maintainer}\n\
         License: {license}\n",
        name = spec.name,
        maintainer = spec.maintainer,
        license = spec.license,
        year = civil_from_days(i64::from(spec.source_date_epoch) / 86_400).0,
    );
    if spec.license.starts_with("GPL-2") {
        text.push_str(
            " This program is free software; you can redistribute it and/or modify it under\n \
             the terms of the GNU General Public License version 2 as published by the Free\n \
             Software Foundation.\n \
             .\n \
             On Debian systems, the complete text of the GNU General Public License\n \
             version 2 can be found in `/usr/share/common-licenses/GPL-2'.\n",
        );
    } else {
        text.push_str(" See the license named above.\n");
    }
    text
}

/// Re-flows each paragraph of `text` to lines of at most `width` characters (longer words stay whole);
/// paragraphs stay separated by one empty line. Both lintian and rpmlint flag lines over 80 columns.
pub(crate) fn wrap_paragraphs(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for (index, paragraph) in text.trim().split("\n\n").enumerate() {
        if index > 0 {
            lines.push(String::new());
        }
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}

/// The long description as control-file continuation lines: blank lines become " .".
fn control_description(spec: &PackageSpec) -> String {
    let mut out = format!("Description: {}\n", spec.summary);
    for line in wrap_paragraphs(&spec.description, 78) {
        if line.is_empty() {
            out.push_str(" .\n");
        } else {
            out.push(' ');
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// A tar member being prepared: path relative to the root with a `./` prefix as dpkg-deb writes it.
struct TarItem {
    name: String,
    data: Option<Vec<u8>>,
    mode: u32,
}

/// Builds a deterministic tar (GNU format, root:root, fixed mtime) with dpkg-deb-style `./` names.
fn build_tar(items: &[TarItem], mtime: u32) -> Result<Vec<u8>, WriteError> {
    let mut builder = tar::Builder::new(Vec::new());
    let io_err = |source| WriteError::io("<tar member>", source);
    for item in items {
        let name = item.name.as_bytes();
        if name.len() > 100 {
            // GNU long name: a `././@LongLink` member carrying the full name, then the real header.
            let mut long = tar::Header::new_gnu();
            set_raw_name(&mut long, b"././@LongLink");
            long.set_entry_type(tar::EntryType::GNULongName);
            long.set_mode(0o644);
            long.set_uid(0);
            long.set_gid(0);
            long.set_mtime(0);
            let mut data = name.to_vec();
            data.push(0);
            long.set_size(data.len() as u64);
            long.set_cksum();
            builder.append(&long, data.as_slice()).map_err(io_err)?;
        }
        let mut header = tar::Header::new_gnu();
        set_raw_name(&mut header, &name[..name.len().min(100)]);
        header.set_mode(item.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_username("root").map_err(io_err)?;
        header.set_groupname("root").map_err(io_err)?;
        header.set_mtime(u64::from(mtime));
        match &item.data {
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                header.set_cksum();
                builder.append(&header, data.as_slice()).map_err(io_err)?;
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_cksum();
                builder.append(&header, io::empty()).map_err(io_err)?;
            }
        }
    }
    builder.into_inner().map_err(io_err)
}

fn set_raw_name(header: &mut tar::Header, name: &[u8]) {
    let slot = &mut header.as_old_mut().name;
    slot.fill(0);
    slot[..name.len()].copy_from_slice(name);
}

fn compress(compression: Compression, data: &[u8]) -> Result<Vec<u8>, WriteError> {
    let io_err = |source| WriteError::io("<compressed member>", source);
    Ok(match compression {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            // GzBuilder leaves mtime 0 and no file name: reproducible output.
            let mut encoder =
                flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
            encoder.write_all(data).map_err(io_err)?;
            encoder.finish().map_err(io_err)?
        }
        Compression::Xz => {
            let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), 6);
            encoder.write_all(data).map_err(io_err)?;
            encoder.finish().map_err(io_err)?
        }
        Compression::Zstd => zstd::encode_all(data, 19).map_err(io_err)?,
    })
}

fn member_name(base: &str, compression: Compression) -> String {
    match compression {
        Compression::None => base.to_owned(),
        other => format!("{base}.{}", other.suffix()),
    }
}

/// Writes a .deb: ar with `debian-binary`, `control.tar.gz` (gzip for the widest dpkg support), and
/// `data.tar` with `data_compression`.
pub fn write_deb(
    spec: &PackageSpec,
    data_compression: Compression,
    out: impl Write,
) -> Result<(), WriteError> {
    spec.validate()?;
    let mtime = spec.source_date_epoch;
    let doc_dir = format!("/usr/share/doc/{}", spec.name);
    let mut files = spec.load_files()?;
    files.push((
        format!("{doc_dir}/copyright"),
        debian_copyright(spec).into_bytes(),
        0o644,
    ));
    files.push((
        format!("{doc_dir}/changelog.gz"),
        compress(Compression::Gzip, debian_changelog(spec).as_bytes())?,
        0o644,
    ));
    files.sort_by(|a, b| a.0.cmp(&b.0));

    let mut dirs = std::collections::BTreeSet::new();
    for (path, _, _) in &files {
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent {
            if dir != Path::new("/") {
                dirs.insert(format!("{}/", dir.display()));
            }
            parent = dir.parent();
        }
    }
    let mut items = vec![TarItem {
        name: "./".into(),
        data: None,
        mode: 0o755,
    }];
    // Interleave so every directory precedes its contents, as `find | sort` would list them.
    let mut all: Vec<(String, Option<Vec<u8>>, u32)> =
        dirs.into_iter().map(|d| (d, None, 0o755)).collect();
    all.extend(
        files
            .iter()
            .map(|(path, data, mode)| (path.clone(), Some(data.clone()), *mode)),
    );
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut installed_kib: u64 = 0;
    let mut md5sums = String::new();
    for (path, data, mode) in all {
        match &data {
            Some(bytes) => {
                installed_kib += (bytes.len() as u64).div_ceil(1024);
                let digest = Md5::digest(bytes);
                md5sums.push_str(&format!("{}  {}\n", hex_lower(&digest), &path[1..]));
            }
            None => installed_kib += 1,
        }
        items.push(TarItem {
            name: format!(".{path}"),
            data,
            mode,
        });
    }
    let data_tar = compress(data_compression, &build_tar(&items, mtime)?)?;

    let mut control = format!(
        "Package: {}\nVersion: {}\nArchitecture: {}\nMaintainer: {}\nInstalled-Size: {}\nSection: kernel\nPriority: optional\n",
        spec.name, spec.version, spec.architecture, spec.maintainer, installed_kib
    );
    if let Some(commit) = &spec.source_commit {
        control.push_str(&format!("{DEB_SOURCE_COMMIT_FIELD}: {commit}\n"));
    }
    control.push_str(&control_description(spec));
    let control_items = vec![
        TarItem {
            name: "./".into(),
            data: None,
            mode: 0o755,
        },
        TarItem {
            name: "./control".into(),
            data: Some(control.into_bytes()),
            mode: 0o644,
        },
        TarItem {
            name: "./md5sums".into(),
            data: Some(md5sums.into_bytes()),
            mode: 0o644,
        },
        TarItem {
            name: "./postinst".into(),
            data: Some(postinst(spec).into_bytes()),
            mode: 0o755,
        },
        TarItem {
            name: "./postrm".into(),
            data: Some(postrm(spec).into_bytes()),
            mode: 0o755,
        },
    ];
    let control_tar = compress(Compression::Gzip, &build_tar(&control_items, mtime)?)?;

    let mut ar = ar::Builder::new(out);
    for (name, bytes) in [
        ("debian-binary".to_owned(), b"2.0\n".to_vec()),
        ("control.tar.gz".to_owned(), control_tar),
        (member_name("data.tar", data_compression), data_tar),
    ] {
        let mut header = ar::Header::new(name.clone().into_bytes(), bytes.len() as u64);
        header.set_mode(AR_MEMBER_MODE);
        header.set_mtime(u64::from(mtime));
        header.set_uid(0);
        header.set_gid(0);
        ar.append(&header, bytes.as_slice())
            .map_err(|source| WriteError::io(name, source))?;
    }
    ar.into_inner()
        .and_then(|mut out| out.flush())
        .map_err(|source| WriteError::io("<deb output>", source))?;
    Ok(())
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes an .rpm with the `rpm` crate: the spec's files, their own directory, depmod scriptlets, and
/// the payload compressed with `payload` (gzip 9, xz 6 or zstd 19, the levels rpmbuild defaults use).
pub fn write_rpm(
    spec: &PackageSpec,
    payload: Compression,
    mut out: impl Write,
) -> Result<(), WriteError> {
    spec.validate()?;
    let compression = match payload {
        Compression::None => rpm::CompressionWithLevel::None,
        Compression::Gzip => rpm::CompressionWithLevel::Gzip(9),
        Compression::Xz => rpm::CompressionWithLevel::Xz(6),
        Compression::Zstd => rpm::CompressionWithLevel::Zstd(19),
    };
    let config = rpm::BuildConfig::v4()
        .compression(compression)
        .source_date(spec.source_date_epoch);
    let mut builder = rpm::PackageBuilder::new(
        &spec.name,
        &spec.version,
        &spec.license,
        &spec.architecture,
        &spec.summary,
    );
    builder
        .using_config(config)
        .release(RPM_RELEASE)
        .description(wrap_paragraphs(&spec.description, 79).join("\n"))
        .packager(&spec.maintainer)
        .vendor(&spec.maintainer)
        .group("System Environment/Kernel")
        .build_host("localhost")
        .post_install_script(rpm::Scriptlet::new(rpm_post_script(spec)).prog(vec!["/bin/sh"]))
        .post_uninstall_script(rpm::Scriptlet::new(rpm_postun_script(spec)).prog(vec!["/bin/sh"]))
        .add_changelog_entry(
            format!("{} - {}-{RPM_RELEASE}", spec.maintainer, spec.version),
            format!("- {}", spec.summary.trim_end_matches('.')),
            spec.source_date_epoch,
        );
    if let Some(commit) = &spec.source_commit {
        // RPMTAG_VCS (5034): `rpm -qp --qf '%{VCS}'` prints the commit.
        builder.vcs(commit.as_str());
    }
    // Own only each file's own directory: parents such as /lib/modules/<release> belong to the kernel
    // package, and /lib is a symlink on usr-merged systems.
    let mut own_dirs = std::collections::BTreeSet::new();
    for (path, bytes, mode) in spec.load_files()? {
        if let Some(parent) = Path::new(&path).parent() {
            own_dirs.insert(parent.to_string_lossy().into_owned());
        }
        let mode = u16::try_from(mode)
            .map_err(|_| SpecError::new("files.mode", "must fit permission bits"))?;
        builder.with_file_contents(
            bytes,
            rpm::FileOptions::new(path)
                .permissions(mode)
                .user("root")
                .group("root"),
        )?;
    }
    for dir in own_dirs {
        builder.with_dir_entry(
            rpm::FileOptions::dir(dir)
                .permissions(0o755)
                .user("root")
                .group("root"),
        )?;
    }
    let package = builder.build()?;
    package.write(&mut out)?;
    out.flush()
        .map_err(|source| WriteError::io("<rpm output>", source))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_like_debian_changelogs() {
        assert_eq!(rfc2822(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc2822(1_704_067_200), "Mon, 01 Jan 2024 00:00:00 +0000");
        assert_eq!(rfc2822(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc2822(4_102_444_799), "Thu, 31 Dec 2099 23:59:59 +0000");
    }

    #[test]
    fn paragraphs_wrap_to_width() {
        let text = "aaa bbb ccc ddd\neee\n\nfff";
        assert_eq!(
            wrap_paragraphs(text, 7),
            vec!["aaa bbb", "ccc ddd", "eee", "", "fff"]
        );
        assert_eq!(
            wrap_paragraphs("averyveryverylongword x", 5),
            vec!["averyveryverylongword", "x"]
        );
    }

    #[test]
    fn long_tar_names_use_gnu_long_name_entries() {
        let long = format!("./{}/x.ko", "d".repeat(150));
        let tar = build_tar(
            &[TarItem {
                name: long.clone(),
                data: Some(b"abc".to_vec()),
                mode: 0o644,
            }],
            0,
        )
        .expect("tar builds");
        let mut archive = tar::Archive::new(tar.as_slice());
        let entry = archive
            .entries()
            .expect("entries")
            .next()
            .expect("one entry")
            .expect("valid entry");
        assert_eq!(entry.path_bytes().as_ref(), long.as_bytes());
    }
}
