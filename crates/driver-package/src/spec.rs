//! What goes into a driver package: [`PackageSpec`] (plain fields, validated before anything is
//! written) and its convenience constructor from a kernel identity, which takes every name from
//! `kernel-id` rather than deriving any here.

use std::path::{Component, Path, PathBuf};

use kernel_id::{DriverName, KernelIdentity, KernelRelease, PackageFormat, SourceCommit};

use crate::error::{SpecError, WriteError};

/// Where a packaged file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileContent {
    /// The bytes themselves.
    Bytes(Vec<u8>),
    /// A file on disk, read when the package is written.
    Path(PathBuf),
}

/// One file in the package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFile {
    /// Absolute install path, e.g. `/lib/modules/6.1.0-47-amd64/updates/example-driver/example_driver.ko`.
    pub install_path: String,
    /// The file's bytes.
    pub content: FileContent,
    /// Permission bits (0o644 for modules).
    pub mode: u32,
}

/// Everything needed to write a driver package. Fields are plain values so callers other than the
/// driver builder (tests, tools) can describe any package; [`PackageSpec::for_driver`] fills them from
/// a kernel identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSpec {
    /// .deb or .rpm.
    pub format: PackageFormat,
    /// Package name, valid for dpkg and rpm: `[a-z0-9][a-z0-9+.-]+`.
    pub name: String,
    /// Upstream version, starting with a digit: `[A-Za-z0-9.+~]` (no `-`, which both formats reserve).
    pub version: String,
    /// Architecture as the format spells it (`amd64`/`arm64` for .deb, `x86_64`/`aarch64` for .rpm).
    pub architecture: String,
    /// One-line summary (the .deb short description and the rpm Summary).
    pub summary: String,
    /// Longer description; paragraphs separated by blank lines.
    pub description: String,
    /// `Name <email>`.
    pub maintainer: String,
    /// SPDX license expression of the packaged modules, e.g. `GPL-2.0-only`.
    pub license: String,
    /// Kernel release whose module index `depmod -a` refreshes on install and removal.
    pub kernel_release: KernelRelease,
    /// The files to install.
    pub files: Vec<PackageFile>,
    /// Timestamp used for every mtime, the changelog and the rpm build time (reproducible builds).
    pub source_date_epoch: u32,
    /// The commit of the driver source the modules were built from: the .deb control field
    /// [`DEB_SOURCE_COMMIT_FIELD`] and the rpm `VCS` tag. [`PackageSpec::for_driver`] leaves it
    /// empty; the builder sets it.
    pub source_commit: Option<SourceCommit>,
}

/// The .deb control field carrying [`PackageSpec::source_commit`]. Debian has no binary-package
/// field for a source commit (`Vcs-*` are source-package fields naming a repository, not a
/// revision), so it is a field of our own; lintian reports it as `unknown-field`, a warning, never
/// an error, and dpkg keeps it in its status database (`dpkg-query -W -f
/// '${Kdriver-Source-Commit}'`).
pub const DEB_SOURCE_COMMIT_FIELD: &str = "Kdriver-Source-Commit";

/// Longest summary rpmlint accepts without an error.
const MAX_SUMMARY_LEN: usize = 79;

/// The default reproducible timestamp: 2024-01-01T00:00:00Z.
pub const DEFAULT_SOURCE_DATE_EPOCH: u32 = 1_704_067_200;

/// The maintainer used by [`PackageSpec::for_driver`] unless the caller replaces it.
pub const DEFAULT_MAINTAINER: &str = "Kernel Driver Builder <driver-builder@example.com>";

/// The license used by [`PackageSpec::for_driver`]; out-of-tree modules that use GPL-only kernel
/// symbols must be GPL-compatible.
pub const DEFAULT_LICENSE: &str = "GPL-2.0-only";

impl PackageSpec {
    /// A spec for `driver`'s modules built for `identity`: name, version, description and install
    /// directory come from `kernel-id`, the architecture spelling and format from the identity's
    /// distribution. `ko_files` are `(file name, content)`; each is installed with mode 0644 under
    /// `identity.module_install_dir(driver)`.
    pub fn for_driver(
        driver: &DriverName,
        identity: &KernelIdentity,
        ko_files: impl IntoIterator<Item = (String, FileContent)>,
    ) -> Result<PackageSpec, SpecError> {
        let format = identity.distribution().package_format();
        let architecture = match format {
            PackageFormat::Deb => identity.arch().debian_name(),
            PackageFormat::Rpm => identity.arch().rpm_name(),
        };
        let install_dir = identity.module_install_dir(driver);
        let mut files = Vec::new();
        for (index, (file_name, content)) in ko_files.into_iter().enumerate() {
            let field = format!("ko_files[{index}]");
            if file_name.is_empty()
                || file_name.contains('/')
                || file_name == "."
                || file_name == ".."
            {
                return Err(SpecError::new(
                    field,
                    format!("'{file_name}' must be a plain file name"),
                ));
            }
            if !crate::compression::is_kernel_module_name(&file_name) {
                return Err(SpecError::new(
                    field,
                    format!("'{file_name}' must end in .ko, .ko.gz, .ko.xz or .ko.zst"),
                ));
            }
            files.push(PackageFile {
                install_path: format!("{install_dir}/{file_name}"),
                content,
                mode: 0o644,
            });
        }
        // rpmlint refuses summaries over 79 columns (lintian warns past 80); kernel-id's one-line
        // description can be longer for long releases, so it then opens the long description instead.
        let full_description = identity.package_description(driver);
        let summary = [
            full_description.clone(),
            format!(
                "{driver} {} kernel module for Linux {}",
                identity.driver_version(),
                identity.kernel_release()
            ),
            format!("{driver} {} kernel module", identity.driver_version()),
        ]
        .into_iter()
        .find(|candidate| candidate.len() <= MAX_SUMMARY_LEN)
        .unwrap_or_else(|| format!("{driver} kernel module"));
        let spec = PackageSpec {
            format,
            name: identity.package_name(driver),
            version: identity.package_version(),
            architecture: architecture.to_owned(),
            description: format!(
                "{lead}Out-of-tree kernel modules of {driver} {version}, built for exactly one kernel: \
                 release {release}, {arch}, {distribution} {distro_version}.\n\
                 \n\
                 The modules are installed under {install_dir} and the module \
                 index is refreshed with depmod on installation and removal.",
                lead = if summary == full_description {
                    String::new()
                } else {
                    format!("{full_description}.\n\n")
                },
                version = identity.driver_version(),
                release = identity.kernel_release(),
                arch = identity.arch(),
                distribution = identity.distribution(),
                distro_version = identity.distro_version(),
            ),
            summary,
            maintainer: DEFAULT_MAINTAINER.to_owned(),
            license: DEFAULT_LICENSE.to_owned(),
            kernel_release: identity.kernel_release().clone(),
            files,
            source_date_epoch: DEFAULT_SOURCE_DATE_EPOCH,
            source_commit: None,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every field; writing calls this first so nothing is written for an invalid spec.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name(&self.name)?;
        validate_version(&self.version)?;
        if self.architecture.is_empty()
            || !self
                .architecture
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(SpecError::new(
                "architecture",
                format!("'{}' must be non-empty [a-z0-9_-]", self.architecture),
            ));
        }
        validate_line("summary", &self.summary, 200)?;
        if self.description.trim().is_empty() {
            return Err(SpecError::new("description", "must not be empty"));
        }
        if self
            .description
            .chars()
            .any(|c| c.is_control() && c != '\n')
        {
            return Err(SpecError::new(
                "description",
                "must not contain control characters other than newlines",
            ));
        }
        validate_line("maintainer", &self.maintainer, 200)?;
        if !(self.maintainer.contains('<')
            && self.maintainer.ends_with('>')
            && self.maintainer.contains('@'))
        {
            return Err(SpecError::new(
                "maintainer",
                format!("'{}' must look like 'Name <email@host>'", self.maintainer),
            ));
        }
        validate_line("license", &self.license, 200)?;
        if self.files.is_empty() {
            return Err(SpecError::new("files", "a package needs at least one file"));
        }
        let mut seen = std::collections::HashSet::new();
        for (index, file) in self.files.iter().enumerate() {
            let field = format!("files[{index}].install_path");
            validate_install_path(&field, &file.install_path)?;
            if !seen.insert(file.install_path.as_str()) {
                return Err(SpecError::new(
                    field,
                    format!("'{}' is listed twice", file.install_path),
                ));
            }
            if file.mode & !0o777 != 0 {
                return Err(SpecError::new(
                    format!("files[{index}].mode"),
                    format!("{:o} must only have permission bits (0o777)", file.mode),
                ));
            }
        }
        // A path that is both a file and a parent of another file cannot be installed.
        for file in &self.files {
            let as_dir = format!("{}/", file.install_path);
            if self
                .files
                .iter()
                .any(|other| other.install_path.starts_with(&as_dir))
            {
                return Err(SpecError::new(
                    "files",
                    format!(
                        "'{}' is a file and also a directory of another file",
                        file.install_path
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The files sorted by install path, with their bytes loaded.
    pub(crate) fn load_files(&self) -> Result<Vec<(String, Vec<u8>, u32)>, WriteError> {
        let mut loaded = Vec::with_capacity(self.files.len());
        for file in &self.files {
            let bytes = match &file.content {
                FileContent::Bytes(bytes) => bytes.clone(),
                FileContent::Path(path) => {
                    std::fs::read(path).map_err(|source| WriteError::io(path, source))?
                }
            };
            loaded.push((file.install_path.clone(), bytes, file.mode));
        }
        loaded.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(loaded)
    }
}

fn validate_name(name: &str) -> Result<(), SpecError> {
    let bytes = name.as_bytes();
    let ok = bytes.len() >= 2
        && bytes.len() <= 200
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|&b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'+' || b == b'.' || b == b'-'
        });
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            "name",
            format!(
                "'{name}' must be 2-200 characters of [a-z0-9+.-] starting with a letter or digit"
            ),
        ))
    }
}

fn validate_version(version: &str) -> Result<(), SpecError> {
    let ok = version.len() <= 100
        && version.as_bytes().first().is_some_and(u8::is_ascii_digit)
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'+' || b == b'~');
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            "version",
            format!("'{version}' must start with a digit and only contain [A-Za-z0-9.+~]"),
        ))
    }
}

fn validate_line(field: &str, value: &str, max: usize) -> Result<(), SpecError> {
    if value.trim().is_empty() {
        return Err(SpecError::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(SpecError::new(
            field,
            format!("must be at most {max} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(SpecError::new(
            field,
            "must be a single line without control characters",
        ));
    }
    Ok(())
}

fn validate_install_path(field: &str, path: &str) -> Result<(), SpecError> {
    if !path.starts_with('/') {
        return Err(SpecError::new(field, format!("'{path}' must be absolute")));
    }
    if path.ends_with('/') || path.contains("//") {
        return Err(SpecError::new(
            field,
            format!("'{path}' must be a normalized file path"),
        ));
    }
    // These paths end up in md5sums lines, tar headers and rpm file lists.
    if !path.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'+' | b'~' | b'@')
    }) {
        return Err(SpecError::new(
            field,
            format!("'{path}' must only contain [A-Za-z0-9/._+~@-]"),
        ));
    }
    for component in Path::new(path).components() {
        if matches!(component, Component::ParentDir | Component::CurDir) {
            return Err(SpecError::new(
                field,
                format!("'{path}' must not contain '.' or '..' components"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PackageSpec {
        PackageSpec {
            format: PackageFormat::Deb,
            name: "example-driver-6.1.0-47-amd64".into(),
            version: "0.1.2".into(),
            architecture: "amd64".into(),
            summary: "example".into(),
            description: "long".into(),
            maintainer: "A <a@b.c>".into(),
            license: "GPL-2.0-only".into(),
            kernel_release: KernelRelease::parse("6.1.0-47-amd64").expect("valid release"),
            files: vec![PackageFile {
                install_path:
                    "/lib/modules/6.1.0-47-amd64/updates/example-driver/example_driver.ko".into(),
                content: FileContent::Bytes(b"\x7fELF".to_vec()),
                mode: 0o644,
            }],
            source_date_epoch: DEFAULT_SOURCE_DATE_EPOCH,
            source_commit: None,
        }
    }

    #[test]
    fn valid_spec_passes() {
        spec().validate().expect("valid");
    }

    #[test]
    fn bad_fields_are_named() {
        type Mutation = Box<dyn Fn(&mut PackageSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("name", Box::new(|s| s.name = "Bad_Name".into())),
            ("version", Box::new(|s| s.version = "v0.1.2".into())),
            ("version", Box::new(|s| s.version = "0.1-2".into())),
            (
                "architecture",
                Box::new(|s| s.architecture = "AMD 64".into()),
            ),
            ("summary", Box::new(|s| s.summary = "two\nlines".into())),
            ("maintainer", Box::new(|s| s.maintainer = "nobody".into())),
            ("files", Box::new(|s| s.files.clear())),
            (
                "files[0].install_path",
                Box::new(|s| s.files[0].install_path = "relative.ko".into()),
            ),
            (
                "files[0].install_path",
                Box::new(|s| s.files[0].install_path = "/lib/../etc/x".into()),
            ),
            (
                "files[0].install_path",
                Box::new(|s| s.files[0].install_path = "/lib/x y.ko".into()),
            ),
            ("files[0].mode", Box::new(|s| s.files[0].mode = 0o4755)),
        ];
        for (field, mutate) in cases {
            let mut bad = spec();
            mutate(&mut bad);
            let err = bad.validate().expect_err("invalid spec");
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn duplicate_and_file_as_directory_are_refused() {
        let mut dup = spec();
        dup.files.push(dup.files[0].clone());
        assert!(dup.validate().is_err());
        let mut nested = spec();
        let mut child = nested.files[0].clone();
        child.install_path = format!("{}/x.ko", nested.files[0].install_path);
        nested.files.push(child);
        assert!(nested.validate().is_err());
    }

    #[test]
    fn for_driver_takes_names_from_kernel_id() {
        use kernel_id::{Arch, Distribution, DistroVersion, DriverVersion};
        let driver = DriverName::parse("example-driver").expect("driver");
        let make = |distribution: &str, version: &str, release: &str| {
            let distribution = Distribution::parse(distribution).expect("distribution");
            KernelIdentity::new(
                KernelRelease::parse(release).expect("release"),
                Arch::X86_64,
                DistroVersion::parse(distribution, version).expect("distro version"),
                DriverVersion::parse("v1.0.0-rc.1").expect("driver version"),
            )
            .expect("identity")
        };
        let ko = || {
            [(
                "example_driver.ko".to_owned(),
                FileContent::Bytes(b"\x7fELF".to_vec()),
            )]
        };

        let debian = make("debian", "12", "6.1.0-47-amd64");
        let spec = PackageSpec::for_driver(&driver, &debian, ko()).expect("deb spec");
        assert_eq!(spec.format, PackageFormat::Deb);
        assert_eq!(spec.architecture, "amd64");
        assert_eq!(spec.name, debian.package_name(&driver));
        assert_eq!(spec.version, "1.0.0~rc.1");
        assert_eq!(
            spec.files[0].install_path,
            format!("{}/example_driver.ko", debian.module_install_dir(&driver))
        );

        let fedora = make("fedora", "42", "6.14.0-63.fc42.x86_64");
        let spec = PackageSpec::for_driver(&driver, &fedora, ko()).expect("rpm spec");
        assert_eq!(spec.format, PackageFormat::Rpm);
        assert_eq!(spec.architecture, "x86_64");
        assert!(spec.summary.len() <= MAX_SUMMARY_LEN, "{}", spec.summary);
        assert!(spec.description.contains("6.14.0-63.fc42.x86_64"));

        let bad = PackageSpec::for_driver(
            &driver,
            &debian,
            [("../x.ko".to_owned(), FileContent::Bytes(vec![]))],
        );
        assert_eq!(bad.expect_err("path in name").field, "ko_files[0]");
        let bad = PackageSpec::for_driver(
            &driver,
            &debian,
            [("x.txt".to_owned(), FileContent::Bytes(vec![]))],
        );
        assert_eq!(bad.expect_err("not a module").field, "ko_files[0]");
    }
}
