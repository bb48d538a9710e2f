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
}

/// Resolves a Debian or Ubuntu crawler entry through its header package URLs. Returns `None` when no
/// header file matches the entry (the caller reports the entry).
pub fn deb_kernel_from_headers<'a>(
    distribution: Distribution,
    target: &str,
    crawler_release: &str,
    header_urls: impl IntoIterator<Item = &'a str>,
) -> Option<CrawlerKernel> {
    header_urls.into_iter().find_map(|url| {
        let file = url.rsplit('/').next()?;
        let (name, package_version, arch) = split_deb_file_name(file)?;
        let release = name.strip_prefix("linux-headers-")?;
        if arch == "all" || release.ends_with("-common") {
            return None;
        }
        let matches = match distribution.as_str() {
            // `{package version}-{flavor}`, and the header package is `{abi}-{flavor}`.
            "debian" => crawler_release
                .strip_prefix(package_version)
                .and_then(|flavor| flavor.strip_prefix('-'))
                .is_some_and(|flavor| {
                    !flavor.is_empty() && release.ends_with(&format!("-{flavor}"))
                }),
            "ubuntu" => ubuntu_matches(crawler_release, release),
            _ => false,
        };
        if !matches {
            return None;
        }
        let release = KernelRelease::parse(release).ok()?;
        let distro_version = match distribution.as_str() {
            "ubuntu" => ubuntu_series(package_version, distribution),
            _ => derive_distro_version(package_version, Some(target))
                .or_else(|| derive_distro_version(release.as_str(), Some(target))),
        };
        Some(CrawlerKernel {
            release,
            distro_version,
        })
    })
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
