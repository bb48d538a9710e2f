//! Kernel-crawler entries name some kernels by something other than what `uname -r` prints: Debian by
//! package version plus flavor (`6.1.55-1-amd64` for the node's `6.1.0-13-amd64`), Ubuntu with an extra
//! crawler flavor (`5.4.0-1087-gcp-5.4` for `5.4.0-1087-gcp`). The node's release is in the entry's
//! linux-headers package file name; this module recovers it, and the distro version the headers
//! package was built for.

use crate::derive::derive_distro_version;
use crate::distro::{Distribution, DistroVersion};
use crate::release::KernelRelease;

/// What a crawler entry resolves to on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrawlerKernel {
    /// The release `uname -r` prints on a node booting this kernel.
    pub release: KernelRelease,
    /// The distro version the kernel was built for, when the release or package version says so.
    pub distro_version: Option<DistroVersion>,
    /// The entry's header URLs that belong to this kernel (see [`deb_kernel_from_headers`]).
    pub headers: Vec<String>,
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
            "ubuntu" => ubuntu_series(package_version, distribution),
            _ => derive_distro_version(package_version, Some(target))
                .or_else(|| derive_distro_version(release.as_str(), Some(target))),
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

/// Ubuntu backports name their series in the package version (`5.15.0-48.54~20.04.1` -> 20.04).
fn ubuntu_series(package_version: &str, distribution: Distribution) -> Option<DistroVersion> {
    let (_, after) = package_version.split_once('~')?;
    let series: String = after.chars().take(5).collect();
    DistroVersion::parse(distribution, &series).ok()
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
        assert_eq!(k.distro_version, None);
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
        assert_eq!(k.distro_version, None);
    }
}
