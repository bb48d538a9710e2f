//! The executor's own contract in a real bookworm root: the configured builder runs with the
//! identity's and the source revision's arguments, outputs come back with the base image's
//! `root-image.json`, and the root is removed after success, failure and timeout alike; at the
//! timeout every process of the command is gone, detached ones included.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use build_root::BuildRootError;
use build_root::executor::{BuildJob, LocalExecutor, ROOT_IMAGE_FILE, SourceRevision};
use build_root::root::RootKey;
use kernel_id::{Arch, DriverName, SourceCommit};

use crate::helpers;

fn leftover_work_dirs(work_dir: &Path) -> Vec<String> {
    std::fs::read_dir(work_dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_configured_builder_runs_with_the_identity_and_its_outputs_come_back() {
    let scratch = tempfile::tempdir().expect("tempdir");
    // A stand-in builder that records its argv and checks it really runs inside the bookworm root.
    let builder = scratch.path().join("driver-builder");
    std::fs::write(
        &builder,
        "#!/bin/sh\nset -eu\ngrep -q '^VERSION_CODENAME=bookworm$' /etc/os-release\n\
         test -f /build/src/example_driver.c\nmkdir -p /build/out/nested\necho \"$@\" > /build/out/nested/argv.txt\n",
    )
    .expect("write builder");
    let mut config = helpers::config("work-contract");
    config.builder_binaries.insert(Arch::X86_64, builder);
    let executor = LocalExecutor::new(config);
    let identity = helpers::identity("6.1.0-47-amd64", "amd64", "12");
    let driver = DriverName::parse("example-driver").expect("driver name");
    let out = scratch.path().join("out");
    let log = scratch.path().join("build.log");

    let source = SourceRevision {
        commit: SourceCommit::parse("0123456789abcdef0123456789abcdef01234567").expect("commit"),
        repository: "https://example.com/driver.git".to_owned(),
    };

    let report = executor
        .build(&BuildJob {
            identity: &identity,
            driver: &driver,
            source: &source,
            driver_src: &helpers::sample_driver(),
            out_dir: &out,
            log: &log,
        })
        .unwrap_or_else(|error| panic!("{error}\n{}", helpers::tail(&log)));

    assert_eq!(
        report.outputs,
        [out.join("nested/argv.txt"), out.join(ROOT_IMAGE_FILE)]
    );
    let argv = std::fs::read_to_string(out.join("nested/argv.txt")).expect("argv recorded");
    assert_eq!(
        argv.trim(),
        "build --kernel-release 6.1.0-47-amd64 --arch x86_64 --distribution debian --distro-version 12 \
         --driver-name example-driver --driver-version v0.1.2 --source /build/src --out /build/out \
         --source-commit 0123456789abcdef0123456789abcdef01234567 \
         --source-repository https://example.com/driver.git --header-cache /build/header-cache"
    );
    // The base image the build ran in: its URI, and the SHA-256 of the cached tarball.
    assert_eq!(report.root_image.uri, "mmdebstrap:debian/bookworm/amd64");
    let base = executor
        .roots()
        .ensure(&RootKey::for_identity(&identity))
        .expect("cached image");
    let sha256sum = std::process::Command::new("sha256sum")
        .arg(&base.tarball)
        .output()
        .expect("sha256sum runs");
    let sha256sum = String::from_utf8_lossy(&sha256sum.stdout);
    assert_eq!(
        Some(report.root_image.sha256.as_str()),
        sha256sum.split_whitespace().next()
    );
    let written: integrity::RootImage =
        serde_json::from_slice(&std::fs::read(out.join(ROOT_IMAGE_FILE)).expect("root-image.json"))
            .expect("json");
    assert_eq!(written, report.root_image);
    assert!(leftover_work_dirs(&executor.config().work_dir).is_empty());
    eprintln!("executor phases: {report:?}");
}

#[test]
fn a_failing_command_still_removes_the_root() {
    let config = helpers::config("work-failing");
    let work_dir = config.work_dir.clone();
    let executor = LocalExecutor::new(config);
    let identity = helpers::identity("6.1.0-47-amd64", "x86_64", "12");
    let scratch = tempfile::tempdir().expect("tempdir");
    let log = scratch.path().join("build.log");

    let error = executor
        .build_with_argv(
            &identity,
            &helpers::sample_driver(),
            &scratch.path().join("out"),
            &log,
            &helpers::shell("echo compiling; test -d /proc/self && test -c /dev/null; exit 7"),
        )
        .expect_err("the command fails");

    assert!(
        matches!(&error, BuildRootError::CommandFailed { status, .. } if status.contains('7')),
        "{error}"
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("compiling"), "{text}");
    assert!(
        leftover_work_dirs(&work_dir).is_empty(),
        "{:?}",
        leftover_work_dirs(&work_dir)
    );
    assert!(!scratch.path().join("out").exists());
}

/// Host pids of live processes whose command line contains `token`, with their argv[0]. The host's
/// /proc shows the processes of the build's pid namespace too; a zombie's cmdline is empty, so only
/// processes that still run are listed.
fn processes_with(token: &str) -> BTreeMap<u32, String> {
    let mut found = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains(token) {
            let argv0 = cmdline.split('\0').next().unwrap_or_default().to_owned();
            found.insert(pid, argv0);
        }
    }
    found
}

#[test]
fn a_command_past_its_limit_is_killed_and_the_root_removed() {
    let limit = Duration::from_secs(3);
    let mut config = helpers::config("work-timeout");
    config.build_timeout = limit;
    let work_dir = config.work_dir.clone();
    let executor = LocalExecutor::new(config);
    let identity = helpers::identity("6.1.0-47-amd64", "x86_64", "12");
    let scratch = tempfile::tempdir().expect("tempdir");
    // The base image is made (or found) before the clock starts: the bound below is about the
    // command's limit, not about a first mmdebstrap run.
    let (_, warm) = executor
        .fresh_root(&RootKey::for_identity(&identity))
        .expect("bookworm root");
    warm.remove().expect("remove the warm-up root");

    // A sleep length no other process on the host has, so /proc can tell this build's processes
    // apart: the shell, the detached `setsid` sleep (its own session and process group, out of
    // reach of a process-group kill) and the foreground sleep.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    let token = format!("600.{nanos:09}{:07}", std::process::id());
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, token) = (stop.clone(), token.clone());
        std::thread::spawn(move || {
            let mut seen = BTreeMap::new();
            while !stop.load(Ordering::SeqCst) {
                seen.extend(processes_with(&token));
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        })
    };

    let started = Instant::now();
    let error = executor
        .build_with_argv(
            &identity,
            &helpers::sample_driver(),
            &scratch.path().join("out"),
            &scratch.path().join("build.log"),
            &helpers::shell(&format!("setsid sleep {token} & sleep {token}")),
        )
        .expect_err("the command runs too long");
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let seen = watcher.join().expect("watcher");

    assert!(matches!(error, BuildRootError::TimedOut { .. }), "{error}");
    let sleeps = seen
        .values()
        .filter(|argv0| argv0.ends_with("sleep"))
        .count();
    assert!(
        sleeps >= 2,
        "both sleeps must have run (or /proc cannot show the build's processes): {seen:?}"
    );
    // Unpacking the root and removing it are part of the call; 30 s covers both on a loaded 2-core
    // machine, far below the 600 s the sleeps would run if the limit were not enforced.
    assert!(
        elapsed >= limit && elapsed < limit + Duration::from_secs(30),
        "killed after {elapsed:?} for a {limit:?} limit"
    );
    // The pid namespace's teardown may trail the return by a moment; a survivor would run for 600 s.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut survivors = processes_with(&token);
    while !survivors.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        survivors = processes_with(&token);
    }
    assert!(
        survivors.is_empty(),
        "processes of the timed-out command outlived it: {survivors:?} (seen while running: {seen:?})"
    );
    assert!(
        leftover_work_dirs(&work_dir).is_empty(),
        "{:?}",
        leftover_work_dirs(&work_dir)
    );
}
