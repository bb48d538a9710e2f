//! Falco kernel-crawler input: `{ "<distro key>": [ {kernelversion, kernelrelease, target, headers?,
//! kernelconfigdata?}, ... ] }`. Entries are read one at a time (a large feed is never held as a JSON
//! tree) and each becomes the identity a loader computes on that node — or a report line.
//!
//! The feed's bytes are held whole, though: parsing a slice lets strings borrow from it instead of
//! being copied through a reader byte by byte, which is most of what reading 100,000 entries costs.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;

use kernel_id::{
    Arch, Distribution, DriverVersion, KernelIdentity, KernelRelease, Underivable,
    deb_kernel_from_headers, derive_distro_version,
};
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

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
    let mut reader = reader;
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| CrawlerError(e.to_string()))?;
    let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
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
        while let Some(element) = seq.next_element::<Lenient<'de>>()? {
            let at = index;
            index += 1;
            let location = || format!("{}[{at}]", self.key);
            if !known {
                self.context
                    .report
                    .invalid(&location(), format!("unknown distro key {:?}", self.key));
                continue;
            }
            let entry = match element.into_entry() {
                Ok(entry) => entry,
                Err(e) => {
                    self.context.report.invalid(&location(), e);
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
    location: &dyn Fn() -> String,
    entry: &Entry<'_>,
    supported_key: bool,
    cx: &mut Context<'_>,
) -> Option<CrawledKernel> {
    // Built only when something is reported: most entries never need it.
    let location = || format!("{} ({})", location(), entry.kernelrelease);
    // Validation first: an injection attempt is invalid input whatever section it sits in.
    let parsed_release = match KernelRelease::parse(&entry.kernelrelease) {
        Ok(release) => release,
        Err(e) => {
            cx.report.invalid(&location(), e);
            return None;
        }
    };
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
            &location(),
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
                    &location(),
                    "no linux-headers package in `headers` names the release a node would report",
                );
                return None;
            };
            (kernel.release, kernel.distro_version, kernel.headers)
        }
        kernel_id::PackageFormat::Rpm => {
            let release = parsed_release;
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
            cx.report.unsupported(&location(), why);
            return None;
        }
    };
    if !distro_version.is_supported() {
        cx.report.unsupported(
            &location(),
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
            cx.report.invalid(&location(), e);
            None
        }
    }
}

/// Resolves `..` segments (`.../x86_64/../../blobstore/...`) so builders fetch the real location.
fn resolve_url(raw: &str) -> String {
    if already_normal(raw) {
        return raw.to_owned();
    }
    url::Url::parse(raw)
        .map(String::from)
        .unwrap_or_else(|_| raw.to_owned())
}

/// Whether `url::Url` would serialize `raw` unchanged: a lowercase `http(s)` scheme, a plain
/// lowercase DNS host (no port, user, IP address or IDNA label), and a path of characters no
/// percent-encode set touches, without dot segments and without query or fragment. Nearly every feed
/// URL is like this, and parsing 200,000 of them cost more than the rest of a plan; anything else
/// takes the parser.
fn already_normal(raw: &str) -> bool {
    let Some(rest) = raw
        .strip_prefix("https://")
        .or_else(|| raw.strip_prefix("http://"))
    else {
        return false;
    };
    let Some((host, path)) = rest.find('/').map(|at| rest.split_at(at)) else {
        return false;
    };
    let label_ok = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && !label.starts_with("xn--")
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    // A last label starting with a letter can't be read as an IPv4 address.
    let host_ok = host.split('.').all(label_ok)
        && host
            .rsplit('.')
            .next()
            .is_some_and(|last| last.starts_with(|c: char| c.is_ascii_lowercase()));
    let path_ok = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'))
        && path
            .split('/')
            .all(|segment| segment != "." && segment != "..");
    host_ok && path_ok
}

/// One array element as parsed: strings borrowed from the feed where they can be. Parsing into this
/// never fails on well-formed JSON, so a malformed entry is reported, not fatal, exactly as when each
/// element was a `serde_json::Value`.
enum Lenient<'de> {
    Str(Cow<'de, str>),
    Seq(Vec<Lenient<'de>>),
    Map(Vec<(Cow<'de, str>, Lenient<'de>)>),
    Other(Value),
}

/// The fields of an entry that planning reads.
struct Entry<'de> {
    kernelrelease: Cow<'de, str>,
    target: Cow<'de, str>,
    headers: Option<Vec<Cow<'de, str>>>,
}

impl<'de> Lenient<'de> {
    /// The entry, or the error `RawEntry` gives for this element (same message: the slow path is
    /// `RawEntry` itself, taken whenever the element is not plainly well formed).
    fn into_entry(self) -> Result<Entry<'de>, serde_json::Error> {
        if let Lenient::Map(fields) = &self
            && plainly_well_formed(fields)
            && let Lenient::Map(fields) = self
        {
            let mut entry = Entry {
                kernelrelease: Cow::Borrowed(""),
                target: Cow::Borrowed(""),
                headers: None,
            };
            for (key, value) in fields {
                match (key.as_ref(), value) {
                    ("kernelrelease", Lenient::Str(v)) => entry.kernelrelease = v,
                    ("target", Lenient::Str(v)) => entry.target = v,
                    ("headers", Lenient::Seq(items)) => {
                        entry.headers = Some(
                            items
                                .into_iter()
                                .filter_map(|item| match item {
                                    Lenient::Str(v) => Some(v),
                                    _ => None,
                                })
                                .collect(),
                        )
                    }
                    _ => {}
                }
            }
            return Ok(entry);
        }
        let raw = RawEntry::deserialize(self.into_value())?;
        Ok(Entry {
            kernelrelease: Cow::Owned(raw.kernelrelease),
            target: Cow::Owned(raw.target),
            headers: raw
                .headers
                .map(|headers| headers.into_iter().map(Cow::Owned).collect()),
        })
    }

    /// The `serde_json::Value` the element parses to.
    fn into_value(self) -> Value {
        match self {
            Lenient::Str(v) => Value::String(v.into_owned()),
            Lenient::Seq(items) => {
                Value::Array(items.into_iter().map(Lenient::into_value).collect())
            }
            Lenient::Map(fields) => {
                let mut map = serde_json::Map::new();
                for (key, value) in fields {
                    map.insert(key.into_owned(), value.into_value());
                }
                Value::Object(map)
            }
            Lenient::Other(v) => v,
        }
    }
}

/// Whether `RawEntry` certainly accepts these fields: only its own, each once, of its types.
fn plainly_well_formed(fields: &[(Cow<'_, str>, Lenient<'_>)]) -> bool {
    let mut seen = [false; 5];
    for (key, value) in fields {
        let (slot, ok) = match key.as_ref() {
            "kernelversion" => (
                0,
                matches!(value, Lenient::Str(_))
                    || matches!(value, Lenient::Other(v) if v.is_u64()),
            ),
            "kernelrelease" => (1, matches!(value, Lenient::Str(_))),
            "target" => (2, matches!(value, Lenient::Str(_))),
            "headers" => (
                3,
                matches!(value, Lenient::Seq(items) if items.iter().all(|i| matches!(i, Lenient::Str(_)))),
            ),
            "kernelconfigdata" => (4, true),
            _ => return false,
        };
        if !ok || seen[slot] {
            return false;
        }
        seen[slot] = true;
    }
    seen[0] && seen[1] && seen[2]
}

impl<'de> Deserialize<'de> for Lenient<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LenientVisitor)
    }
}

struct LenientVisitor;

impl<'de> Visitor<'de> for LenientVisitor {
    type Value = Lenient<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Lenient::Other(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Lenient::Other(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Lenient::Other(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Lenient::Other(Value::from(v)))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Lenient::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Lenient::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Lenient::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Lenient::Other(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Lenient::Other(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Lenient::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Lenient<'de>>()? {
            items.push(item);
        }
        Ok(Lenient::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            fields.push((key, map.next_value::<Lenient<'de>>()?));
        }
        Ok(Lenient::Map(fields))
    }
}

/// A map key, borrowed when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
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

    /// The shortcut answers only where the parser would give the same string.
    #[test]
    fn shortcut_agrees_with_the_parser() {
        for raw in [
            "http://deb.debian.org/debian/pool/main/l/linux/linux-headers-6.1.0-1-amd64_6.1.20-1_amd64.deb",
            "https://kojipkgs.fedoraproject.org/packages/kernel/6.14.0/100.fc42/x86_64/kernel-devel-6.14.0-100.fc42.x86_64.rpm",
            "http://archive.ubuntu.com/ubuntu/pool/main/l/linux-hwe-6.8/x_6.8.0-10.13~22.04.1_all.deb",
            "https://h/a/./b",
            "https://h/a/../b",
            "https://H/a",
            "HTTPS://h/a",
            "http://127.1/a",
            "http://h:80/a",
            "http://h",
            "http://h/a b",
            "http://h/a%2e%2e/b",
            "http://xn--nxasmq6b/a",
        ] {
            let parsed = url::Url::parse(raw).map(String::from);
            if already_normal(raw) {
                assert_eq!(parsed.as_deref(), Ok(raw), "{raw}");
            }
            assert_eq!(
                resolve_url(raw),
                parsed.unwrap_or_else(|_| raw.to_owned()),
                "{raw}"
            );
        }
    }
}
