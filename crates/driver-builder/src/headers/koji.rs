//! Koji build systems as a header source: Fedora's Koji and CentOS's CBS / Stream hubs keep every
//! kernel build ever made, long after the mirrors dropped it.
//!
//! Protocol (anonymous XML-RPC reads on the hub): `getBuild("<nvr>")` returns the build struct (or
//! nil), `listRPMs(buildID=<id>, arches=[<arch>])` its RPMs; the file is then fetched from the
//! profile's topurl in Koji's `PathInfo` layout:
//! `{topurl}[/vol/{volume}]/packages/{build name}/{version}/{release}/{arch}/{rpm name}-{version}-{release}.{arch}.rpm`
//! (`/vol/...` only when the build's volume is not `DEFAULT`).

use std::fmt;

use kernel_id::KernelIdentity;

use crate::xmlrpc::{self, Value};

use super::rpm::install_rpms;
use super::{HeaderContext, HeaderSource, SourceFailure, download_all};

/// A Koji instance: a hub for queries and a topurl for files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KojiProfile {
    pub name: String,
    pub hub: String,
    pub topurl: String,
}

impl KojiProfile {
    pub fn new(name: &str, hub: &str, topurl: &str) -> KojiProfile {
        KojiProfile {
            name: name.to_owned(),
            hub: hub.trim_end_matches('/').to_owned(),
            topurl: topurl.trim_end_matches('/').to_owned(),
        }
    }

    /// The built-in profiles: `fedora`, `cbs` and `stream`.
    pub fn builtin(name: &str) -> Option<KojiProfile> {
        match name {
            "fedora" => Some(KojiProfile::new(
                "fedora",
                "https://koji.fedoraproject.org/kojihub",
                "https://kojipkgs.fedoraproject.org",
            )),
            "cbs" => Some(KojiProfile::new(
                "cbs",
                "https://cbs.centos.org/kojihub",
                "https://cbs.centos.org/kojifiles",
            )),
            "stream" => Some(KojiProfile::new(
                "stream",
                "https://kojihub.stream.centos.org/kojihub",
                "https://kojihub.stream.centos.org/kojifiles",
            )),
            _ => None,
        }
    }

    /// The profiles asked by default: Fedora's Koji for Fedora; for CentOS Stream the CBS hub,
    /// then the Stream hub that builds the distribution's own kernels.
    pub fn defaults_for(distribution: &str) -> Vec<KojiProfile> {
        let names: &[&str] = match distribution {
            "fedora" => &["fedora"],
            "centos" => &["cbs", "stream"],
            _ => &[],
        };
        names
            .iter()
            .filter_map(|n| KojiProfile::builtin(n))
            .collect()
    }

    /// `--koji-profile` syntax: a built-in name, or `name=<hub url>,<topurl>`.
    pub fn parse(spec: &str) -> Result<KojiProfile, String> {
        if let Some((name, urls)) = spec.split_once('=') {
            let (hub, topurl) = urls.split_once(',').ok_or_else(|| {
                format!("koji profile '{spec}': expected name=<hub url>,<topurl>")
            })?;
            let valid_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid_name {
                return Err(format!(
                    "koji profile '{spec}': the name must be [A-Za-z0-9_-]+"
                ));
            }
            for url in [hub, topurl] {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!(
                        "koji profile '{spec}': '{url}' must be an http(s) URL"
                    ));
                }
            }
            Ok(KojiProfile::new(name, hub, topurl))
        } else {
            KojiProfile::builtin(spec).ok_or_else(|| {
                format!(
                    "koji profile '{spec}': unknown; built-in profiles are fedora, cbs, stream, or give name=<hub url>,<topurl>"
                )
            })
        }
    }
}

impl fmt::Display for KojiProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.hub)
    }
}

/// The Koji build NVR of a kernel release and its version/release parts:
/// `6.14.0-100.fc42.x86_64` -> (`kernel-6.14.0-100.fc42`, `6.14.0`, `100.fc42`).
pub fn koji_nvr(identity: &KernelIdentity) -> Option<(String, String, String)> {
    let release = identity.kernel_release().as_str();
    let without_arch = release
        .strip_suffix(&format!(".{}", identity.arch().rpm_name()))
        .unwrap_or(release);
    let (version, rpm_release) = without_arch.split_once('-')?;
    if version.is_empty() || rpm_release.is_empty() {
        return None;
    }
    Some((
        format!("kernel-{version}-{rpm_release}"),
        version.to_owned(),
        rpm_release.to_owned(),
    ))
}

/// Asks one Koji profile for the release's `kernel-devel` RPM.
#[derive(Debug, Clone)]
pub struct KojiSource {
    profile: KojiProfile,
}

impl KojiSource {
    pub fn new(profile: KojiProfile) -> KojiSource {
        KojiSource { profile }
    }

    fn call(
        &self,
        ctx: &HeaderContext<'_>,
        method: &str,
        params: &[Value],
    ) -> Result<Value, SourceFailure> {
        let body = xmlrpc::method_call(method, params);
        let answer = ctx
            .http
            .post_xml(&self.profile.hub, &body)
            .map_err(|e| SourceFailure::Failed(format!("{method}: {e}")))?;
        xmlrpc::parse_response(&answer)
            .map_err(|e| SourceFailure::Failed(format!("{method} on {}: {e}", self.profile.hub)))
    }

    /// The download URL of the build's kernel-devel RPM for the identity's architecture.
    pub fn find_kernel_devel(&self, ctx: &HeaderContext<'_>) -> Result<String, SourceFailure> {
        let release = ctx.identity.kernel_release().as_str();
        let (nvr, _, _) = koji_nvr(ctx.identity).ok_or_else(|| {
            SourceFailure::Skipped(format!("{release} has no <version>-<release> form"))
        })?;
        let build = self.call(ctx, "getBuild", &[Value::from(nvr.as_str())])?;
        if build == Value::Nil {
            return Err(SourceFailure::Failed(format!(
                "getBuild: no build {nvr} on {}",
                self.profile.hub
            )));
        }
        let field = |name: &str| {
            build.get(name).cloned().ok_or_else(|| {
                SourceFailure::Failed(format!("getBuild({nvr}): answer has no '{name}'"))
            })
        };
        let id = field("id")?
            .as_i64()
            .ok_or_else(|| SourceFailure::Failed(format!("getBuild({nvr}): 'id' is not an int")))?;
        // Koji build states: 0 building, 1 complete, 2 deleted, 3 failed, 4 canceled.
        if let Some(state) = build.get("state").and_then(Value::as_i64)
            && state != 1
        {
            return Err(SourceFailure::Failed(format!(
                "build {nvr} (id {id}) is not complete (state {state})"
            )));
        }
        let text = |name: &str| -> Result<String, SourceFailure> {
            field(name)?.as_str().map(str::to_owned).ok_or_else(|| {
                SourceFailure::Failed(format!("getBuild({nvr}): '{name}' is not a string"))
            })
        };
        let (build_name, version, rpm_release) =
            (text("name")?, text("version")?, text("release")?);
        let volume = build
            .get("volume_name")
            .and_then(Value::as_str)
            .unwrap_or("DEFAULT")
            .to_owned();
        let arch = ctx.identity.arch().rpm_name();
        let rpms = self.call(
            ctx,
            "listRPMs",
            &[xmlrpc::kwargs([
                ("buildID", Value::Int(id)),
                ("arches", Value::Array(vec![Value::from(arch)])),
            ])],
        )?;
        let rpms = rpms.as_array().ok_or_else(|| {
            SourceFailure::Failed(format!("listRPMs(buildID={id}): answer is not an array"))
        })?;
        let devel = rpms
            .iter()
            .find(|rpm| {
                rpm.get("name").and_then(Value::as_str) == Some("kernel-devel")
                    && rpm.get("arch").and_then(Value::as_str) == Some(arch)
            })
            .ok_or_else(|| {
                let names: Vec<&str> = rpms
                    .iter()
                    .filter_map(|rpm| rpm.get("name").and_then(Value::as_str))
                    .collect();
                SourceFailure::Failed(format!(
                    "build {nvr} (id {id}) has no kernel-devel for {arch} (RPMs: {})",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ))
            })?;
        let rpm_field = |name: &str, fallback: &str| {
            devel
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or(fallback)
                .to_owned()
        };
        let rpm_version = rpm_field("version", &version);
        let rpm_rel = rpm_field("release", &rpm_release);
        let volume_part = if volume == "DEFAULT" {
            String::new()
        } else {
            format!("/vol/{volume}")
        };
        Ok(format!(
            "{}{volume_part}/packages/{build_name}/{version}/{rpm_release}/{arch}/kernel-devel-{rpm_version}-{rpm_rel}.{arch}.rpm",
            self.profile.topurl
        ))
    }
}

impl HeaderSource for KojiSource {
    fn describe(&self) -> String {
        format!("koji profile {}", self.profile)
    }

    fn install(
        &self,
        ctx: &HeaderContext<'_>,
    ) -> Result<Vec<integrity::HeaderPackage>, SourceFailure> {
        let url = self.find_kernel_devel(ctx)?;
        tracing::info!(profile = %self.profile.name, url = %url, "koji: found kernel-devel");
        let files = download_all(ctx, &[url], "rpm")?;
        install_rpms(ctx, files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel_id::{Arch, Distribution, DistroVersion, DriverVersion, KernelRelease};

    #[test]
    fn nvr_comes_from_the_release_without_arch() {
        let identity = |release: &str, distribution: &str, version: &str| {
            let distribution = Distribution::parse(distribution).expect("distribution");
            KernelIdentity::new(
                KernelRelease::parse(release).expect("release"),
                Arch::X86_64,
                DistroVersion::supported(distribution, version).expect("version"),
                DriverVersion::parse("v0.1.2").expect("driver version"),
            )
            .expect("identity")
        };
        assert_eq!(
            koji_nvr(&identity("6.14.0-100.fc42.x86_64", "fedora", "42")),
            Some((
                "kernel-6.14.0-100.fc42".into(),
                "6.14.0".into(),
                "100.fc42".into()
            ))
        );
        assert_eq!(
            koji_nvr(&identity("5.14.0-570.el9.x86_64", "centos", "stream9")).map(|n| n.0),
            Some("kernel-5.14.0-570.el9".into())
        );
    }

    #[test]
    fn profiles_are_chosen_by_distribution_and_overridable() {
        let names = |d: &str| -> Vec<String> {
            KojiProfile::defaults_for(d)
                .into_iter()
                .map(|p| p.name)
                .collect()
        };
        assert_eq!(names("fedora"), vec!["fedora"]);
        assert_eq!(names("centos"), vec!["cbs", "stream"]);
        assert!(names("debian").is_empty());
        assert_eq!(
            KojiProfile::parse("local=http://127.0.0.1:1/kojihub,http://127.0.0.1:1/files/"),
            Ok(KojiProfile::new(
                "local",
                "http://127.0.0.1:1/kojihub",
                "http://127.0.0.1:1/files"
            ))
        );
        assert!(KojiProfile::parse("nope").is_err());
        assert!(KojiProfile::parse("x=ftp://a,http://b").is_err());
        assert!(KojiProfile::parse("x=http://a").is_err());
        assert!(KojiProfile::parse("a b=http://a,http://b").is_err());
    }
}
