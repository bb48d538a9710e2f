//! kernels.json: the fleet's list of kernels that really booted, in the seed's schema
//! `{"x86_64": [{"target", "kernelrelease", "distroversion"}], "aarch64": [...]}`.
//! Pure: text in, value out; output is stable (sorted, deduplicated, fixed formatting) so an insert
//! changes only the lines of the new entry.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::arch::Arch;
use crate::distro::{Distribution, DistroVersion};
use crate::driver::DriverVersion;
use crate::error::{Field, IdError};
use crate::identity::KernelIdentity;
use crate::release::KernelRelease;
use crate::version_order::kernel_release_cmp;

/// One kernel in kernels.json.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelsEntry {
    /// kernel-crawler target: `debian`, `ubuntu-generic`, `fedora`, `centos`, `amazonlinux2023`.
    pub target: String,
    /// The `uname -r` string.
    pub kernelrelease: String,
    /// The distribution version.
    pub distroversion: String,
}

impl KernelsEntry {
    /// The entry describing an identity's kernel.
    pub fn for_identity(identity: &KernelIdentity) -> Self {
        Self {
            target: identity.crawler_target(),
            kernelrelease: identity.kernel_release().to_string(),
            distroversion: identity.distro_version().to_string(),
        }
    }

    /// The distribution version this entry names, checked against its target.
    pub fn distro_version(&self) -> Result<DistroVersion, IdError> {
        let (distribution, target_version) = Distribution::from_crawler_target(&self.target)
            .ok_or_else(|| {
                IdError::new(
                    Field::Distribution,
                    format!("target {:?} names no supported distribution", self.target),
                )
            })?;
        let version = DistroVersion::parse(distribution, &self.distroversion)?;
        if target_version.is_some_and(|v| v != version.as_str()) {
            return Err(IdError::new(
                Field::DistroVersion,
                format!(
                    "distroversion {} contradicts target {}",
                    self.distroversion, self.target
                ),
            ));
        }
        Ok(version)
    }

    /// The identity of this kernel's artifact for one architecture and driver version.
    pub fn identity(
        &self,
        arch: Arch,
        driver_version: &DriverVersion,
    ) -> Result<KernelIdentity, IdError> {
        KernelIdentity::new(
            KernelRelease::parse(&self.kernelrelease)?,
            arch,
            self.distro_version()?,
            driver_version.clone(),
        )
    }

    fn validate(&self) -> Result<(), IdError> {
        KernelRelease::parse(&self.kernelrelease)?;
        self.distro_version()?;
        Ok(())
    }
}

/// The whole kernels.json document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelsFile {
    x86_64: Vec<KernelsEntry>,
    aarch64: Vec<KernelsEntry>,
}

#[derive(Serialize)]
struct Document<'a> {
    x86_64: &'a [KernelsEntry],
    aarch64: &'a [KernelsEntry],
}

impl KernelsFile {
    /// Parses and validates kernels.json; errors name the offending entry (`x86_64[3]`).
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let raw: BTreeMap<String, Vec<serde_json::Value>> = serde_json::from_str(text)
            .map_err(|e| IdError::new(Field::KernelsJson, format!("invalid document: {e}")))?;
        let mut file = Self::default();
        for (key, values) in raw {
            let arch = match key.as_str() {
                "x86_64" => Arch::X86_64,
                "aarch64" => Arch::Aarch64,
                other => {
                    return Err(IdError::new(
                        Field::KernelsJson,
                        format!("unknown architecture key {other:?} (expected x86_64 or aarch64)"),
                    ));
                }
            };
            for (index, value) in values.into_iter().enumerate() {
                let at = |rule: String| {
                    IdError::new(Field::KernelsJson, format!("{key}[{index}]: {rule}"))
                };
                let entry: KernelsEntry =
                    serde_json::from_value(value).map_err(|e| at(e.to_string()))?;
                entry.validate().map_err(|e| at(e.to_string()))?;
                file.insert_for(arch, entry);
            }
        }
        Ok(file)
    }

    /// The canonical text: both architectures, entries sorted and unique, 2-space indent, final newline.
    pub fn to_json_string(&self) -> String {
        let doc = Document {
            x86_64: &self.x86_64,
            aarch64: &self.aarch64,
        };
        let mut text = serde_json::to_string_pretty(&doc).expect("plain strings always serialize");
        text.push('\n');
        text
    }

    /// Adds an identity's kernel; false when it was already there.
    pub fn insert(&mut self, identity: &KernelIdentity) -> bool {
        self.insert_for(identity.arch(), KernelsEntry::for_identity(identity))
    }

    /// Adds an entry for an architecture; false when it was already there.
    pub fn insert_for(&mut self, arch: Arch, entry: KernelsEntry) -> bool {
        let list = self.list_mut(arch);
        match list.binary_search_by(|probe| entry_order(probe, &entry)) {
            Ok(_) => false,
            Err(at) => {
                list.insert(at, entry);
                true
            }
        }
    }

    /// The entries of one architecture, in canonical order.
    pub fn entries(&self, arch: Arch) -> &[KernelsEntry] {
        match arch {
            Arch::X86_64 => &self.x86_64,
            Arch::Aarch64 => &self.aarch64,
        }
    }

    /// Every entry with its architecture.
    pub fn iter(&self) -> impl Iterator<Item = (Arch, &KernelsEntry)> {
        Arch::ALL
            .into_iter()
            .flat_map(move |arch| self.entries(arch).iter().map(move |e| (arch, e)))
    }

    fn list_mut(&mut self, arch: Arch) -> &mut Vec<KernelsEntry> {
        match arch {
            Arch::X86_64 => &mut self.x86_64,
            Arch::Aarch64 => &mut self.aarch64,
        }
    }
}

fn entry_order(a: &KernelsEntry, b: &KernelsEntry) -> Ordering {
    // Targets and distro versions are labels with numbers in them (`stream9` < `stream10`); the
    // kernel release order gives them the same digit-aware order, and it only calls identical
    // strings equal, which `insert_for`'s deduplication relies on.
    kernel_release_cmp(&a.target, &b.target)
        .then_with(|| kernel_release_cmp(&a.distroversion, &b.distroversion))
        .then_with(|| kernel_release_cmp(&a.kernelrelease, &b.kernelrelease))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
  "x86_64": [
    {"target": "debian", "kernelrelease": "6.1.0-47-amd64", "distroversion": "12"},
    {"target": "debian", "kernelrelease": "6.1.0-10-amd64", "distroversion": "12"},
    {"target": "debian", "kernelrelease": "6.1.0-9-amd64", "distroversion": "12"},
    {"target": "debian", "kernelrelease": "6.1.0-47-amd64", "distroversion": "12"}
  ]
}"#;

    #[test]
    fn output_is_sorted_deduplicated_and_stable() {
        let file = KernelsFile::parse(SAMPLE).unwrap();
        let releases: Vec<&str> = file
            .entries(Arch::X86_64)
            .iter()
            .map(|e| e.kernelrelease.as_str())
            .collect();
        assert_eq!(
            releases,
            ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-47-amd64"]
        );
        let text = file.to_json_string();
        assert_eq!(KernelsFile::parse(&text).unwrap().to_json_string(), text);
    }

    #[test]
    fn errors_name_the_entry() {
        let bad = r#"{"x86_64": [{"target": "debian", "kernelrelease": "6.1.0-47-amd64", "distroversion": "12"},
                                  {"target": "debian", "kernelrelease": "$(id)", "distroversion": "12"}]}"#;
        let e = KernelsFile::parse(bad).unwrap_err();
        assert!(e.to_string().contains("x86_64[1]"), "{e}");
        assert!(e.to_string().contains("kernel_version"), "{e}");
    }
}
