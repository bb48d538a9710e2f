//! Planning, a pure function: given the kernel families the fleet runs (each with the releases its
//! nodes boot and the driver versions they run) and the kernels the distributions publish, pick
//! for each family the newest published kernel whose headers are published too, when it is newer
//! than every release the fleet runs in that family; the result is one identity per driver version.
//!
//! Order: Debian and Ubuntu kernels by their package versions in dpkg's order, rpm kernels by
//! their EVR in rpm's order (kernel-id's `version_order`); a release the fleet runs that the
//! indexes no longer list is compared by kernel-id's kernel-release order. Only releases the
//! family contains ([`KernelFamily::contains`]) are candidates, so a `-cloud-amd64` or `-rt-amd64`
//! kernel, or another series, is never picked for an `amd64` family; families nobody runs get
//! nothing.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use kernel_id::{
    Arch, DistroVersion, DriverVersion, KernelFamily, KernelIdentity, KernelRelease, PackageFormat,
    RpmEvr, dpkg_cmp, kernel_release_cmp,
};

/// A kernel the indexes publish for one distribution version and architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its package version (deb) or EVR (rpm): the order key.
    pub version: String,
    /// Whether its headers are published for the same distribution version and architecture.
    pub headers: bool,
}

/// Every published kernel, by (distribution version, architecture) and release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// By target, then by release string.
    pub targets: BTreeMap<(DistroVersion, Arch), BTreeMap<String, Published>>,
}

impl Catalog {
    /// Adds a kernel; when the release is already known, the higher version is kept and headers
    /// count if either says so.
    pub fn add(
        &mut self,
        target: &(DistroVersion, Arch),
        release: &str,
        version: &str,
        headers: bool,
    ) {
        let format = target.0.distribution().package_format();
        let kernels = self.targets.entry(target.clone()).or_default();
        match kernels.get_mut(release) {
            Some(known) => {
                if version_cmp(format, version, &known.version, release, release)
                    == Ordering::Greater
                {
                    known.version = version.to_owned();
                }
                known.headers |= headers;
            }
            None => {
                kernels.insert(
                    release.to_owned(),
                    Published {
                        version: version.to_owned(),
                        headers,
                    },
                );
            }
        }
    }

    /// The kernels of one target.
    pub fn kernels(&self, target: &(DistroVersion, Arch)) -> Option<&BTreeMap<String, Published>> {
        self.targets.get(target)
    }
}

/// One family the fleet runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyDemand {
    /// The family.
    pub family: KernelFamily,
    /// Releases of it nodes run (or have installed).
    pub releases: BTreeSet<KernelRelease>,
    /// Driver versions nodes of it run.
    pub driver_versions: BTreeSet<DriverVersion>,
}

/// What the plan says for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyPlan {
    /// The family.
    pub family: KernelFamily,
    /// Published kernels of the family (with or without headers).
    pub kernels_found: usize,
    /// The newest of them with headers.
    pub newest: Option<KernelRelease>,
    /// The kernel to prebuild: `newest`, when it is newer than every release the fleet runs.
    pub prebuild: Option<KernelRelease>,
    /// One identity per driver version for `prebuild`.
    pub identities: Vec<KernelIdentity>,
    /// Identities kernel-id refused, each with the reason.
    pub refused: Vec<String>,
}

/// Package-version order of two kernels of one format; `release_*` break ties and stand in when a
/// version does not parse.
fn version_cmp(
    format: PackageFormat,
    a: &str,
    b: &str,
    release_a: &str,
    release_b: &str,
) -> Ordering {
    let by_version = match format {
        PackageFormat::Deb => dpkg_cmp(a, b),
        PackageFormat::Rpm => match (RpmEvr::parse(a), RpmEvr::parse(b)) {
            (Ok(a), Ok(b)) => a.cmp(&b),
            _ => Ordering::Equal,
        },
    };
    by_version.then_with(|| kernel_release_cmp(release_a, release_b))
}

/// Plans the prebuilds (see the module documentation).
pub fn plan(demands: &[FamilyDemand], catalog: &Catalog) -> Vec<FamilyPlan> {
    demands
        .iter()
        .map(|demand| plan_family(demand, catalog))
        .collect()
}

fn plan_family(demand: &FamilyDemand, catalog: &Catalog) -> FamilyPlan {
    let family = &demand.family;
    let target = (family.distro_version().clone(), family.arch());
    let format = family.distro_version().distribution().package_format();
    let empty = BTreeMap::new();
    let kernels = catalog.kernels(&target).unwrap_or(&empty);
    let members: Vec<(KernelRelease, &Published)> = kernels
        .iter()
        .filter_map(|(release, published)| {
            let release = KernelRelease::parse(release).ok()?;
            family.contains(&release).then_some((release, published))
        })
        .collect();
    let newest = members
        .iter()
        .filter(|(_, published)| published.headers)
        .max_by(|(ra, a), (rb, b)| {
            version_cmp(format, &a.version, &b.version, ra.as_str(), rb.as_str())
        })
        .map(|(release, published)| (release.clone(), (*published).clone()));
    let mut result = FamilyPlan {
        family: family.clone(),
        kernels_found: members.len(),
        newest: newest.as_ref().map(|(release, _)| release.clone()),
        prebuild: None,
        identities: Vec::new(),
        refused: Vec::new(),
    };
    let Some((candidate, published)) = newest else {
        return result;
    };
    let newer_than_fleet = demand.releases.iter().all(|running| {
        let order = match kernels.get(running.as_str()) {
            Some(known) => version_cmp(
                format,
                &published.version,
                &known.version,
                candidate.as_str(),
                running.as_str(),
            ),
            None => kernel_release_cmp(candidate.as_str(), running.as_str()),
        };
        order == Ordering::Greater
    });
    if !newer_than_fleet {
        return result;
    }
    result.prebuild = Some(candidate.clone());
    for driver_version in &demand.driver_versions {
        match KernelIdentity::new(
            candidate.clone(),
            family.arch(),
            family.distro_version().clone(),
            driver_version.clone(),
        ) {
            Ok(identity) => result.identities.push(identity),
            Err(error) => result
                .refused
                .push(format!("{candidate} {driver_version}: {error}")),
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel_id::Distribution;

    fn version(distribution: &str, version: &str) -> DistroVersion {
        DistroVersion::supported(Distribution::parse(distribution).unwrap(), version).unwrap()
    }

    fn release(raw: &str) -> KernelRelease {
        KernelRelease::parse(raw).unwrap()
    }

    fn demand(
        distribution: &str,
        distro_version: &str,
        running: &[&str],
        drivers: &[&str],
    ) -> FamilyDemand {
        let dv = version(distribution, distro_version);
        FamilyDemand {
            family: KernelFamily::of_release(&release(running[0]), Arch::X86_64, &dv).unwrap(),
            releases: running.iter().map(|r| release(r)).collect(),
            driver_versions: drivers
                .iter()
                .map(|d| DriverVersion::parse(d).unwrap())
                .collect(),
        }
    }

    fn bookworm_catalog() -> Catalog {
        let target = (version("debian", "12"), Arch::X86_64);
        let mut catalog = Catalog::default();
        for (r, v, headers) in [
            ("6.1.0-47-amd64", "6.1.158-1", true),
            ("6.1.0-9-amd64", "6.1.27-1", true),
            ("6.1.0-48-amd64", "6.1.159-1", true),
            ("6.1.0-49-amd64", "6.1.160-1", false),
            ("6.1.0-50-cloud-amd64", "6.1.161-1", true),
            ("6.1.0-50-rt-amd64", "6.1.161-1", true),
            ("6.12.38+deb12-amd64", "6.12.38-1~deb12u1", true),
        ] {
            catalog.add(&target, r, v, headers);
        }
        catalog
    }

    #[test]
    fn the_newest_kernel_of_the_family_with_headers_is_prebuilt_for_every_driver_version() {
        let plans = plan(
            &[demand(
                "debian",
                "12",
                &["6.1.0-47-amd64", "6.1.0-9-amd64"],
                &["v0.1.2", "v0.2.0"],
            )],
            &bookworm_catalog(),
        );
        let plan = &plans[0];
        // -49 has no headers; cloud, rt and 6.12 are other families.
        assert_eq!(plan.prebuild, Some(release("6.1.0-48-amd64")));
        assert_eq!(plan.kernels_found, 4);
        let keys: Vec<String> = plan
            .identities
            .iter()
            .map(KernelIdentity::cache_key)
            .collect();
        assert_eq!(
            keys,
            [
                "debian/12/x86_64/6.1.0-48-amd64/v0.1.2",
                "debian/12/x86_64/6.1.0-48-amd64/v0.2.0"
            ]
        );
    }

    #[test]
    fn nothing_when_the_fleet_already_runs_the_newest_or_a_newer_one() {
        let catalog = bookworm_catalog();
        let current = plan(
            &[demand("debian", "12", &["6.1.0-48-amd64"], &["v0.1.2"])],
            &catalog,
        );
        assert_eq!(current[0].prebuild, None);
        assert_eq!(current[0].newest, Some(release("6.1.0-48-amd64")));
        // A release the indexes do not list is compared by release order.
        let ahead = plan(
            &[demand("debian", "12", &["6.1.0-51-amd64"], &["v0.1.2"])],
            &catalog,
        );
        assert_eq!(ahead[0].prebuild, None);
        assert!(plan(&[], &catalog).is_empty());
    }

    #[test]
    fn the_cloud_family_gets_its_own_kernel() {
        let plans = plan(
            &[demand(
                "debian",
                "12",
                &["6.1.0-47-cloud-amd64"],
                &["v0.1.2"],
            )],
            &bookworm_catalog(),
        );
        assert_eq!(plans[0].prebuild, Some(release("6.1.0-50-cloud-amd64")));
    }

    #[test]
    fn rpm_kernels_order_by_evr_not_by_string() {
        let target = (version("fedora", "42"), Arch::X86_64);
        let mut catalog = Catalog::default();
        catalog.add(&target, "6.14.9-300.fc42.x86_64", "6.14.9-300.fc42", true);
        catalog.add(&target, "6.14.10-300.fc42.x86_64", "6.14.10-300.fc42", true);
        catalog.add(
            &target,
            "6.14.11-300.fc42.x86_64",
            "6.14.11-300.fc42",
            false,
        );
        let plans = plan(
            &[demand(
                "fedora",
                "42",
                &["6.14.9-300.fc42.x86_64"],
                &["v0.1.2"],
            )],
            &catalog,
        );
        assert_eq!(plans[0].prebuild, Some(release("6.14.10-300.fc42.x86_64")));
        // The same release seen twice keeps the higher version and any headers.
        catalog.add(&target, "6.14.11-300.fc42.x86_64", "6.14.11-300.fc42", true);
        let plans = plan(
            &[demand(
                "fedora",
                "42",
                &["6.14.9-300.fc42.x86_64"],
                &["v0.1.2"],
            )],
            &catalog,
        );
        assert_eq!(plans[0].prebuild, Some(release("6.14.11-300.fc42.x86_64")));
    }

    #[test]
    fn dpkg_order_puts_backports_below_the_release_they_backport() {
        let target = (version("debian", "12"), Arch::X86_64);
        let mut catalog = Catalog::default();
        catalog.add(&target, "6.12.38+deb12-amd64", "6.12.38-1~bpo12+1", true);
        catalog.add(&target, "6.12.38+deb12-amd64", "6.12.38-1", true);
        assert_eq!(
            catalog.kernels(&target).unwrap()["6.12.38+deb12-amd64"].version,
            "6.12.38-1"
        );
    }
}
