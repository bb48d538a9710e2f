//! `cargo xtask bench build`: what a real driver build costs against the least it could cost.
//!
//! For each suite (Debian 12 with a 6.1 kernel, Debian 13 with a 6.12 kernel) the sample driver
//! is built the way the local backend builds it: the static `driver-builder` inside a fresh root
//! of build-root's cached base image (made with mmdebstrap on first use, reported separately),
//! resolving headers with apt (apt plans the packages, the builder fetches them in parallel and
//! extracts them), compiling with kbuild, writing the .deb and signing it with a throwaway
//! minisign key. Three measurements per suite, all in the same run:
//!
//! - **cold build**: the newest kernel of the suite's series in the root's package lists, made
//!   unseen first by clearing every cached kernel package of the bench's executor (its apt
//!   archive seed and its header cache), so its headers must come from the mirror;
//! - **floor**: what that build cannot avoid — download exactly the kernel's header packages
//!   (the kbuild tree and the tools it runs, the URIs the cold build recorded in
//!   `build-facts.json`) with curl, unpack them with `dpkg-deb -x` into a fresh root and run
//!   `make modules` of the sample driver against them;
//! - **second driver version**: the same kernel with another driver version, against its own
//!   compile phase (issue #16's target: at most 2 s above it).
//!
//! The bench's executor state lives in `<test cache>/bench-build` (base images are hard-linked
//! from the shared test cache when it has the same image). Work roots go where the executor puts
//! them by default (tmpfs when the host has one), as in the build-service. One run; the table is
//! printed in Markdown with each build's ratio to the floor.
//!
//! Needs: root, mmdebstrap (first run), minisign, curl, network access to deb.debian.org.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use build_root::executor::{
    ExecutorConfig, LocalExecutor, SOURCE_DIR, SourceRevision, builder_argv, header_cache_argv,
};
use build_root::root::RootKey;
use kernel_id::{Arch, DriverName, IdentityInput, KernelIdentity, SourceCommit, dpkg_cmp};

const MUSL: &str = "x86_64-unknown-linux-musl";
/// The source revision the benchmark builds record (the sample driver is copied from the working
/// tree, so no real commit names it).
const BENCH_COMMIT: &str = "0000000000000000000000000000000000000000";
const BENCH_REPOSITORY: &str = "https://example.invalid/kernel-driver-delivery.git";
/// The driver versions of the cold build and of the second build of the same kernel.
const FIRST_VERSION: &str = "v0.1.2";
const SECOND_VERSION: &str = "v0.1.3";
/// Where the floor's downloads go inside its root.
const FLOOR_DIR: &str = "/tmp/floor";

/// One suite of the table.
struct Suite {
    label: &'static str,
    distro_version: &'static str,
    /// Releases of this series are candidates, e.g. `6.1.0-` (then `<abi>-amd64`).
    series: &'static str,
}

const SUITES: [Suite; 2] = [
    Suite {
        label: "Debian 12 / 6.1",
        distro_version: "12",
        series: "6.1.0-",
    },
    Suite {
        label: "Debian 13 / 6.12",
        distro_version: "13",
        series: "6.12.",
    },
];

/// A build as the executor and the builder's summary report it.
struct Build {
    total: Duration,
    layering: String,
    root_setup: Duration,
    headers: f64,
    compile: f64,
    rest_in_builder: f64,
    collect_and_cleanup: Duration,
    headers_source: String,
}

/// The floor's three parts.
struct Floor {
    packages: usize,
    bytes: u64,
    download: Duration,
    unpack: Duration,
    make: Duration,
}

impl Floor {
    fn total(&self) -> Duration {
        self.download + self.unpack + self.make
    }
}

struct Column {
    label: &'static str,
    release: String,
    base_image: String,
    suite_ready: Duration,
    cold: Build,
    floor: Floor,
    second: Build,
}

pub fn run() -> Result<()> {
    let builder = testkit::musl_binary("driver-builder", "driver-builder", MUSL)?;
    let cache_dir = testkit::cache_dir().join("bench-build");
    seed_base_images(&cache_dir)?;
    let mut config = ExecutorConfig::new(cache_dir.clone());
    config.builder_binaries.insert(Arch::X86_64, builder);
    let executor = LocalExecutor::new(config);

    let scratch = tempfile::tempdir().context("scratch directory")?;
    let source = scratch.path().join("src");
    std::fs::create_dir_all(source.join("keys"))?;
    copy_dir(
        &testkit::workspace_root().join("driver/example-driver"),
        &source.join("driver"),
    )?;
    let status = Command::new("minisign")
        .args(["-G", "-W", "-f", "-p"])
        .arg(scratch.path().join("minisign.pub"))
        .arg("-s")
        .arg(source.join("keys/minisign.key"))
        .output()
        .context("running minisign -G (install the minisign package)")?;
    if !status.status.success() {
        bail!(
            "minisign -G failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    }

    // Outputs and logs stay for inspection (small: packages, facts and build logs).
    let logs = testkit::test_log_dir("bench-build")?;
    eprintln!("build outputs and logs: {}", logs.display());
    let mut columns = Vec::new();
    for suite in &SUITES {
        columns.push(
            bench_suite(&executor, suite, &source, &logs)
                .with_context(|| format!("benchmarking {}", suite.label))?,
        );
    }
    print_table(&columns);
    Ok(())
}

/// Hard-links the shared test cache's base images (and their digests) into the bench's cache when
/// it has none of its own, so a first bench run does not run mmdebstrap again for the same image.
fn seed_base_images(cache_dir: &Path) -> Result<()> {
    let shared = testkit::cache_dir().join("build-root/roots");
    let roots = cache_dir.join("roots");
    std::fs::create_dir_all(&roots).with_context(|| format!("creating {}", roots.display()))?;
    let Ok(entries) = std::fs::read_dir(&shared) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let text = name.to_string_lossy();
        let image = text.ends_with(".tar.zst") || text.ends_with(".tar.zst.sha256");
        if image && !text.starts_with('.') && !roots.join(&name).exists() {
            std::fs::hard_link(entry.path(), roots.join(&name))
                .or_else(|_| std::fs::copy(entry.path(), roots.join(&name)).map(drop))
                .with_context(|| format!("seeding {}", roots.join(&name).display()))?;
        }
    }
    Ok(())
}

fn identity(release: &str, distro_version: &str, driver_version: &str) -> Result<KernelIdentity> {
    Ok(KernelIdentity::from_input(&IdentityInput {
        kernel_version: release.to_owned(),
        architecture: "x86_64".to_owned(),
        distribution: "debian".to_owned(),
        distro_version: Some(distro_version.to_owned()),
        driver_version: driver_version.to_owned(),
    })?)
}

fn bench_suite(
    executor: &LocalExecutor,
    suite: &Suite,
    source: &Path,
    logs: &Path,
) -> Result<Column> {
    // Any identity of the suite names its root.
    let key = RootKey::for_identity(&identity(
        &format!("{}0-amd64", suite.series),
        suite.distro_version,
        FIRST_VERSION,
    )?);
    let ensure_started = Instant::now();
    let base = executor.roots().ensure(&key).context("base image")?;
    let base_image = match base.created_in {
        Some(took) => format!("made now: {:.0} s", took.as_secs_f64()),
        None => format!(
            "cached ({:.2} s to find)",
            ensure_started.elapsed().as_secs_f64()
        ),
    };
    // A cached suite: its lower directory unpacked and its apt lists fresh (refreshed now only
    // when older than the executor's interval), as for any build after the suite's first.
    let prepared = Instant::now();
    executor
        .prepare_suite(&key, &logs.join(format!("{}-prepare.log", key.slug())))
        .context("preparing the suite")?;
    let suite_ready = prepared.elapsed();
    let release = newest_release(executor, &key, suite.series)?;
    forget_kernel_packages(
        executor,
        &key,
        &identity(&release, suite.distro_version, FIRST_VERSION)?,
    )?;
    eprintln!(
        "{}: cold build of {release} (its cached kernel packages cleared)",
        suite.label
    );

    let out = logs.join(format!("{}-cold", key.slug()));
    let cold = build(
        executor,
        &identity(&release, suite.distro_version, FIRST_VERSION)?,
        source,
        &out,
    )?;
    let floor = floor(executor, &key, &release, source, &out)?;
    eprintln!("{}: second driver version of {release}", suite.label);
    let second = build(
        executor,
        &identity(&release, suite.distro_version, SECOND_VERSION)?,
        source,
        &logs.join(format!("{}-second", key.slug())),
    )?;
    Ok(Column {
        label: suite.label,
        release,
        base_image,
        suite_ready,
        cold,
        floor,
        second,
    })
}

/// The newest `linux-headers-<series>...-amd64` release in the root's package lists (by the
/// package's Debian version), plain `amd64` flavour only.
fn newest_release(executor: &LocalExecutor, key: &RootKey, series: &str) -> Result<String> {
    let (_, work) = executor
        .fresh_root(key)
        .context("a root to read lists in")?;
    let lists = work.root_path().join("var/lib/apt/lists");
    let mut found: Vec<(String, String)> = Vec::new();
    for entry in
        std::fs::read_dir(&lists).with_context(|| format!("reading {}", lists.display()))?
    {
        let path = entry?.path();
        if !path.to_string_lossy().ends_with("_Packages") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for paragraph in text.split("\n\n") {
            let field = |name: &str| {
                paragraph
                    .lines()
                    .find_map(|line| line.strip_prefix(&format!("{name}: ")))
                    .map(str::to_owned)
            };
            let (Some(package), Some(version)) = (field("Package"), field("Version")) else {
                continue;
            };
            let Some(release) = package.strip_prefix("linux-headers-") else {
                continue;
            };
            let plain = abi_and_flavor(release)
                .is_some_and(|(abi, flavor)| abi.starts_with(series) && flavor == "amd64");
            if plain {
                found.push((version, release.to_owned()));
            }
        }
    }
    work.remove().context("removing the list-reading root")?;
    found
        .into_iter()
        .max_by(|a, b| dpkg_cmp(&a.0, &b.0))
        .map(|(_, release)| release)
        .with_context(|| format!("no linux-headers-{series}*-amd64 in {}", key.slug()))
}

/// Clears every cached kernel package of the suite from the bench's executor state: the apt
/// archive seed (`apt-archives/<root>/linux-*`) and the header cache of the kernel, so the build
/// after it has to fetch them as for a kernel it never saw.
fn forget_kernel_packages(
    executor: &LocalExecutor,
    key: &RootKey,
    identity: &KernelIdentity,
) -> Result<()> {
    let archives = executor
        .config()
        .cache_dir
        .join("apt-archives")
        .join(key.slug());
    if let Ok(entries) = std::fs::read_dir(&archives) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("linux-") {
                std::fs::remove_file(entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
    }
    let headers = executor.header_cache().release_dir(identity)?;
    if headers.exists() {
        std::fs::remove_dir_all(&headers)
            .with_context(|| format!("removing {}", headers.display()))?;
    }
    Ok(())
}

fn build(
    executor: &LocalExecutor,
    identity: &KernelIdentity,
    source: &Path,
    out: &Path,
) -> Result<Build> {
    let driver = DriverName::parse("example-driver")?;
    let revision = SourceRevision {
        commit: SourceCommit::parse(BENCH_COMMIT)?,
        repository: BENCH_REPOSITORY.to_owned(),
    };
    let mut argv = builder_argv(identity, &driver, &revision);
    if let Some(at) = argv.iter().position(|a| a == "--source") {
        argv[at + 1] = format!("{SOURCE_DIR}/driver");
    }
    argv.extend(header_cache_argv());
    argv.extend(
        [
            "--minisign-key",
            "/build/src/keys/minisign.key",
            "--summary",
            "/build/out/summary.json",
        ]
        .map(str::to_owned),
    );
    let log = out.with_extension("log");
    let started = Instant::now();
    let report = executor
        .build_with_argv(identity, source, out, &log, &argv)
        .with_context(|| {
            format!(
                "build of {} failed; log:\n{}",
                identity.cache_key(),
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
    let total = started.elapsed();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json"))?)?;
    let phase = |name: &str| -> f64 {
        summary["phases"]
            .as_array()
            .and_then(|phases| phases.iter().find(|p| p["phase"] == name))
            .and_then(|p| p["seconds"].as_f64())
            .unwrap_or(0.0)
    };
    let (headers, compile) = (phase("headers"), phase("compile"));
    Ok(Build {
        total,
        layering: format!("{:?}", report.layering).to_lowercase(),
        root_setup: report.unpack,
        headers,
        compile,
        rest_in_builder: report.run.as_secs_f64() - headers - compile,
        collect_and_cleanup: report.collect + report.cleanup,
        headers_source: summary["headers_source"].as_str().unwrap_or("?").to_owned(),
    })
}

/// What `make modules` needs of what the header step installed: the kbuild tree
/// (`linux-headers-*`, `linux-kbuild-*`) and the BTF tool 6.12 kbuild runs with its libraries
/// (`pahole`, `libdw*`, `libbpf*`). Not the kernel image and its initramfs tooling, which
/// Debian 13's header packages depend on but no module build reads.
fn needed_by_make(package: &str) -> bool {
    [
        "linux-headers-",
        "linux-kbuild-",
        "pahole",
        "libdw",
        "libbpf",
    ]
    .iter()
    .any(|prefix| package.starts_with(prefix))
}

/// Downloads the kernel's header packages the cold build installed (their URIs from its
/// `build-facts.json`), unpacks them into a fresh root and builds the sample driver against them.
fn floor(
    executor: &LocalExecutor,
    key: &RootKey,
    release: &str,
    source: &Path,
    cold_out: &Path,
) -> Result<Floor> {
    let facts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cold_out.join("build-facts.json"))
            .context("reading the cold build's build-facts.json")?,
    )?;
    let uris: Vec<String> = facts["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"].as_str().is_some_and(needed_by_make))
        .filter_map(|p| p["uri"].as_str().map(str::to_owned))
        .collect();
    if uris.is_empty() {
        bail!("the cold build recorded no header package URIs");
    }
    let (_, work) = executor.fresh_root(key).context("the floor's root")?;
    work.copy_dir_in(source, SOURCE_DIR)?;
    let downloads = work.root_path().join(FLOOR_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(&downloads)?;
    let log = cold_out.with_extension("floor.log");

    let started = Instant::now();
    for uri in &uris {
        let name = uri.rsplit('/').next().unwrap_or("package.deb");
        let status = Command::new("curl")
            .args(["-fsS", "--retry", "3", "-o"])
            .arg(downloads.join(name))
            .arg(uri)
            .status()
            .context("running curl")?;
        if !status.success() {
            bail!("curl {uri}: {status}");
        }
    }
    let download = started.elapsed();
    let bytes = std::fs::read_dir(&downloads)?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();

    let limit = Duration::from_secs(1200);
    let unpack = work
        .run(
            &shell(&format!(
                // `dpkg-deb -x` would replace the merged-/usr links (`/lib`) with directories.
                "set -e; for deb in {FLOOR_DIR}/*.deb; do \
                 dpkg-deb --fsys-tarfile \"$deb\" | tar -x --keep-directory-symlink -C /; done"
            )),
            &log,
            limit,
        )
        .with_context(|| format!("unpacking the header packages; see {}", log.display()))?;
    let make = work
        .run(
            &shell(&format!(
                "make -j\"$(nproc)\" -C /usr/src/linux-headers-{release} M={SOURCE_DIR}/driver modules \
                 EXAMPLE_DRIVER_VERSION={FIRST_VERSION} KDRIVER_SOURCE_COMMIT={BENCH_COMMIT}"
            )),
            &log,
            limit,
        )
        .with_context(|| format!("make modules; see {}", log.display()))?;
    work.remove()?;
    Ok(Floor {
        packages: uris.len(),
        bytes,
        download,
        unpack,
        make,
    })
}

/// A Debian release split into its ABI (the leading dash-separated parts starting with a digit)
/// and its flavour: `6.1.0-57-cloud-amd64` -> (`6.1.0-57`, `cloud-amd64`).
fn abi_and_flavor(release: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = release.split('-').collect();
    let abi = parts
        .iter()
        .take_while(|p| p.starts_with(|c: char| c.is_ascii_digit()))
        .count();
    (abi > 0 && abi < parts.len()).then(|| (parts[..abi].join("-"), parts[abi..].join("-")))
}

fn shell(script: &str) -> Vec<String> {
    vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()]
}

/// Which of a column's builds a group of rows shows.
type PickBuild = fn(&Column) -> &Build;

fn print_table(columns: &[Column]) {
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let row = |name: &str, cell: &dyn Fn(&Column) -> String| {
        let cells: Vec<String> = columns.iter().map(cell).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    println!();
    let header: Vec<String> = columns
        .iter()
        .map(|c| format!("{} (`{}`)", c.label, c.release))
        .collect();
    println!(
        "| driver build benchmark, x86_64 | {} |",
        header.join(" | ")
    );
    println!("|---|{}", "---|".repeat(columns.len()));
    row("base image (mmdebstrap)", &|c| c.base_image.clone());
    row(
        "suite ready (lower directory, apt lists; untimed below)",
        &|c| secs(c.suite_ready),
    );
    row("**floor**: download header packages", &|c| {
        format!(
            "{} ({} files, {:.1} MB)",
            secs(c.floor.download),
            c.floor.packages,
            c.floor.bytes as f64 / 1e6
        )
    });
    row("floor: unpack them (dpkg-deb \\| tar)", &|c| {
        secs(c.floor.unpack)
    });
    row("floor: make modules", &|c| secs(c.floor.make));
    row("**floor total**", &|c| {
        format!("**{}** (1.00x)", secs(c.floor.total()))
    });
    let builds: [(&str, PickBuild); 2] = [
        ("cold build, unseen kernel", |c| &c.cold),
        ("second driver version, same kernel", |c| &c.second),
    ];
    for (name, pick) in builds {
        row(&format!("**{name}**"), &|c| {
            let b = pick(c);
            format!(
                "**{}** ({:.2}x floor)",
                secs(b.total),
                b.total.as_secs_f64() / c.floor.total().as_secs_f64()
            )
        });
        row("  root setup", &|c| {
            format!("{} ({})", secs(pick(c).root_setup), pick(c).layering)
        });
        row("  headers", &|c| {
            format!("{:.2} s ({})", pick(c).headers, pick(c).headers_source)
        });
        row("  compile", &|c| format!("{:.2} s", pick(c).compile));
        row(
            "  rest of the builder (facts, package, sign, start)",
            &|c| format!("{:.2} s", pick(c).rest_in_builder),
        );
        row("  copy out + root removal", &|c| {
            secs(pick(c).collect_and_cleanup)
        });
    }
    row("second build − its compile (target ≤ 2 s)", &|c| {
        format!("{:.2} s", c.second.total.as_secs_f64() - c.second.compile)
    });
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
