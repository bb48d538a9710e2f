//! `cargo xtask bench build`: where the time of one real driver build goes.
//!
//! Builds the sample driver for bookworm `6.1.0-47-amd64` the way the local backend does: the
//! static `driver-builder` runs inside a fresh root unpacked from build-root's cached bookworm base
//! image (made with mmdebstrap on first use, reported separately), resolving headers with apt,
//! compiling with kbuild, writing the .deb and signing it with a throwaway minisign key. Phase
//! times come from the executor (root unpack, whole builder run, copy-out and cleanup) and from
//! the builder's own JSON summary (headers, compile, package, sign). One run; the table is
//! printed in Markdown.
//!
//! Needs: root, mmdebstrap (first run), minisign, network access to deb.debian.org.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use build_root::executor::{ExecutorConfig, LocalExecutor, SourceRevision, builder_argv};
use build_root::root::RootKey;
use kernel_id::{Arch, DriverName, IdentityInput, KernelIdentity, SourceCommit};

const RELEASE: &str = "6.1.0-47-amd64";
const MUSL: &str = "x86_64-unknown-linux-musl";
/// The source revision the benchmark build records (the sample driver is copied from the working
/// tree, so no real commit names it).
const BENCH_COMMIT: &str = "0000000000000000000000000000000000000000";
const BENCH_REPOSITORY: &str = "https://example.invalid/kernel-driver-delivery.git";

pub fn run() -> Result<()> {
    let identity = KernelIdentity::from_input(&IdentityInput {
        kernel_version: RELEASE.to_owned(),
        architecture: "x86_64".to_owned(),
        distribution: "debian".to_owned(),
        distro_version: Some("12".to_owned()),
        driver_version: "v0.1.2".to_owned(),
    })?;
    let driver = DriverName::parse("example-driver")?;
    let builder = testkit::musl_binary("driver-builder", "driver-builder", MUSL)?;

    let cache_dir = testkit::cache_dir().join("build-root");
    let mut config = ExecutorConfig::new(cache_dir.clone());
    config.work_dir = cache_dir.join("work-bench");
    config.builder_binaries.insert(Arch::X86_64, builder);
    let executor = LocalExecutor::new(config);

    let ensure_started = Instant::now();
    let base = executor
        .roots()
        .ensure(&RootKey::for_identity(&identity))
        .context("bookworm base image")?;
    let base_image = match base.created_in {
        Some(took) => format!("made now: {:.1} s", took.as_secs_f64()),
        None => format!(
            "cached ({:.1} s to find)",
            ensure_started.elapsed().as_secs_f64()
        ),
    };

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
    let source_revision = SourceRevision {
        commit: SourceCommit::parse(BENCH_COMMIT)?,
        repository: BENCH_REPOSITORY.to_owned(),
    };
    let mut argv = builder_argv(&identity, &driver, &source_revision);
    if let Some(at) = argv.iter().position(|a| a == "--source") {
        argv[at + 1] = "/build/src/driver".to_owned();
    }
    argv.extend(
        [
            "--minisign-key",
            "/build/src/keys/minisign.key",
            "--summary",
            "/build/out/summary.json",
        ]
        .map(str::to_owned),
    );
    let out = scratch.path().join("out");
    let log = scratch.path().join("build.log");
    let started = Instant::now();
    let report = executor
        .build_with_argv(&identity, &source, &out, &log, &argv)
        .with_context(|| {
            format!(
                "build failed; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
    let total = started.elapsed();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json"))?)?;
    let phase = |name: &str| -> String {
        summary["phases"]
            .as_array()
            .and_then(|phases| phases.iter().find(|p| p["phase"] == name))
            .and_then(|p| p["seconds"].as_f64())
            .map_or("-".to_owned(), |s| format!("{s:.2} s"))
    };
    let package_size = summary["package"]
        .as_str()
        .and_then(|p| Path::new(p).file_name())
        .and_then(|name| std::fs::metadata(out.join(name)).ok())
        .map_or(0, |m| m.len());

    println!();
    println!("| driver build benchmark ({RELEASE}, bookworm root, x86_64) | time |");
    println!("|---|---|");
    println!("| base image (mmdebstrap) | {base_image} |");
    println!(
        "| root unpack (fresh root from the base image) | {:.2} s |",
        report.unpack.as_secs_f64()
    );
    println!(
        "| headers ({}) | {} |",
        summary["headers_source"].as_str().unwrap_or("?"),
        phase("headers")
    );
    println!("| compile (kbuild) | {} |", phase("compile"));
    println!(
        "| package (.deb, {:.1} KiB) | {} |",
        package_size as f64 / 1024.0,
        phase("package")
    );
    println!("| sign (minisign + sha256) | {} |", phase("sign"));
    println!(
        "| builder run in the root (all builder phases + process start) | {:.2} s |",
        report.run.as_secs_f64()
    );
    println!(
        "| copy out + root removal | {:.2} s |",
        (report.collect + report.cleanup).as_secs_f64()
    );
    println!("| total | {:.2} s |", total.as_secs_f64());
    Ok(())
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
