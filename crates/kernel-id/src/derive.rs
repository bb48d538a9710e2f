//! Distro-version derivation from a kernel release string (and, for crawler data, its target name).
//! Markers are distribution build tags: Fedora `.fcNN`, CentOS Stream `.elNN`, Debian `~bpoNN+`,
//! `.debNN.`, `~debNN` and `+debNN`, Amazon Linux `.amzn2023` / `.amzn2`.
//! Anything else derives nothing: the caller decides between its default and a refusal.

use crate::distro::{Distribution, DistroVersion};

/// Derives the distribution and version a kernel was built for, when its release string says so.
///
/// `target` is a kernel-crawler target (`fedora`, `centos`, `ol`, `amazonlinux2023`, ...). A target of
/// another family vetoes a release-based guess, because `.el9` alone can't tell CentOS Stream from
/// Oracle or Rocky. The result may be an unsupported version (e.g. Fedora 36); check
/// [`DistroVersion::is_supported`].
pub fn derive_distro_version(release: &str, target: Option<&str>) -> Option<DistroVersion> {
    let from_target = target.and_then(Distribution::from_crawler_target);
    if let Some((distribution, Some(version))) = from_target {
        return DistroVersion::parse(distribution, version).ok();
    }
    let derived = derive_from_release(release)?;
    match (target, from_target) {
        (None, _) => Some(derived),
        (Some(_), Some((distribution, None))) if distribution == derived.distribution() => {
            Some(derived)
        }
        _ => None,
    }
}

fn derive_from_release(release: &str) -> Option<DistroVersion> {
    let parse = |id: &str, version: String| {
        DistroVersion::parse(Distribution::parse(id).ok()?, &version).ok()
    };
    if let Some(n) = number_after(release, "~bpo", |rest| rest.starts_with('+')) {
        return parse("debian", n);
    }
    if let Some(n) = number_after(release, ".deb", |rest| rest.starts_with('.')) {
        return parse("debian", n);
    }
    if let Some(n) = number_after(release, "~deb", |rest| {
        rest.starts_with('u') || rest.starts_with('+')
    }) {
        return parse("debian", n);
    }
    if let Some(n) = number_after(release, "+deb", |rest| {
        !rest.starts_with(|c: char| c.is_ascii_digit())
    }) {
        return parse("debian", n);
    }
    if let Some(n) = number_after(release, ".fc", tag_end) {
        return parse("fedora", n);
    }
    if let Some(n) = number_after(release, ".el", tag_end) {
        // CentOS 7 and older were not Stream releases, and Stream 8 is unsupported but well-formed.
        return (n.parse::<u32>().ok()? >= 8)
            .then(|| parse("centos", format!("stream{n}")))
            .flatten();
    }
    if let Some(n) = number_after(release, ".amzn", tag_end) {
        return parse("amazonlinux", n);
    }
    None
}

/// A build tag ends the release or is followed by the next dot-separated field (e.g. `.x86_64`).
fn tag_end(rest: &str) -> bool {
    rest.is_empty() || rest.starts_with('.')
}

/// Finds `marker` followed by digits and then something `followed_by` accepts; returns the digits.
fn number_after(release: &str, marker: &str, followed_by: impl Fn(&str) -> bool) -> Option<String> {
    release.match_indices(marker).find_map(|(at, _)| {
        let rest = &release[at + marker.len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        (digits > 0 && followed_by(&rest[digits..])).then(|| rest[..digits].to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derived(release: &str, target: Option<&str>) -> Option<String> {
        derive_distro_version(release, target).map(|v| format!("{} {}", v.distribution(), v))
    }

    #[test]
    fn derives_every_documented_marker() {
        let cases = [
            ("6.14.0-100.fc42.x86_64", None, Some("fedora 42")),
            ("6.12.0-212.el10.x86_64", None, Some("centos stream10")),
            (
                "5.14.0-503.el9.x86_64",
                Some("centos"),
                Some("centos stream9"),
            ),
            ("6.1.0-28~bpo12+1", None, Some("debian 12")),
            ("6.12.100+deb12-amd64", None, Some("debian 12")),
            ("6.12.48+deb13-amd64", None, Some("debian 13")),
            ("5.10.0-0.deb10.17-amd64", None, Some("debian 10")),
            ("5.18.16-1~bpo11+1-amd64", Some("debian"), Some("debian 11")),
            (
                "4.19.118-2+deb10u1~bpo9+1-amd64",
                Some("debian"),
                Some("debian 9"),
            ),
            (
                "5.10.136-1~deb10u3-amd64",
                Some("debian"),
                Some("debian 10"),
            ),
            (
                "6.12.58-82.121.amzn2023.x86_64",
                None,
                Some("amazonlinux 2023"),
            ),
            (
                "6.1.127-135.201.amzn2023.x86_64",
                Some("amazonlinux2023"),
                Some("amazonlinux 2023"),
            ),
            ("4.14.326-245.539.amzn2.x86_64", None, Some("amazonlinux 2")),
            ("6.1.0-47-amd64", None, None),
            ("6.8.0-52-generic", Some("ubuntu-generic"), None),
            ("3.10.0-1160.31.1.el7.x86_64", None, None),
            ("5.4.17-2136.311.6.el8uek.x86_64", Some("ol"), None),
            ("4.18.0-372.el8_6.x86_64", None, None),
            ("5.14.0-70.el9.x86_64", Some("ol"), None),
            ("5.10.0-1-amd64", None, None),
        ];
        for (release, target, want) in cases {
            assert_eq!(
                derived(release, target).as_deref(),
                want,
                "{release} {target:?}"
            );
        }
    }
}
