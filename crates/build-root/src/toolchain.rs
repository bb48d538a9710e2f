//! The toolchain package list shared with the Dockerfiles (`toolchain/packages.txt`).
//!
//! The file is embedded at compile time so a build root can never be made from a different list than
//! the one the container images install; `toolchain/packages.sh` reads the same file with awk for the
//! Dockerfiles, and a test checks that both readers agree for every supported distro version.

use kernel_id::{Distribution, DistroVersion};

/// The list as committed, shared with `docker/Dockerfile.base.*`.
pub const PACKAGES_TXT: &str = include_str!("../../../toolchain/packages.txt");

/// A malformed line in the toolchain list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("toolchain list line {line}: {rule}")]
pub struct ToolchainListError {
    /// 1-based line number in the list.
    pub line: usize,
    /// What the line breaks.
    pub rule: String,
}

/// One `<distribution> <version|*> <package>...` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    distribution: Distribution,
    /// `None` means every version (`*`).
    version: Option<String>,
    packages: Vec<String>,
}

/// The parsed toolchain list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolchainList {
    rules: Vec<Rule>,
}

impl ToolchainList {
    /// The list committed in `toolchain/packages.txt`.
    pub fn embedded() -> Result<Self, ToolchainListError> {
        Self::parse(PACKAGES_TXT)
    }

    /// Parses the list format; every field is checked so a typo fails here rather than deep inside
    /// mmdebstrap or dnf.
    pub fn parse(text: &str) -> Result<Self, ToolchainListError> {
        let mut rules = Vec::new();
        for (index, raw_line) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw_line.split('#').next().unwrap_or_default();
            let mut fields = content.split_whitespace();
            let Some(distribution_field) = fields.next() else {
                continue;
            };
            let distribution =
                Distribution::parse(distribution_field).map_err(|error| ToolchainListError {
                    line,
                    rule: format!("unknown distribution '{distribution_field}': {error}"),
                })?;
            let version_field = fields.next().ok_or_else(|| ToolchainListError {
                line,
                rule: "expected '<distribution> <version|*> <package>...'".to_owned(),
            })?;
            let version = if version_field == "*" {
                None
            } else {
                DistroVersion::supported(distribution, version_field).map_err(|error| ToolchainListError {
                    line,
                    rule: format!("version '{version_field}' is not a supported {distribution} version: {error}"),
                })?;
                Some(version_field.to_owned())
            };
            let packages: Vec<String> = fields.map(str::to_owned).collect();
            if packages.is_empty() {
                return Err(ToolchainListError {
                    line,
                    rule: "a rule must name at least one package".to_owned(),
                });
            }
            if let Some(bad) = packages.iter().find(|name| !is_package_name(name)) {
                return Err(ToolchainListError {
                    line,
                    rule: format!(
                        "'{bad}' is not a package name (lower-case [a-z0-9+.-], starting alphanumeric)"
                    ),
                });
            }
            rules.push(Rule {
                distribution,
                version,
                packages,
            });
        }
        Ok(Self { rules })
    }

    /// The packages for one distro version, in file order, without duplicates.
    pub fn packages(&self, version: &DistroVersion) -> Vec<String> {
        let mut packages: Vec<String> = Vec::new();
        let matching = self.rules.iter().filter(|rule| {
            rule.distribution == version.distribution()
                && rule
                    .version
                    .as_deref()
                    .is_none_or(|wanted| wanted == version.as_str())
        });
        for rule in matching {
            for package in &rule.packages {
                if !packages.contains(package) {
                    packages.push(package.clone());
                }
            }
        }
        packages
    }
}

/// Debian policy's package name rule, which rpm names in the list also follow; it keeps names safe to
/// pass as mmdebstrap and shell arguments.
fn is_package_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_lowercase() || first.is_ascii_digit())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(distribution: &str, raw: &str) -> DistroVersion {
        DistroVersion::supported(
            Distribution::parse(distribution).expect("distribution"),
            raw,
        )
        .expect("version")
    }

    #[test]
    fn embedded_list_covers_every_supported_distro_version() {
        let list = ToolchainList::embedded().expect("committed list parses");
        for distribution in Distribution::all() {
            for supported in distribution.supported_versions() {
                let packages = list.packages(&supported);
                assert!(
                    packages.len() >= 5,
                    "{distribution} {supported}: {packages:?}"
                );
            }
        }
    }

    #[test]
    fn debian_family_gets_the_kbuild_toolchain() {
        let list = ToolchainList::embedded().expect("committed list parses");
        let bookworm = list.packages(&version("debian", "12"));
        for needed in [
            "build-essential",
            "bc",
            "bison",
            "flex",
            "kmod",
            "libelf-dev",
            "libssl-dev",
            "ca-certificates",
        ] {
            assert!(
                bookworm.iter().any(|p| p == needed),
                "{needed} missing from {bookworm:?}"
            );
        }
        let fedora = list.packages(&version("fedora", "42"));
        assert!(fedora.iter().any(|p| p == "elfutils-libelf-devel"));
    }

    #[test]
    fn version_rules_add_to_the_wildcard_rule() {
        let list = ToolchainList::parse("ubuntu * gcc make\nubuntu 22.04 gcc-12 make # dup\n")
            .expect("parses");
        assert_eq!(
            list.packages(&version("ubuntu", "22.04")),
            ["gcc", "make", "gcc-12"]
        );
        assert_eq!(list.packages(&version("ubuntu", "24.04")), ["gcc", "make"]);
    }

    #[test]
    fn malformed_lines_name_the_line_and_rule() {
        let cases = [
            ("debain * gcc", 1, "unknown distribution"),
            ("\ndebian", 2, "expected"),
            ("debian 99 gcc", 1, "not a supported"),
            ("debian *", 1, "at least one package"),
            ("debian * GCC", 1, "not a package name"),
            ("debian * gcc;rm", 1, "not a package name"),
            ("debian * $(x)", 1, "not a package name"),
        ];
        for (text, line, rule) in cases {
            let error = ToolchainList::parse(text).expect_err(text);
            assert_eq!(error.line, line, "{text}");
            assert!(error.rule.contains(rule), "{text}: {error}");
        }
    }
}
