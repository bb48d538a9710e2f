//! `cargo xtask <command>`: project automation that is easier to keep right in Rust than in shell.
//! `ci` is what `.ci/run` calls after installing tools; each step fails the run on its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod bench_build;
mod bench_dkms;
mod bench_first_run;
mod bench_loader;
mod bench_matrix;
mod bench_service;
#[path = "fleet.rs"]
mod fleet_command;
mod preflight;
mod retries;
mod serve;

/// Crates that would bring IO into kernel-id. Its dependency tree must never contain them.
const FORBIDDEN_IN_KERNEL_ID: &[&str] = &["tokio", "reqwest", "hyper", "sqlx", "mio", "async-std"];

/// The crates held to no IO: kernel-id, and build-api (the wire contract the static loader uses).
const NO_IO_CRATES: &[&str] = &["kernel-id", "build-api"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("ci") => ci(&root),
        Some("check-kernel-id-deps") => check_kernel_id_deps(&root),
        Some("serve") => serve::run(&root, &args[1..]),
        Some("fleet") => fleet_command::run(&args[1..]),
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("build") => bench_build::run(),
            Some("dkms") => bench_dkms::run(),
            Some("loader") => bench_loader::run(),
            Some("matrix") => bench_matrix::run(),
            Some("first-run") => bench_first_run::run(),
            Some("service") => bench_service::run(),
            _ => bail!("usage: cargo xtask bench <build|dkms|first-run|loader|matrix|service>"),
        },
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 ci                     fmt check, clippy -D warnings, kernel-id dependency check, all tests\n  \
                 serve [ARGS]           build-service on the embedded default (local backend, no GitHub)\n  \
                 fleet [--all|--kernel R..] boot real Debian kernels in qemu against a local build-service\n  \
                 check-kernel-id-deps   fail if kernel-id or build-api depends on an IO crate\n  \
                 bench build            per-phase build times for one real kernel\n  \
                 bench dkms             DKMS install -> module live vs the loader warm and cold, bytes on the node\n  \
                 bench loader           extraction vs dpkg-deb, loader RSS, time to module loaded in a VM\n  \
                 bench matrix           matrix-gen on a generated 100,000-entry crawler feed\n  \
                 bench first-run        fresh clone to the first driver served by `cargo xtask serve`, by part\n  \
                 bench service          hit-path throughput and latency, 10,000 identical misses, GitHub calls per 1,000 hits"
            );
            bail!("unknown or missing command");
        }
    }
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits one level below the workspace root")
        .to_path_buf()
}

fn ci(root: &Path) -> Result<()> {
    run(root, "cargo", &["fmt", "--all", "--", "--check"])?;
    run(
        root,
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    check_kernel_id_deps(root)?;
    // nextest's store is `target/nextest` below the workspace root (its `store.dir` default), even
    // when CARGO_TARGET_DIR puts the build elsewhere.
    let junit = root.join("target/nextest/default/junit.xml");
    // A stale report from an earlier run must not stand in for this one.
    match std::fs::remove_file(&junit) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", junit.display()));
        }
        _ => {}
    }
    let tests = run(
        root,
        "cargo",
        &[
            "nextest",
            "run",
            "--workspace",
            "--locked",
            "--no-fail-fast",
        ],
    );
    // Retries are reported whether or not the run passed: a failing run that also hid a flaky
    // test should say both.
    let retried = retries::report(&junit);
    tests?;
    retried
}

fn check_kernel_id_deps(root: &Path) -> Result<()> {
    NO_IO_CRATES
        .iter()
        .try_for_each(|krate| check_no_io_deps(root, krate))
}

fn check_no_io_deps(root: &Path, krate: &str) -> Result<()> {
    let output = Command::new("cargo")
        .current_dir(root)
        .args([
            "tree", "-p", krate, "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .output()
        .with_context(|| format!("running cargo tree -p {krate}"))?;
    if !output.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let tree = String::from_utf8_lossy(&output.stdout);
    let found: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| FORBIDDEN_IN_KERNEL_ID.contains(name))
        .collect();
    if !found.is_empty() {
        bail!("{krate} must do no IO, but its dependency tree contains {found:?}");
    }
    println!("{krate} dependency tree is free of IO crates ({FORBIDDEN_IN_KERNEL_ID:?})");
    Ok(())
}

fn run(root: &Path, program: &str, args: &[&str]) -> Result<()> {
    eprintln!("+ {program} {}", args.join(" "));
    let status = Command::new(program)
        .current_dir(root)
        .args(args)
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed with {status}", args.join(" "));
    }
    Ok(())
}
