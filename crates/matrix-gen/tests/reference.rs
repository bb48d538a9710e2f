//! An independent reference for the kernel-crawler path (issue 17).
//!
//! The golden files in tests/golden were written by the binary itself, so they catch change, not error.
//! Here every entry of a crawler feed is read by a separate, deliberately simple rule written from the
//! crawler's documented schema (falcosecurity/kernel-crawler: `kernelrelease`, `kernelversion`,
//! `target`, `headers`; Debian entries keyed by package version plus flavor, Ubuntu entries by ABI plus
//! the crawler's flavor; see tests/data/README.md) — never by calling matrix-gen's or kernel-id's
//! derivation code — and the binary's plan is compared with it entry by entry (one run of the binary per
//! entry): planned or skipped, as which node release and distro version, with which header URLs, and
//! for skipped entries, why. A whole-feed run must then equal the reference's merged plan and count the
//! same skipped entries.
//!
//! The reference rule:
//!
//! 1. **Family** from the top-level key, case-insensitively: `debian`, `ubuntu` (deb), `fedora`,
//!    `centos`, `amazonlinux2023` (rpm). Any other key is a family the project does not build for.
//! 2. **Node release.** rpm: `kernelrelease` as is (`<version>-<release>.<arch>`). deb: the entry's own
//!    header package `linux-headers-<abi>-<flavor>_<version>_<arch>.deb` (arch not `all`; the ABI is the
//!    leading dash-separated parts that start with a digit, the flavor the rest), which is the one where
//!    Debian: `kernelrelease` == `<version>-<flavor>` exactly (package version plus flavor); Ubuntu:
//!    `kernelrelease` == `<abi>-<crawler flavor>` where the crawler flavor is the flavor itself, the
//!    flavor plus a source suffix (`-5.4`, `-edge`, `-hwe-5.15`), or an HWE stack (`hwe...`,
//!    `lts-<codename>`), whose node flavor is `generic`. No such package: skipped.
//! 3. **Distro version.** Debian: the rightmost `~bpoNN`, `~debNN` or `+debNN` in the package version
//!    (a `~` suffix is a rebuild for an older release), else `+debNN` / `.debNN.` in the ABI; Ubuntu:
//!    `~YY.MM` in the own package's version (the upload the entry's `kernelversion` names), else —
//!    a kernel built in its own release — the release whose GA series (Ubuntu kernel lifecycle) is
//!    the ABI's `major.minor`, provided the own package's source (`pool/<component>/<prefix>/<source>/`
//!    in its URL) is built per release: `linux` or `linux-<name>` where no word of the name is a
//!    version number, `oem`, `hwe`, `edge` or `lts` (those are skipped as non-GA series); Fedora a
//!    `fcNN` field; CentOS an `elN` field with N >= 8 is Stream N (`el7` is not Stream, `el8_4` is a
//!    CentOS Linux point release); Amazon Linux an `amznNNNN` field. None: skipped; a version outside
//!    the support table: skipped.
//! 4. **Header URLs** (dot segments resolved): rpm `kernel-devel-<kernelrelease>.rpm` only; deb the own
//!    package plus, for Debian, `linux-headers-<abi>-common` (`-common-rt` for `rt-` flavors) of the
//!    same version and the `linux-kbuild-<major.minor>` / `linux-kbuild-<abi>` tools of the same arch
//!    (any upload: the crawler lists one), for Ubuntu the flavor-independent `*-headers-<abi>` of the
//!    same version. Never another flavor's package.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_matrix-gen");

/// The project's support table (kernel-id's distribution table; the image list in
/// .github/workflows/base-images.yml), restated by hand: a change there must be made here too.
const SUPPORTED: &[(&str, &[&str])] = &[
    ("debian", &["11", "12", "13"]),
    ("ubuntu", &["22.04", "24.04", "25.10", "26.04"]),
    ("fedora", &["42", "43"]),
    ("centos", &["stream9", "stream10"]),
    ("amazonlinux", &["2023"]),
];

/// Each supported Ubuntu release's GA kernel series, from Ubuntu's kernel lifecycle
/// (ubuntu.com/kernel/lifecycle), restated by hand like `SUPPORTED`.
const UBUNTU_GA_SERIES: &[(&str, &str)] = &[
    ("22.04", "5.15"),
    ("24.04", "6.8"),
    ("25.10", "6.17"),
    ("26.04", "7.0"),
];

/// Debian featuresets whose flavors share `linux-headers-<abi>-common-<featureset>` instead of
/// `-common` (`cloud-amd64` is a flavor of the default featureset).
const DEBIAN_FEATURESETS: &[&str] = &["rt"];

/// A disagreement the reference rule can't settle, with why. The test fails if one of these stops
/// occurring exactly as written, so the list stays true.
struct Known {
    entry: &'static str,
    reference: &'static str,
    binary: &'static str,
    why: &'static str,
}

/// Ubuntu 14.04's HWE stacks (`linux-lts-utopic` ... `linux-lts-xenial`) built the `generic` and
/// `lowlatency` flavors just like the later `linux-hwe-*` sources, and the crawler names their entries
/// `<abi>-lts-<codename>`. The reference reads them as `generic` kernels (as the binary does for
/// `-hwe`), so it gets to the series, 14.04, and skips them as unsupported; the binary only knows the
/// `hwe` spelling and skips them earlier for having no headers of their own. Both skip; only the
/// reason differs, for a series the project never builds for, so the binary is left as it is. The
/// reference is too simple here as well: such an entry lists both flavors and stands for either
/// kernel; reading it as `generic` (for `hwe` and `lts-` alike) is a convention, not a fact.
const LTS_WHY: &str =
    "14.04 HWE stacks are named lts-<codename>; binary reports a less precise reason, both skip";

const SAMPLE_KNOWN: &[Known] = &[
    Known {
        entry: "Ubuntu[70]",
        reference: "skipped: ubuntu 14.04 is not supported",
        binary: "skipped: no linux-headers package of its own",
        why: LTS_WHY,
    },
    Known {
        entry: "Ubuntu[71]",
        reference: "skipped: ubuntu 14.04 is not supported",
        binary: "skipped: no linux-headers package of its own",
        why: LTS_WHY,
    },
    Known {
        entry: "Ubuntu[72]",
        reference: "skipped: ubuntu 14.04 is not supported",
        binary: "skipped: no linux-headers package of its own",
        why: LTS_WHY,
    },
    Known {
        entry: "Ubuntu[73]",
        reference: "skipped: ubuntu 14.04 is not supported",
        binary: "skipped: no linux-headers package of its own",
        why: LTS_WHY,
    },
    Known {
        entry: "Ubuntu[74]",
        reference: "skipped: ubuntu 14.04 is not supported",
        binary: "skipped: no linux-headers package of its own",
        why: LTS_WHY,
    },
];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Job {
    kernel_version: String,
    distribution: String,
    distro_version: String,
    headers: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Skip {
    UnsupportedFamily,
    NoOwnHeaders,
    Underivable,
    /// Ubuntu without `~YY.MM`, from an OEM, HWE, edge, LTS-enablement or versioned source.
    UbuntuNonGa,
    /// Ubuntu without `~YY.MM`, per-release source, but no supported release's GA series.
    UbuntuNoGaSeries,
    /// Ubuntu without `~YY.MM`, and no pool path names the source.
    UbuntuSourceUnknown,
    Unsupported(String),
    /// A reason only the binary gives.
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Planned(Job),
    Skipped(Skip),
    /// Only the binary: an entry it refused as malformed.
    Invalid(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Planned(job) => {
                let files: Vec<&str> = job
                    .headers
                    .iter()
                    .map(|h| h.rsplit('/').next().unwrap_or(h))
                    .collect();
                write!(
                    f,
                    "planned: {} on {} {}, headers [{}]",
                    job.kernel_version,
                    job.distribution,
                    job.distro_version,
                    files.join(", ")
                )
            }
            Outcome::Skipped(Skip::UnsupportedFamily) => {
                f.write_str("skipped: not a supported distribution")
            }
            Outcome::Skipped(Skip::NoOwnHeaders) => {
                f.write_str("skipped: no linux-headers package of its own")
            }
            Outcome::Skipped(Skip::Underivable) => {
                f.write_str("skipped: distro version not derivable")
            }
            Outcome::Skipped(Skip::UbuntuNonGa) => {
                f.write_str("skipped: ubuntu non-GA series without ~YY.MM")
            }
            Outcome::Skipped(Skip::UbuntuNoGaSeries) => {
                f.write_str("skipped: ubuntu series without ~YY.MM is no supported GA series")
            }
            Outcome::Skipped(Skip::UbuntuSourceUnknown) => {
                f.write_str("skipped: ubuntu without ~YY.MM and no pool source")
            }
            Outcome::Skipped(Skip::Unsupported(v)) => write!(f, "skipped: {v} is not supported"),
            Outcome::Skipped(Skip::Other(why)) => write!(f, "skipped: {why}"),
            Outcome::Invalid(why) => write!(f, "invalid: {why}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The reference rule.
// ---------------------------------------------------------------------------------------------

fn family(section: &str) -> Option<&'static str> {
    match section.to_ascii_lowercase().as_str() {
        "debian" => Some("debian"),
        "ubuntu" => Some("ubuntu"),
        "fedora" => Some("fedora"),
        "centos" => Some("centos"),
        "amazonlinux2023" => Some("amazonlinux"),
        _ => None,
    }
}

/// `.../x86_64/../../blobstore/...` -> `.../blobstore/...` (RFC 3986 dot-segment removal).
fn resolved(url: &str) -> String {
    url::Url::parse(url).map_or_else(|_| url.to_owned(), String::from)
}

/// `.../linux-headers-5.10.0-16-amd64_5.10.127-2_amd64.deb` -> (name, version, arch).
struct Deb {
    url: String,
    name: String,
    version: String,
    arch: String,
}

fn deb(url: &str) -> Option<Deb> {
    let file = url.rsplit('/').next()?.strip_suffix(".deb")?;
    let mut parts = file.splitn(3, '_');
    Some(Deb {
        url: url.to_owned(),
        name: parts.next()?.to_owned(),
        version: parts.next()?.to_owned(),
        arch: parts.next()?.to_owned(),
    })
}

/// `5.18.0-0.deb11.4-cloud-amd64` -> (`5.18.0-0.deb11.4`, `cloud-amd64`); `6.12.115+deb13-amd64` ->
/// (`6.12.115+deb13`, `amd64`); a name without a flavor (Ubuntu's `5.19.0-18`) -> None.
fn abi_and_flavor(release: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = release.split('-').collect();
    let abi = parts
        .iter()
        .take_while(|p| p.starts_with(|c: char| c.is_ascii_digit()))
        .count();
    (abi > 0 && abi < parts.len()).then(|| (parts[..abi].join("-"), parts[abi..].join("-")))
}

/// The kernel's own header package.
struct Own {
    url: String,
    release: String,
    abi: String,
    flavor: String,
    version: String,
    arch: String,
}

fn own_package(family: &str, kernelrelease: &str, debs: &[Deb]) -> Option<Own> {
    debs.iter()
        .filter(|d| d.arch != "all")
        .filter_map(|d| {
            let release = d.name.strip_prefix("linux-headers-")?;
            let (abi, flavor) = abi_and_flavor(release)?;
            let own = match family {
                "debian" => kernelrelease == format!("{}-{flavor}", d.version),
                _ => kernelrelease
                    .strip_prefix(&format!("{abi}-"))
                    .is_some_and(|crawler| {
                        crawler == flavor
                            || crawler.starts_with(&format!("{flavor}-"))
                            || (flavor == "generic"
                                && (crawler == "hwe"
                                    || crawler.starts_with("hwe-")
                                    || crawler.starts_with("lts-")))
                    }),
            };
            own.then(|| Own {
                url: d.url.clone(),
                release: release.to_owned(),
                abi,
                flavor,
                version: d.version.clone(),
                arch: d.arch.clone(),
            })
        })
        // `nvidia-lowlatency` over `nvidia` for a `...-nvidia-lowlatency` entry.
        .max_by_key(|own| own.flavor.len())
}

fn digits_at(text: &str, at: usize) -> Option<String> {
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!digits.is_empty()).then_some(digits)
}

fn debian_version(package_version: &str, abi: &str) -> Option<String> {
    let rightmost = ["~bpo", "~deb", "+deb"]
        .iter()
        .flat_map(|marker| {
            package_version
                .match_indices(marker)
                .map(move |(at, _)| at + marker.len())
        })
        .filter_map(|at| digits_at(package_version, at).map(|n| (at, n)))
        .max_by_key(|(at, _)| *at)
        .map(|(_, n)| n);
    rightmost.or_else(|| {
        ["+deb", ".deb"].iter().find_map(|marker| {
            abi.match_indices(marker)
                .find_map(|(at, _)| digits_at(abi, at + marker.len()))
        })
    })
}

fn ubuntu_series(package_version: &str) -> Option<String> {
    let (_, after) = package_version.split_once('~')?;
    let series = after.get(..5)?;
    let b = series.as_bytes();
    (b[2] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 2 || c.is_ascii_digit()))
    .then(|| series.to_owned())
}

/// An Ubuntu kernel without `~YY.MM`: the release whose GA series its ABI carries, if its source
/// package (from the pool path of its own header package) is built per release.
fn ubuntu_ga_version(own: &Own) -> Result<String, Skip> {
    let path: Vec<&str> = own.url.split('/').collect();
    // `.../pool/<component>/<prefix>/<source>/<file>`
    let source = match path.len().checked_sub(5).map(|at| (path[at], path[at + 3])) {
        Some(("pool", source)) => source,
        _ => return Err(Skip::UbuntuSourceUnknown),
    };
    if source != "linux" {
        let Some(name) = source.strip_prefix("linux-") else {
            return Err(Skip::UbuntuNonGa);
        };
        let non_ga = name.split('-').any(|word| {
            matches!(word, "oem" | "hwe" | "edge" | "lts")
                || (word.contains('.') && word.chars().all(|c| c.is_ascii_digit() || c == '.'))
        });
        if non_ga {
            return Err(Skip::UbuntuNonGa);
        }
    }
    let mut numbers = own.abi.split(['.', '-']);
    let series = format!(
        "{}.{}",
        numbers.next().unwrap_or_default(),
        numbers.next().unwrap_or_default()
    );
    let releases: Vec<&str> = UBUNTU_GA_SERIES
        .iter()
        .filter(|(_, ga)| *ga == series)
        .map(|(release, _)| *release)
        .collect();
    match releases.as_slice() {
        [release] => Ok((*release).to_owned()),
        _ => Err(Skip::UbuntuNoGaSeries),
    }
}

/// A whole dot-separated field `<prefix><digits>`: `el9` in `5.14.0-148.el9.x86_64`, not `el8_4`.
fn rpm_tag(release: &str, prefix: &str) -> Option<String> {
    release.split('.').find_map(|field| {
        let n = field.strip_prefix(prefix)?;
        (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| n.to_owned())
    })
}

fn reference(section: &str, entry: &Value) -> Outcome {
    let Some(family) = family(section) else {
        return Outcome::Skipped(Skip::UnsupportedFamily);
    };
    let kernelrelease = entry["kernelrelease"].as_str().expect("kernelrelease");
    let urls: Vec<String> = entry["headers"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(resolved).collect())
        .unwrap_or_default();

    let (release, version, headers) = if matches!(family, "debian" | "ubuntu") {
        let debs: Vec<Deb> = urls.iter().filter_map(|u| deb(u)).collect();
        let Some(own) = own_package(family, kernelrelease, &debs) else {
            return Outcome::Skipped(Skip::NoOwnHeaders);
        };
        let version = if family == "debian" {
            let package_version = kernelrelease
                .strip_suffix(&format!("-{}", own.flavor))
                .expect("the own package matched version-flavor");
            debian_version(package_version, &own.abi).ok_or(Skip::Underivable)
        } else {
            ubuntu_series(&own.version).map_or_else(|| ubuntu_ga_version(&own), Ok)
        };
        let own_name = format!("linux-headers-{}", own.release);
        let major_minor = own
            .abi
            .split(['-', '+'])
            .next()
            .and_then(|v| v.rsplit_once('.'))
            .map(|(mm, _)| mm.to_owned())
            .unwrap_or_default();
        let common = match own.flavor.split_once('-') {
            Some((fs, _)) if DEBIAN_FEATURESETS.contains(&fs) => {
                format!("linux-headers-{}-common-{fs}", own.abi)
            }
            _ => format!("linux-headers-{}-common", own.abi),
        };
        let kbuilds = [
            format!("linux-kbuild-{major_minor}"),
            format!("linux-kbuild-{}", own.abi),
        ];
        let abi_headers = format!("-headers-{}", own.abi);
        let headers = debs
            .iter()
            .filter(|d| {
                d.name == own_name
                    || if family == "debian" {
                        (d.name == common && d.version == own.version)
                            || (kbuilds.contains(&d.name) && d.arch == own.arch)
                    } else {
                        d.name.ends_with(&abi_headers) && d.version == own.version
                    }
            })
            .map(|d| d.url.clone())
            .collect();
        (own.release, version, headers)
    } else {
        let version = match family {
            "fedora" => rpm_tag(kernelrelease, "fc"),
            "centos" => rpm_tag(kernelrelease, "el")
                .filter(|n| n.parse::<u32>().is_ok_and(|n| n >= 8))
                .map(|n| format!("stream{n}")),
            _ => rpm_tag(kernelrelease, "amzn"),
        }
        .ok_or(Skip::Underivable);
        let devel = format!("kernel-devel-{kernelrelease}.rpm");
        let headers = urls
            .into_iter()
            .filter(|u| u.rsplit('/').next() == Some(devel.as_str()))
            .collect();
        (kernelrelease.to_owned(), version, headers)
    };

    let version = match version {
        Ok(version) => version,
        Err(skip) => return Outcome::Skipped(skip),
    };
    let supported = SUPPORTED
        .iter()
        .any(|(f, versions)| *f == family && versions.contains(&version.as_str()));
    if !supported {
        return Outcome::Skipped(Skip::Unsupported(format!("{family} {version}")));
    }
    Outcome::Planned(Job {
        kernel_version: release,
        distribution: family.to_owned(),
        distro_version: version,
        headers,
    })
}

// ---------------------------------------------------------------------------------------------
// The binary.
// ---------------------------------------------------------------------------------------------

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

struct Run {
    jobs: Vec<Job>,
    /// Skipped entries: (reason, count).
    skipped: BTreeMap<Skip, usize>,
    invalid: String,
}

fn binary_skip(why: &str) -> Skip {
    if why.starts_with("target ") && why.ends_with(" is not a supported distribution") {
        Skip::UnsupportedFamily
    } else if why.starts_with("no linux-headers package") {
        Skip::NoOwnHeaders
    } else if why == "distro version can't be derived from the release" {
        Skip::Underivable
    } else if why.starts_with("ubuntu non-GA series without ~YY.MM") {
        Skip::UbuntuNonGa
    } else if why.starts_with("ubuntu kernel without ~YY.MM whose series") {
        Skip::UbuntuNoGaSeries
    } else if why.starts_with("ubuntu kernel without ~YY.MM whose header URL") {
        Skip::UbuntuSourceUnknown
    } else if let Some(version) = why.strip_suffix(" is not supported") {
        Skip::Unsupported(version.to_owned())
    } else {
        Skip::Other(why.to_owned())
    }
}

/// `generate --shard 0` on a feed; an empty plan has no shard 0, which the binary refuses after
/// printing its report.
fn run_binary(dir: &Path, feed: &Path) -> Run {
    let empty = dir.join("kernels.json");
    if !empty.exists() {
        std::fs::write(&empty, "{}").unwrap();
    }
    let output = Command::new(BIN)
        .args(["generate", "--driver-version", "v0.1.2", "--kernels"])
        .arg(&empty)
        .arg("--kernel-crawler")
        .arg(feed)
        .args(["--shard", "0"])
        .output()
        .expect("matrix-gen runs");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let mut run = Run {
        jobs: Vec::new(),
        skipped: BTreeMap::new(),
        invalid: String::new(),
    };
    if output.status.success() {
        let json: Value = serde_json::from_str(
            stdout
                .strip_prefix("matrix=")
                .unwrap_or_else(|| panic!("{stdout}")),
        )
        .unwrap();
        for job in json["include"].as_array().unwrap() {
            assert_eq!(job["architecture"], "x86_64");
            run.jobs.push(Job {
                kernel_version: job["kernel_version"].as_str().unwrap().to_owned(),
                distribution: job["distribution"].as_str().unwrap().to_owned(),
                distro_version: job["distro_version"].as_str().unwrap().to_owned(),
                headers: job["headers"]
                    .as_array()
                    .map(|a| a.iter().map(|h| h.as_str().unwrap().to_owned()).collect())
                    .unwrap_or_default(),
            });
        }
    } else if stderr.contains("invalid entries") {
        run.invalid = stderr.clone();
    } else {
        assert!(
            stderr.contains("out of range: the plan has 0 shards"),
            "{stderr}"
        );
    }
    let mut in_skipped = false;
    for line in stderr.lines() {
        if !line.starts_with(' ') {
            in_skipped = line.ends_with(" skipped (unsupported or underivable) entries");
            continue;
        }
        if !in_skipped {
            continue;
        }
        // `  <count> x <reason>: <examples>`; reasons hold no ": ".
        let (count, rest) = line.trim_start().split_once(" x ").unwrap();
        let (why, _) = rest.split_once(": ").unwrap();
        *run.skipped.entry(binary_skip(why)).or_default() += count.parse::<usize>().unwrap();
    }
    run
}

fn binary(dir: &Path, section: &str, index: usize, entry: &Value) -> Outcome {
    let feed = dir.join(format!("{section}-{index}.json"));
    std::fs::write(
        &feed,
        serde_json::to_string(&serde_json::json!({ section: [entry] })).unwrap(),
    )
    .unwrap();
    let run = run_binary(dir, &feed);
    if !run.invalid.is_empty() {
        return Outcome::Invalid(run.invalid);
    }
    match (run.jobs.as_slice(), run.skipped.len()) {
        ([job], 0) => Outcome::Planned(job.clone()),
        ([], 1) => Outcome::Skipped(run.skipped.into_keys().next().unwrap()),
        _ => panic!(
            "{section}[{index}]: one entry gave {} jobs and {:?}",
            run.jobs.len(),
            run.skipped
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The comparison.
// ---------------------------------------------------------------------------------------------

fn compare_with_reference(feed_name: &str, known: &[Known]) {
    let feed = data(feed_name);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&feed).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut unexpected = Vec::new();
    let mut seen_known = BTreeSet::new();
    let mut reference_plan: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    let mut skipped_by_reference = BTreeSet::new();
    let mut skipped_by_binary = BTreeSet::new();
    let mut binary_skip_counts: BTreeMap<Skip, usize> = BTreeMap::new();
    let mut entries = 0;

    for (section, list) in doc.as_object().unwrap() {
        for (index, entry) in list.as_array().unwrap().iter().enumerate() {
            entries += 1;
            let location = format!("{section}[{index}]");
            let expected = reference(section, entry);
            let actual = binary(dir.path(), section, index, entry);
            match &expected {
                Outcome::Planned(job) => {
                    reference_plan
                        .entry((
                            job.kernel_version.clone(),
                            job.distribution.clone(),
                            job.distro_version.clone(),
                        ))
                        .or_default()
                        .extend(job.headers.iter().cloned());
                }
                _ => {
                    skipped_by_reference.insert(location.clone());
                }
            }
            match &actual {
                Outcome::Planned(_) => {}
                Outcome::Skipped(skip) => {
                    skipped_by_binary.insert(location.clone());
                    *binary_skip_counts.entry(skip.clone()).or_default() += 1;
                }
                Outcome::Invalid(_) => {
                    skipped_by_binary.insert(location.clone());
                }
            }
            if expected == actual {
                continue;
            }
            let (reference_text, binary_text) = (expected.to_string(), actual.to_string());
            match known.iter().position(|k| {
                k.entry == location && k.reference == reference_text && k.binary == binary_text
            }) {
                Some(at) => {
                    eprintln!("{location}: known difference: {}", known[at].why);
                    seen_known.insert(at);
                }
                None => unexpected.push(format!(
                    "{location} ({}):\n    reference: {reference_text}\n    binary:    {binary_text}",
                    entry["kernelrelease"]
                )),
            }
        }
    }
    let stale: Vec<&str> = known
        .iter()
        .enumerate()
        .filter(|(at, _)| !seen_known.contains(at))
        .map(|(_, k)| k.entry)
        .collect();
    assert!(
        unexpected.is_empty() && stale.is_empty(),
        "{feed_name}: {} unexplained disagreements with the reference:\n{}\nknown differences that no longer occur: {stale:?}",
        unexpected.len(),
        unexpected.join("\n")
    );
    assert_eq!(
        skipped_by_reference, skipped_by_binary,
        "{feed_name}: the reference and the binary must skip the same entries"
    );

    // The whole feed in one run: the same plan as the reference's, merged by identity (entries that
    // are one kernel on a node pool their header URLs), and the same skipped entries, counted by
    // the reasons the single-entry runs gave.
    let whole = run_binary(dir.path(), &feed);
    assert!(whole.invalid.is_empty(), "{}", whole.invalid);
    let whole_plan: BTreeMap<(String, String, String), BTreeSet<String>> = whole
        .jobs
        .into_iter()
        .map(|j| {
            (
                (j.kernel_version, j.distribution, j.distro_version),
                j.headers,
            )
        })
        .collect();
    assert_eq!(whole_plan, reference_plan, "{feed_name}: whole-feed plan");
    assert_eq!(
        whole.skipped, binary_skip_counts,
        "{feed_name}: skipped entries by reason"
    );
    assert_eq!(
        whole.skipped.values().sum::<usize>(),
        skipped_by_reference.len(),
        "{feed_name}: skipped entries"
    );
    eprintln!(
        "{feed_name}: {entries} entries, {} planned identities, {} skipped, {} known differences",
        reference_plan.len(),
        skipped_by_reference.len(),
        known.len()
    );
}

#[test]
fn crawler_sample_plan_matches_the_reference_entry_by_entry() {
    compare_with_reference("kernel-crawler-x86_64-sample.json", SAMPLE_KNOWN);
}

/// The sample is from 2022 and plans almost nothing a supported node runs; the hand-written family
/// feed covers the current forms (Debian 13's `+deb13` ABI, Ubuntu 22.04 HWE, Amazon Linux 2023's
/// relative URLs) under the same reference.
#[test]
fn crawler_families_plan_matches_the_reference_entry_by_entry() {
    compare_with_reference("crawler-families.json", &[]);
}

/// The reference rule itself, on the examples the crawler documents.
#[test]
fn the_reference_rule_reads_the_documented_forms() {
    assert_eq!(
        debian_version("4.19.118-2+deb10u1~bpo9+1", "4.19.0-0.bpo.9").as_deref(),
        Some("9")
    );
    assert_eq!(
        debian_version("4.9.189-3+deb9u2~deb8u1", "4.9.0-0.bpo.11").as_deref(),
        Some("8")
    );
    assert_eq!(
        debian_version("6.12.115-1", "6.12.115+deb13").as_deref(),
        Some("13")
    );
    assert_eq!(debian_version("5.10.127-2", "5.10.0-16"), None);
    assert_eq!(
        ubuntu_series("5.4.0-1087.95~18.04.1").as_deref(),
        Some("18.04")
    );
    assert_eq!(ubuntu_series("5.4.0-1091.96+cvm1"), None);
    assert_eq!(rpm_tag("4.18.0-305.7.1.el8_4.x86_64", "el"), None);
    assert_eq!(rpm_tag("5.14.0-148.el9.x86_64", "el").as_deref(), Some("9"));
    let example = serde_json::json!({
        "kernelversion": "1",
        "kernelrelease": "6.1.129-1-cloud-amd64",
        "target": "debian",
        "headers": [
            "http://m/debian/pool/main/l/linux/linux-headers-6.1.0-31-common_6.1.129-1_all.deb",
            "http://m/debian/pool/main/l/linux/linux-headers-6.1.0-31-cloud-amd64_6.1.129-1_amd64.deb",
            "http://m/debian/pool/main/l/linux/linux-headers-6.1.0-31-rt-amd64_6.1.129-1_amd64.deb",
            "http://m/debian/pool/main/l/linux/linux-headers-6.1.0-31-common-rt_6.1.129-1_all.deb",
            "http://m/debian/pool/main/l/linux/linux-headers-6.1.0-31-amd64_6.1.129-1_amd64.deb",
            "http://m/debian/pool/main/l/linux/linux-kbuild-6.1_6.1.129-1_amd64.deb",
        ]
    });
    // Bookworm's ABI carries no marker: the flavor and headers resolve, the version does not.
    assert_eq!(
        reference("debian", &example),
        Outcome::Skipped(Skip::Underivable)
    );
    let mut backport = example.clone();
    backport["kernelrelease"] = "6.1.129-1~bpo11+1-cloud-amd64".into();
    for h in backport["headers"].as_array_mut().unwrap() {
        *h = h
            .as_str()
            .unwrap()
            .replace("6.1.129-1_", "6.1.129-1~bpo11+1_")
            .into();
    }
    let Outcome::Planned(job) = reference("debian", &backport) else {
        panic!("a bullseye backport is planned");
    };
    assert_eq!(job.kernel_version, "6.1.0-31-cloud-amd64");
    assert_eq!(job.distro_version, "11");
    let files: Vec<&str> = job
        .headers
        .iter()
        .map(|h| h.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "linux-headers-6.1.0-31-cloud-amd64_6.1.129-1~bpo11+1_amd64.deb",
            "linux-headers-6.1.0-31-common_6.1.129-1~bpo11+1_all.deb",
            "linux-kbuild-6.1_6.1.129-1~bpo11+1_amd64.deb",
        ]
    );
}
