//! The executor's own contract in a real bookworm root: the configured builder runs with the
//! identity's arguments, outputs come back, and the root is removed after success, failure and
//! timeout alike.

use std::path::Path;
use std::time::{Duration, Instant};

use build_root::BuildRootError;
use build_root::executor::LocalExecutor;
use kernel_id::{Arch, DriverName};

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

    let report = executor
        .build(&identity, &driver, &helpers::sample_driver(), &out, &log)
        .unwrap_or_else(|error| panic!("{error}\n{}", helpers::tail(&log)));

    assert_eq!(report.outputs, [out.join("nested/argv.txt")]);
    let argv = std::fs::read_to_string(out.join("nested/argv.txt")).expect("argv recorded");
    assert_eq!(
        argv.trim(),
        "build --kernel-release 6.1.0-47-amd64 --arch x86_64 --distribution debian --distro-version 12 \
         --driver-name example-driver --driver-version v0.1.2 --source /build/src --out /build/out"
    );
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

#[test]
fn a_command_past_its_limit_is_killed_and_the_root_removed() {
    let mut config = helpers::config("work-timeout");
    config.build_timeout = Duration::from_secs(3);
    let work_dir = config.work_dir.clone();
    let executor = LocalExecutor::new(config);
    let identity = helpers::identity("6.1.0-47-amd64", "x86_64", "12");
    let scratch = tempfile::tempdir().expect("tempdir");

    let started = Instant::now();
    let error = executor
        .build_with_argv(
            &identity,
            &helpers::sample_driver(),
            &scratch.path().join("out"),
            &scratch.path().join("build.log"),
            &helpers::shell("setsid sleep 600 & sleep 600"),
        )
        .expect_err("the command runs too long");

    assert!(matches!(error, BuildRootError::TimedOut { .. }), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(300),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        leftover_work_dirs(&work_dir).is_empty(),
        "{:?}",
        leftover_work_dirs(&work_dir)
    );
}
