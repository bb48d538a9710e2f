//! Kernel-crawler entries name some kernels by something other than what `uname -r` prints: Debian by
//! package version plus flavor (`6.1.55-1-amd64` for the node's `6.1.0-13-amd64`), Ubuntu with an extra
//! crawler flavor (`5.4.0-1087-gcp-5.4` for `5.4.0-1087-gcp`). The node's release is in the entry's
//! linux-headers package file name; this module recovers it, and the distro version the headers
//! package was built for — or why that can't be told ([`Underivable`]).
//!
//! Ubuntu marks only backports with the release they were built for (`~22.04.1`). A kernel without
//! the marker is the release's own: when its source package is built per release (the main `linux`
//! source or an unversioned derivative such as `linux-aws`), the release is the one whose GA series
//! the kernel carries (kernel-id's Ubuntu GA table).

use std::fmt;

use crate::derive::derive_distro_version;
use crate::distro::{Distribution, DistroVersion};
use crate::release::KernelRelease;

/// What a crawler entry resolves to on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrawlerKernel {
    /// The release `uname -r` prints on a node booting this kernel.
    pub release: KernelRelease,
    /// The distro version the kernel was built for, or why the entry doesn't tell it.
    pub distro_version: Result<DistroVersion, Underivable>,
    /// The entry's header URLs that belong to this kernel (see [`deb_kernel_from_headers`]).
    pub headers: Vec<String>,
}

/// Why a crawler entry's distro version can't be derived. `Display` is the reason matrix-gen
/// counts skipped entries by, so each variant is its own line there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Underivable {
    /// No distribution marker in the package version or the release (e.g. Debian's main archive).
    NoMarker,
    /// Ubuntu, no `~YY.MM`, and the source package is not one built per release: OEM, HWE, edge,
    /// LTS enablement, or a versioned backport source such as `linux-hwe-5.11` or `linux-aws-5.0`
    /// (whose uploads don't always carry the marker).
    UbuntuNonGaSeries,
    /// Ubuntu, no `~YY.MM`, a per-release source, but its `major.minor` is no supported release's
    /// GA series (e.g. 5.19 of 22.10, or 5.4 of 20.04).
    UbuntuSeriesOfNoSupportedRelease,
    /// Ubuntu, no `~YY.MM`, and the header URL has no `pool/<component>/<prefix>/<source>/` path
    /// naming the source package.
    UbuntuSourceUnknown,
}

impl fmt::Display for Underivable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Underivable::NoMarker => "distro version can't be derived from the release",
            Underivable::UbuntuNonGaSeries => {
                "ubuntu non-GA series without ~YY.MM (OEM, HWE, edge or versioned backport source)"
            }
            Underivable::UbuntuSeriesOfNoSupportedRelease => {
                "ubuntu kernel without ~YY.MM whose series is no supported release's GA series"
            }
            Underivable::UbuntuSourceUnknown => {
                "ubuntu kernel without ~YY.MM whose header URL names no pool source package"
            }
        })
    }
}

/// Resolves a Debian or Ubuntu crawler entry through its header package URLs. Returns `None` when no
/// header file matches the entry (the caller reports the entry).
///
/// The kernel's headers are its own `linux-headers-<release>` package and the flavor-independent parts
/// of the same upload: Debian's `linux-headers-<abi>-common` (`-common-rt` for the rt featureset) and
/// its `linux-kbuild-<major.minor>` / `linux-kbuild-<abi>` tools (the crawler lists one kbuild, not
/// always of the same upload), Ubuntu's `linux-headers-<abi>` / `linux-<source>-headers-<abi>`. The
/// entry lists every flavor built from the source; the other flavors' packages are left out.
pub fn deb_kernel_from_headers<'a>(
    distribution: Distribution,
    target: &str,
    crawler_release: &str,
    header_urls: impl IntoIterator<Item = &'a str>,
) -> Option<CrawlerKernel> {
    let urls: Vec<&str> = header_urls.into_iter().collect();
    urls.iter().find_map(|url| {
        let file = url.rsplit('/').next()?;
        let (name, package_version, arch) = split_deb_file_name(file)?;
        let release = name.strip_prefix("linux-headers-")?;
        if arch == "all" || release.ends_with("-common") {
            return None;
        }
        let matches = match distribution.as_str() {
            // `{package version}-{flavor}`, and the header package is `{abi}-{flavor}`: the same
            // flavor, not one that ends like it (`amd64` is not `cloud-amd64`).
            "debian" => crawler_release
                .strip_prefix(package_version)
                .and_then(|flavor| flavor.strip_prefix('-'))
                .is_some_and(|flavor| {
                    abi_and_flavor(release).is_some_and(|(_, own)| own == flavor)
                }),
            "ubuntu" => ubuntu_matches(crawler_release, release),
            _ => false,
        };
        if !matches {
            return None;
        }
        let headers = own_header_urls(distribution, release, package_version, arch, &urls);
        let release = KernelRelease::parse(release).ok()?;
        let distro_version = match distribution.as_str() {
            "ubuntu" => ubuntu_distro_version(distribution, url, package_version, &release),
            _ => derive_distro_version(package_version, Some(target))
                .or_else(|| derive_distro_version(release.as_str(), Some(target)))
                .ok_or(Underivable::NoMarker),
        };
        Some(CrawlerKernel {
            release,
            distro_version,
            headers,
        })
    })
}

/// `5.18.0-0.deb11.4-cloud-amd64` -> (`5.18.0-0.deb11.4`, `cloud-amd64`): the ABI is the leading
/// dash-separated parts that start with a digit, the flavor the rest. `None` without a flavor (Ubuntu's
/// `linux-headers-<abi>`).
fn abi_and_flavor(release: &str) -> Option<(&str, &str)> {
    let mut at = 0;
    for part in release.split('-') {
        if !part.starts_with(|c: char| c.is_ascii_digit()) {
            return (at > 0).then(|| (&release[..at - 1], &release[at..]));
        }
        at += part.len() + 1;
    }
    None
}

/// The URLs in `urls` that belong to the kernel whose own header package is
/// `linux-headers-{release}_{version}_{arch}.deb` (see [`deb_kernel_from_headers`]).
fn own_header_urls(
    distribution: Distribution,
    release: &str,
    version: &str,
    arch: &str,
    urls: &[&str],
) -> Vec<String> {
    let Some((abi, flavor)) = abi_and_flavor(release) else {
        return Vec::new();
    };
    let own = format!("linux-headers-{release}");
    let common = match flavor.split_once('-') {
        Some(("rt", _)) => format!("linux-headers-{abi}-common-rt"),
        _ => format!("linux-headers-{abi}-common"),
    };
    let major_minor = abi
        .split(['-', '+'])
        .next()
        .and_then(|upstream| upstream.rsplit_once('.'))
        .map_or(abi, |(major_minor, _)| major_minor);
    let kbuilds = [
        format!("linux-kbuild-{major_minor}"),
        format!("linux-kbuild-{abi}"),
    ];
    let abi_headers = format!("-headers-{abi}");
    urls.iter()
        .filter(|url| {
            let Some((name, v, a)) = url.rsplit('/').next().and_then(split_deb_file_name) else {
                return false;
            };
            name == own
                || match distribution.as_str() {
                    "debian" => {
                        (name == common && v == version)
                            || (kbuilds.iter().any(|k| k == name) && a == arch)
                    }
                    _ => name.ends_with(&abi_headers) && v == version,
                }
        })
        .map(|url| (*url).to_owned())
        .collect()
}

/// `linux-headers-6.1.0-13-amd64_6.1.55-1_amd64.deb` -> (name, version, arch); `%2B` and `%7E` are
/// decoded because mirrors escape `+` and `~` in pool URLs.
fn split_deb_file_name(file: &str) -> Option<(&str, &str, &str)> {
    let stem = file.strip_suffix(".deb")?;
    let mut parts = stem.splitn(3, '_');
    let (name, version, arch) = (parts.next()?, parts.next()?, parts.next()?);
    (!version.contains('%')).then_some((name, version, arch))
}

/// The crawler names Ubuntu kernels `{abi}-{flavor}[-{series}]`, and HWE kernels `{abi}-hwe[-{series}]`
/// or `{abi}-{flavor}-hwe-{series}`, while the node reports `{abi}-{flavor}` (`generic` for plain HWE).
fn ubuntu_matches(crawler_release: &str, release: &str) -> bool {
    let abi_len = |s: &str| s.match_indices('-').nth(1).map_or(s.len(), |(at, _)| at);
    let (abi, flavor) = release.split_at(abi_len(release));
    let Some(crawler_rest) = crawler_release.strip_prefix(abi) else {
        return false;
    };
    let (flavor, crawler_rest) = (
        flavor.trim_start_matches('-'),
        crawler_rest.trim_start_matches('-'),
    );
    if flavor.is_empty() {
        return false;
    }
    crawler_rest == flavor
        || crawler_rest.starts_with(&format!("{flavor}-"))
        || (flavor == "generic" && (crawler_rest == "hwe" || crawler_rest.starts_with("hwe-")))
}

/// The Ubuntu release a kernel was built for: the backport marker if there is one, else the
/// release whose GA series a per-release source's kernel carries (see the module docs).
fn ubuntu_distro_version(
    distribution: Distribution,
    header_url: &str,
    package_version: &str,
    release: &KernelRelease,
) -> Result<DistroVersion, Underivable> {
    if let Some(version) = ubuntu_series_marker(package_version, distribution) {
        return Ok(version);
    }
    let source = pool_source(header_url).ok_or(Underivable::UbuntuSourceUnknown)?;
    if !ubuntu_source_is_per_release(source) {
        return Err(Underivable::UbuntuNonGaSeries);
    }
    major_minor(release.as_str())
        .and_then(|series| distribution.version_of_ga_series(series))
        .ok_or(Underivable::UbuntuSeriesOfNoSupportedRelease)
}

/// Ubuntu backports name their series in the package version (`5.15.0-48.54~20.04.1` -> 20.04).
fn ubuntu_series_marker(
    package_version: &str,
    distribution: Distribution,
) -> Option<DistroVersion> {
    let (_, after) = package_version.split_once('~')?;
    let series: String = after.chars().take(5).collect();
    DistroVersion::parse(distribution, &series).ok()
}

/// The source package of a file in a Debian-style archive, from its
/// `pool/<component>/<prefix>/<source>/<file>` path (`pool/main/l/linux-aws/...` -> `linux-aws`).
fn pool_source(url: &str) -> Option<&str> {
    let mut parts = url.rsplit('/');
    let (_file, source, prefix, _component) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (parts.next()? == "pool" && !prefix.is_empty() && source.starts_with(prefix)).then_some(source)
}

/// Whether an Ubuntu kernel source package is built per release on that release's own series: the
/// main `linux` source (flavors generic, generic-64k, generic-lpae, lowlatency before 22.04) and
/// unversioned derivatives (`linux-aws`, `linux-gcp`, `linux-azure`, `linux-gke`, `linux-kvm`,
/// `linux-oracle`, `linux-nvidia`, `linux-intel-iotg`, `linux-lowlatency`...). Evidence in the
/// 2022 kernel-crawler feed: jammy's `linux-gke` 5.15.0-1016.19 and `linux-intel-iotg`
/// 5.15.0-1016.21 carry no marker, while the same kernels rebuilt for focal come from the versioned
/// sources `linux-gke-5.15` / `linux-intel-iotg-5.15` as `~20.04.1`. Versioned sources are
/// backports and some uploads lack the marker (`linux-hwe-5.11` 5.11.0-61.61, `linux-aws-5.0`
/// 5.0.0-1028.31), and OEM, HWE, edge and LTS-enablement kernels follow their own series; all of
/// those are left underivable rather than guessed.
fn ubuntu_source_is_per_release(source: &str) -> bool {
    if source == "linux" {
        return true;
    }
    let Some(name) = source.strip_prefix("linux-") else {
        return false;
    };
    let versioned = name
        .rsplit('-')
        .next()
        .is_some_and(|last| major_minor(last) == Some(last));
    !versioned
        && !name
            .split('-')
            .any(|part| matches!(part, "oem" | "hwe" | "edge" | "lts"))
}

/// `5.15.0-91-generic` -> `5.15`; `None` unless the string starts with `digits.digits`.
fn major_minor(release: &str) -> Option<&str> {
    let major = release.bytes().take_while(u8::is_ascii_digit).count();
    let rest = release.get(major..)?.strip_prefix('.')?;
    let minor = rest.bytes().take_while(u8::is_ascii_digit).count();
    (major > 0 && minor > 0).then(|| &release[..major + 1 + minor])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: &str) -> Distribution {
        Distribution::parse(id).unwrap()
    }

    #[test]
    fn debian_abi_name_comes_from_the_matching_flavor() {
        let headers = [
            "http://m/debian/pool/main/l/linux/linux-headers-5.19.0-1-amd64_5.19.6-1_amd64.deb",
            "http://m/debian/pool/main/l/linux/linux-headers-5.19.0-1-rt-amd64_5.19.6-1_amd64.deb",
            "http://m/debian/pool/main/l/linux/linux-headers-5.19.0-1-common_5.19.6-1_all.deb",
        ];
        let k =
            deb_kernel_from_headers(d("debian"), "debian", "5.19.6-1-rt-amd64", headers).unwrap();
        assert_eq!(k.release.as_str(), "5.19.0-1-rt-amd64");
        assert_eq!(k.distro_version, Err(Underivable::NoMarker));
        let k = deb_kernel_from_headers(d("debian"), "debian", "5.19.6-1-amd64", headers).unwrap();
        assert_eq!(k.release.as_str(), "5.19.0-1-amd64");
    }

    #[test]
    fn a_debian_flavor_is_matched_exactly_and_gets_only_its_own_headers() {
        // As the crawler lists them (real entry, 2022 feed): the cloud package comes first.
        let pool = "http://m/debian/pool/main/l/linux/";
        let files = [
            "linux-kbuild-5.18_5.18.16-1~bpo11+1_amd64.deb",
            "linux-headers-5.18.0-0.deb11.4-cloud-amd64_5.18.16-1~bpo11+1_amd64.deb",
            "linux-headers-5.18.0-0.deb11.4-common_5.18.16-1~bpo11+1_all.deb",
            "linux-headers-5.18.0-0.deb11.4-common-rt_5.18.16-1~bpo11+1_all.deb",
            "linux-headers-5.18.0-0.deb11.4-rt-amd64_5.18.16-1~bpo11+1_amd64.deb",
            "linux-headers-5.18.0-0.deb11.4-amd64_5.18.16-1~bpo11+1_amd64.deb",
        ];
        let urls: Vec<String> = files.iter().map(|f| format!("{pool}{f}")).collect();
        let own = |crawler: &str| {
            let k = deb_kernel_from_headers(
                d("debian"),
                "debian",
                crawler,
                urls.iter().map(String::as_str),
            )
            .unwrap();
            let names: Vec<String> = k
                .headers
                .iter()
                .map(|h| {
                    h.strip_prefix(pool)
                        .unwrap()
                        .split('_')
                        .next()
                        .unwrap()
                        .to_owned()
                })
                .collect();
            (k.release.to_string(), names)
        };
        assert_eq!(
            own("5.18.16-1~bpo11+1-amd64"),
            (
                "5.18.0-0.deb11.4-amd64".to_owned(),
                vec![
                    "linux-kbuild-5.18".to_owned(),
                    "linux-headers-5.18.0-0.deb11.4-common".to_owned(),
                    "linux-headers-5.18.0-0.deb11.4-amd64".to_owned(),
                ]
            )
        );
        assert_eq!(
            own("5.18.16-1~bpo11+1-cloud-amd64").1,
            [
                "linux-kbuild-5.18",
                "linux-headers-5.18.0-0.deb11.4-cloud-amd64",
                "linux-headers-5.18.0-0.deb11.4-common",
            ]
        );
        assert_eq!(
            own("5.18.16-1~bpo11+1-rt-amd64").1,
            [
                "linux-kbuild-5.18",
                "linux-headers-5.18.0-0.deb11.4-common-rt",
                "linux-headers-5.18.0-0.deb11.4-rt-amd64",
            ]
        );
        // A `-grsec-amd64` package is not the `-amd64` kernel.
        let grsec =
            ["http://m/linux-headers-4.9.0-4-grsec-amd64_4.9.65-2+grsecunoff1~bpo9+1_amd64.deb"];
        assert!(
            deb_kernel_from_headers(
                d("debian"),
                "debian",
                "4.9.65-2+grsecunoff1~bpo9+1-amd64",
                grsec
            )
            .is_none()
        );
    }

    #[test]
    fn ubuntu_keeps_its_flavor_and_abi_headers() {
        let headers = [
            "http://m/linux-hwe-5.4/linux-headers-5.4.0-128-generic_5.4.0-128.144~18.04.1_amd64.deb",
            "http://m/linux-hwe-5.4/linux-headers-5.4.0-128-lowlatency_5.4.0-128.144~18.04.1_amd64.deb",
            "http://m/linux-hwe-5.4/linux-hwe-5.4-headers-5.4.0-128_5.4.0-128.144~18.04.1_all.deb",
            "http://m/linux-hwe-5.4/linux-headers-5.4.0-128-generic_5.4.0-128.144~18.04.1_amd64.deb",
        ];
        let k =
            deb_kernel_from_headers(d("ubuntu"), "ubuntu-hwe-5.4", "5.4.0-128-hwe-5.4", headers)
                .unwrap();
        assert_eq!(k.release.as_str(), "5.4.0-128-generic");
        assert_eq!(k.headers, [headers[0], headers[2], headers[3]]);
    }

    #[test]
    fn debian_backports_carry_their_release() {
        let headers =
            ["http://m/pool/linux-headers-5.18.0-0.deb11.4-amd64_5.18.16-1~bpo11+1_amd64.deb"];
        let k = deb_kernel_from_headers(d("debian"), "debian", "5.18.16-1~bpo11+1-amd64", headers)
            .unwrap();
        assert_eq!(k.release.as_str(), "5.18.0-0.deb11.4-amd64");
        assert_eq!(k.distro_version.unwrap().as_str(), "11");
    }

    #[test]
    fn ubuntu_drops_the_crawler_flavor_and_reads_the_series() {
        let headers = [
            "http://m/ubuntu/pool/main/l/linux-gcp-5.4/linux-headers-5.4.0-1087-gcp_5.4.0-1087.95~18.04.1_amd64.deb",
            "http://m/ubuntu/pool/main/l/linux-gcp-5.4/linux-gcp-5.4-headers-5.4.0-1087_5.4.0-1087.95~18.04.1_all.deb",
        ];
        let k = deb_kernel_from_headers(d("ubuntu"), "ubuntu-gcp", "5.4.0-1087-gcp-5.4", headers)
            .unwrap();
        assert_eq!(k.release.as_str(), "5.4.0-1087-gcp");
        assert_eq!(k.distro_version.unwrap().as_str(), "18.04");
        let hwe = [
            "http://m/linux-headers-5.15.0-48-lowlatency_5.15.0-48.54~20.04.1_amd64.deb",
            "http://m/linux-headers-5.15.0-48-generic_5.15.0-48.54~20.04.1_amd64.deb",
        ];
        for (crawler, node) in [
            ("5.15.0-48-hwe-5.15", "5.15.0-48-generic"),
            ("5.15.0-48-lowlatency-hwe-5.15", "5.15.0-48-lowlatency"),
            ("5.15.0-48-generic", "5.15.0-48-generic"),
        ] {
            let k = deb_kernel_from_headers(d("ubuntu"), "ubuntu-generic", crawler, hwe)
                .unwrap_or_else(|| panic!("{crawler} must resolve"));
            assert_eq!(k.release.as_str(), node, "{crawler}");
        }
        assert!(
            deb_kernel_from_headers(d("ubuntu"), "ubuntu-generic", "5.15.0-480-generic", hwe)
                .is_none()
        );
        let native = ["http://m/linux-headers-6.8.0-52-generic_6.8.0-52.53_amd64.deb"];
        let k = deb_kernel_from_headers(d("ubuntu"), "ubuntu-generic", "6.8.0-52-generic", native)
            .unwrap();
        assert_eq!(k.distro_version, Err(Underivable::UbuntuSourceUnknown));
    }

    /// Resolves one Ubuntu kernel from its own header package at `pool/main/l/{source}/{file}`.
    fn ubuntu_kernel(crawler_release: &str, source: &str, file: &str) -> CrawlerKernel {
        let url = format!("http://archive.ubuntu.com/ubuntu/pool/main/l/{source}/{file}");
        deb_kernel_from_headers(
            d("ubuntu"),
            "ubuntu-generic",
            crawler_release,
            [url.as_str()],
        )
        .unwrap_or_else(|| panic!("{crawler_release} must resolve"))
    }

    #[test]
    fn ubuntu_ga_kernels_get_the_release_of_their_series() {
        let version = |crawler: &str, source: &str, file: &str| {
            ubuntu_kernel(crawler, source, file)
                .distro_version
                .map(|v| v.to_string())
        };
        let ok = |v: &str| Ok(v.to_owned());
        assert_eq!(
            version(
                "5.15.0-91-generic",
                "linux",
                "linux-headers-5.15.0-91-generic_5.15.0-91.101_amd64.deb"
            ),
            ok("22.04")
        );
        assert_eq!(
            version(
                "6.8.0-52-generic",
                "linux",
                "linux-headers-6.8.0-52-generic_6.8.0-52.53_amd64.deb"
            ),
            ok("24.04")
        );
        assert_eq!(
            version(
                "6.17.0-5-generic",
                "linux",
                "linux-headers-6.17.0-5-generic_6.17.0-5.5_amd64.deb"
            ),
            ok("25.10")
        );
        // Real feed entries: jammy's own gke kernel, and the same ABI rebuilt for focal.
        assert_eq!(
            version(
                "5.15.0-1016-gke",
                "linux-gke",
                "linux-headers-5.15.0-1016-gke_5.15.0-1016.19_amd64.deb"
            ),
            ok("22.04")
        );
        assert_eq!(
            version(
                "5.15.0-1016-gke-5.15",
                "linux-gke-5.15",
                "linux-headers-5.15.0-1016-gke_5.15.0-1016.19~20.04.1_amd64.deb"
            ),
            ok("20.04")
        );
    }

    #[test]
    fn ubuntu_kernels_without_marker_outside_the_ga_table_say_why() {
        let why = |crawler: &str, source: &str, file: &str| {
            ubuntu_kernel(crawler, source, file)
                .distro_version
                .unwrap_err()
        };
        // Real feed entries (kernel-crawler 2022): OEM, versioned backport sources, 22.10's GA.
        assert_eq!(
            why(
                "5.17.0-1018-oem-5.17",
                "linux-oem-5.17",
                "linux-headers-5.17.0-1018-oem_5.17.0-1018.19_amd64.deb"
            ),
            Underivable::UbuntuNonGaSeries
        );
        assert_eq!(
            why(
                "4.15.0-1104-oem",
                "linux-oem",
                "linux-headers-4.15.0-1104-oem_4.15.0-1104.115_amd64.deb"
            ),
            Underivable::UbuntuNonGaSeries
        );
        assert_eq!(
            why(
                "5.11.0-61-hwe-5.11",
                "linux-hwe-5.11",
                "linux-headers-5.11.0-61-generic_5.11.0-61.61_amd64.deb"
            ),
            Underivable::UbuntuNonGaSeries
        );
        assert_eq!(
            why(
                "5.19.0-18-generic",
                "linux",
                "linux-headers-5.19.0-18-generic_5.19.0-18.18_amd64.deb"
            ),
            Underivable::UbuntuSeriesOfNoSupportedRelease
        );
        // An unversioned derivative on a series no supported release shipped (xenial's rolling
        // linux-azure).
        assert_eq!(
            why(
                "4.11.0-1009-azure",
                "linux-azure",
                "linux-headers-4.11.0-1009-azure_4.11.0-1009.9_amd64.deb"
            ),
            Underivable::UbuntuSeriesOfNoSupportedRelease
        );
    }

    #[test]
    fn ubuntu_sources_are_read_from_the_pool_path() {
        assert_eq!(
            pool_source("http://a/ubuntu/pool/main/l/linux-aws/linux-headers-x_1_amd64.deb"),
            Some("linux-aws")
        );
        assert_eq!(pool_source("http://a/ubuntu/linux-aws/x.deb"), None);
        assert_eq!(pool_source("pool/main/q/linux/x.deb"), None);
        assert_eq!(pool_source(""), None);
        for (source, per_release) in [
            ("linux", true),
            ("linux-aws", true),
            ("linux-intel-iotg", true),
            ("linux-azure-cvm", true),
            ("linux-aws-5.0", false),
            ("linux-hwe", false),
            ("linux-hwe-edge", false),
            ("linux-lowlatency-hwe-5.15", false),
            ("linux-lts-xenial", false),
            ("linux-oem", false),
            ("linux-oem-6.1", false),
            ("firmware", false),
        ] {
            assert_eq!(
                ubuntu_source_is_per_release(source),
                per_release,
                "{source}"
            );
        }
        assert_eq!(major_minor("7.0.0-10-generic"), Some("7.0"));
        assert_eq!(major_minor("6"), None);
        assert_eq!(major_minor(".1"), None);
    }
}
