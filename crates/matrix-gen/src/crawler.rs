//! Falco kernel-crawler input: `{ "<distro key>": [ {kernelversion, kernelrelease, target, headers?,
//! kernelconfigdata?}, ... ] }`. Entries are read one at a time (a large feed is never held as a JSON
//! tree) and each becomes the identity a loader computes on that node — or a report line.

use std::fmt;
use std::io::Read;

use kernel_id::{
    Arch, Distribution, DriverVersion, KernelIdentity, KernelRelease, Underivable,
    deb_kernel_from_headers, derive_distro_version,
};
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::report::Report;

/// A kernel found in the feed, with its header URLs (resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrawledKernel {
    /// The identity a node booting this kernel computes.
    pub identity: KernelIdentity,
    /// Header package URLs, dot segments resolved; for deb kernels only the kernel's own (other
    /// flavors' packages in the entry are left out, see `kernel_id::deb_kernel_from_headers`).
    pub headers: Vec<String>,
}

/// Crawler distro keys this project knows but does not build for; their entries are reported as
/// unsupported rather than as invalid input.
const KNOWN_UNSUPPORTED_KEYS: &[&str] = &[
    "alinux",
    "almalinux",
    "amazonlinux",
    "amazonlinux2",
    "amazonlinux2022",
    "ol",
    "oracle6",
    "oracle7",
    "oracle8",
    "photon",
    "photonos",
    "rocky",
    "opensuse",
    "flatcar",
    "minikube",
    "redhat",
    "arch",
    "bottlerocket",
    "talos",
];

/// Keys naming supported distributions, old display names included (matched case-insensitively).
const SUPPORTED_KEYS: &[&str] = &["debian", "ubuntu", "fedora", "centos", "amazonlinux2023"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    /// Only its type is checked: the build number plays no part in identity.
    #[serde(rename = "kernelversion")]
    _kernelversion: KernelVersion,
    kernelrelease: String,
    target: String,
    #[serde(default)]
    headers: Option<Vec<String>>,
    #[serde(default)]
    #[allow(dead_code)]
    kernelconfigdata: Option<serde::de::IgnoredAny>,
}

/// `kernelversion` is a string in newer feeds and an integer in older ones.
#[derive(Deserialize)]
#[serde(untagged, expecting = "kernelversion must be a string or an integer")]
enum KernelVersion {
    Text(#[allow(dead_code)] String),
    Number(#[allow(dead_code)] u64),
}

/// Reads a crawler feed, calling `found` for every kernel that maps to a supported identity.
/// `default_arch` is the architecture the feed was crawled for (feeds are per architecture).
pub fn read_feed(
    reader: impl Read,
    default_arch: Arch,
    driver_version: &DriverVersion,
    report: &mut Report,
    found: &mut dyn FnMut(CrawledKernel),
) -> Result<(), CrawlerError> {
    let mut deserializer = serde_json::Deserializer::from_reader(std::io::BufReader::new(reader));
    let context = Context {
        default_arch,
        driver_version,
        report,
        found,
    };
    FeedSeed(context)
        .deserialize(&mut deserializer)
        .map_err(|e| CrawlerError(e.to_string()))?;
    deserializer.end().map_err(|e| CrawlerError(e.to_string()))
}

/// The feed is not a JSON object of arrays.
#[derive(Debug, thiserror::Error)]
#[error("kernel-crawler feed is malformed: {0}")]
pub struct CrawlerError(String);

struct Context<'a> {
    default_arch: Arch,
    driver_version: &'a DriverVersion,
    report: &'a mut Report,
    found: &'a mut dyn FnMut(CrawledKernel),
}

struct FeedSeed<'a>(Context<'a>);

impl<'de> DeserializeSeed<'de> for FeedSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FeedSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object keyed by distro id")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            map.next_value_seed(SectionSeed {
                key: &key,
                context: &mut self.0,
            })?;
        }
        Ok(())
    }
}

struct SectionSeed<'a, 'b> {
    key: &'a str,
    context: &'a mut Context<'b>,
}

impl<'de> DeserializeSeed<'de> for SectionSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for SectionSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of kernel entries under {:?}", self.key)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let lower = self.key.to_ascii_lowercase();
        let supported = SUPPORTED_KEYS.contains(&lower.as_str());
        let known = supported || KNOWN_UNSUPPORTED_KEYS.contains(&lower.as_str());
        let mut index = 0usize;
        while let Some(value) = seq.next_element::<serde_json::Value>()? {
            let location = format!("{}[{index}]", self.key);
            index += 1;
            if !known {
                self.context
                    .report
                    .invalid(&location, format!("unknown distro key {:?}", self.key));
                continue;
            }
            let entry = match RawEntry::deserialize(value) {
                Ok(entry) => entry,
                Err(e) => {
                    self.context.report.invalid(&location, e);
                    continue;
                }
            };
            if let Some(kernel) = resolve(&location, &entry, supported, self.context) {
                (self.context.found)(kernel);
            }
        }
        Ok(())
    }
}

fn resolve(
    location: &str,
    entry: &RawEntry,
    supported_key: bool,
    cx: &mut Context<'_>,
) -> Option<CrawledKernel> {
    let location = format!("{location} ({})", entry.kernelrelease);
    // Validation first: an injection attempt is invalid input whatever section it sits in.
    if let Err(e) = KernelRelease::parse(&entry.kernelrelease) {
        cx.report.invalid(&location, e);
        return None;
    }
    let headers: Vec<String> = entry
        .headers
        .iter()
        .flatten()
        .filter(|h| !h.is_empty())
        .map(|h| resolve_url(h))
        .collect();
    let Some((distribution, _)) =
        Distribution::from_crawler_target(&entry.target).filter(|_| supported_key)
    else {
        cx.report.unsupported(
            &location,
            format!("target {:?} is not a supported distribution", entry.target),
        );
        return None;
    };
    let (release, distro_version, headers) = match distribution.package_format() {
        kernel_id::PackageFormat::Deb => {
            let Some(kernel) = deb_kernel_from_headers(
                distribution,
                &entry.target,
                &entry.kernelrelease,
                headers.iter().map(String::as_str),
            ) else {
                cx.report.unsupported(
                    &location,
                    "no linux-headers package in `headers` names the release a node would report",
                );
                return None;
            };
            (kernel.release, kernel.distro_version, kernel.headers)
        }
        kernel_id::PackageFormat::Rpm => {
            let release = KernelRelease::parse(&entry.kernelrelease).ok()?;
            let version = derive_distro_version(release.as_str(), Some(&entry.target))
                .ok_or(Underivable::NoMarker);
            (release, version, headers)
        }
    };
    // The reason says which rule failed (no marker at all, an Ubuntu non-GA series, ...), so the
    // report counts each kind separately.
    let distro_version = match distro_version {
        Ok(version) => version,
        Err(why) => {
            cx.report.unsupported(&location, why);
            return None;
        }
    };
    if !distro_version.is_supported() {
        cx.report.unsupported(
            &location,
            format!(
                "{} {} is not supported",
                distro_version.distribution(),
                distro_version
            ),
        );
        return None;
    }
    match KernelIdentity::new(
        release,
        cx.default_arch,
        distro_version,
        cx.driver_version.clone(),
    ) {
        Ok(identity) => Some(CrawledKernel { identity, headers }),
        Err(e) => {
            cx.report.invalid(&location, e);
            None
        }
    }
}

/// Resolves `..` segments (`.../x86_64/../../blobstore/...`) so builders fetch the real location.
fn resolve_url(raw: &str) -> String {
    url::Url::parse(raw)
        .map(String::from)
        .unwrap_or_else(|_| raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(
            resolve_url("https://h/al/core/guids/abc/x86_64/../../../../blobstore/def/k.rpm"),
            "https://h/al/blobstore/def/k.rpm"
        );
    }
}
