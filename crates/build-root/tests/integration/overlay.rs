//! Overlay roots in real bookworm roots: what a build writes stays in its own upper directory
//! (the next build and a concurrent one never see it, and the shared lower directory is
//! unchanged, down to its inodes' change times), and a root that cannot be an overlay is unpacked
//! instead, with the reason in the build's log.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use build_root::executor::{BuildReport, LocalExecutor, RootMode};
use build_root::root::RootKey;
use build_root::work::RootLayering;

use crate::helpers;

/// Every entry of a tree with what a write to it would change: type, mode, owner, size, inode,
/// modification and change times, link target.
fn tree_state(root: &Path) -> BTreeMap<String, String> {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .map(|entry| {
            let entry = entry.expect("walk the lower directory");
            let meta = entry.metadata().expect("metadata");
            let link = std::fs::read_link(entry.path())
                .map(|target| target.display().to_string())
                .unwrap_or_default();
            let path = entry
                .path()
                .strip_prefix(root)
                .expect("inside")
                .display()
                .to_string();
            let state = format!(
                "{:o} {}:{} {} ino {} m {}.{} c {}.{} {link}",
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.size(),
                meta.ino(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ctime(),
                meta.ctime_nsec(),
            );
            (path, state)
        })
        .collect()
}

fn assert_same_tree(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) {
    let changed: Vec<String> = before
        .iter()
        .filter(|(path, state)| after.get(*path) != Some(state))
        .map(|(path, state)| format!("{path}: {state} -> {:?}", after.get(path)))
        .chain(
            after
                .keys()
                .filter(|path| !before.contains_key(*path))
                .map(|path| format!("{path}: new")),
        )
        .collect();
    assert!(
        changed.is_empty(),
        "the lower directory changed: {changed:#?}"
    );
}

fn sha256(path: &Path) -> String {
    integrity::sha256_file(path)
        .unwrap_or_else(|error| panic!("hashing {}: {error}", path.display()))
        .to_hex()
}

/// Runs `script` as a build in a fresh root and returns its report and log.
fn build(executor: &LocalExecutor, script: &str, out: &Path) -> (BuildReport, String) {
    let identity = helpers::identity("6.1.0-47-amd64", "x86_64", "12");
    let log = out.with_extension("log");
    let report = executor
        .build_with_argv(
            &identity,
            &helpers::sample_driver(),
            out,
            &log,
            &helpers::shell(script),
        )
        .unwrap_or_else(|error| panic!("{error}\n{}", helpers::tail(&log)));
    (report, std::fs::read_to_string(&log).expect("log"))
}

#[test]
fn what_a_build_writes_into_usr_and_etc_never_reaches_the_lower_or_the_next_build() {
    let executor = LocalExecutor::new(helpers::config("work-overlay"));
    let key = RootKey::for_identity(&helpers::identity("6.1.0-47-amd64", "x86_64", "12"));
    let (_, lower) = executor.roots().lease_lower(&key).expect("bookworm lower");
    let before = tree_state(lower.path());
    let os_release = sha256(&lower.path().join("usr/lib/os-release"));
    let make = sha256(&lower.path().join("usr/bin/make"));
    let scratch = tempfile::tempdir().expect("tempdir");

    // Appends to and replaces files of the image, deletes one, adds new ones, changes a mode.
    let (first, _) = build(
        &executor,
        "set -e; echo kdriver-was-here >> /usr/lib/os-release; \
         echo 'exit 1' > /usr/bin/make; rm /usr/bin/xargs; chmod 0700 /etc; \
         echo marker > /usr/local/bin/kdriver-marker; echo marker > /etc/kdriver-marker; \
         echo ok > /build/out/first",
        &scratch.path().join("first"),
    );
    assert_eq!(first.layering, RootLayering::Overlay);
    let (second, _) = build(
        &executor,
        "set -e; if grep -q kdriver-was-here /usr/lib/os-release; then exit 1; fi; \
         make --version >/dev/null; \
         test -x /usr/bin/xargs; test \"$(stat -c %a /etc)\" = 755; \
         test ! -e /usr/local/bin/kdriver-marker; test ! -e /etc/kdriver-marker; \
         echo ok > /build/out/second",
        &scratch.path().join("second"),
    );
    assert_eq!(second.layering, RootLayering::Overlay);
    assert!(scratch.path().join("second/second").is_file());

    assert_same_tree(&before, &tree_state(lower.path()));
    assert_eq!(sha256(&lower.path().join("usr/lib/os-release")), os_release);
    assert_eq!(sha256(&lower.path().join("usr/bin/make")), make);
    // A root is set up in milliseconds, not by unpacking the image; 2 s is a hang guard only.
    assert!(second.unpack < Duration::from_secs(2), "{second:?}");
}

#[test]
fn concurrent_builds_share_the_lower_and_never_see_each_other() {
    let executor = LocalExecutor::new(helpers::config("work-overlay-concurrent"));
    let key = RootKey::for_identity(&helpers::identity("6.1.0-47-amd64", "x86_64", "12"));
    let (_, lower) = executor.roots().lease_lower(&key).expect("bookworm lower");
    let before = tree_state(lower.path());
    let scratch = tempfile::tempdir().expect("tempdir");

    // Each writes its marker, then, while the other runs, checks that it cannot see the other's.
    let script = |me: &str, other: &str| {
        format!(
            "set -e; date +%s%N > /build/out/start; \
             echo {me} > /usr/local/bin/kdriver-{me}; echo {me} > /etc/kdriver-{me}; \
             sleep 4; test ! -e /usr/local/bin/kdriver-{other}; test ! -e /etc/kdriver-{other}; \
             test \"$(cat /etc/kdriver-{me})\" = {me}; date +%s%N > /build/out/end"
        )
    };
    let reports = std::thread::scope(|scope| {
        let builds: Vec<_> = [("a", "b"), ("b", "a")]
            .map(|(me, other)| {
                let (executor, out, script) =
                    (&executor, scratch.path().join(me), script(me, other));
                scope.spawn(move || build(executor, &script, &out))
            })
            .into_iter()
            .collect();
        builds
            .into_iter()
            .map(|build| build.join().expect("build thread"))
            .collect::<Vec<_>>()
    });
    for (report, log) in &reports {
        assert_eq!(report.layering, RootLayering::Overlay, "{log}");
    }
    let interval = |name: &str| {
        let read = |file: &str| -> u128 {
            std::fs::read_to_string(scratch.path().join(name).join(file))
                .expect("timestamp")
                .trim()
                .parse()
                .expect("nanoseconds")
        };
        (read("start"), read("end"))
    };
    let (a, b) = (interval("a"), interval("b"));
    assert!(
        a.0 < b.1 && b.0 < a.1,
        "the two builds did not overlap ({a:?}, {b:?}), so this test showed nothing"
    );
    assert_same_tree(&before, &tree_state(lower.path()));
}

#[test]
fn overlays_switched_off_unpack_the_image_and_say_so() {
    let mut config = helpers::config("work-unpack");
    config.root_mode = RootMode::Unpack;
    let work_dir = config.work_dir.clone();
    let executor = LocalExecutor::new(config);
    let scratch = tempfile::tempdir().expect("tempdir");
    let (report, log) = build(
        &executor,
        "set -e; make --version >/dev/null; echo ok > /build/out/ok",
        &scratch.path().join("out"),
    );
    assert_eq!(report.layering, RootLayering::Unpacked);
    assert!(
        log.contains("root: unpacked the base image instead of an overlay (overlay roots are off"),
        "{log}"
    );
    assert!(scratch.path().join("out/ok").is_file());
    assert_eq!(std::fs::read_dir(&work_dir).expect("work dir").count(), 0);
    assert_eq!(RootMode::parse(Some("unpack")), RootMode::Unpack);
    assert_eq!(RootMode::parse(Some("overlay")), RootMode::Overlay);
    assert_eq!(RootMode::parse(None), RootMode::Overlay);
}

#[test]
fn an_overlay_the_kernel_refuses_falls_back_to_unpacking_with_its_reason() {
    let mut config = helpers::config("work-overlay-refused");
    // A real refusal by the kernel: overlayfs has no such option.
    config.overlay_options = vec!["kdriver_no_such_option".to_owned()];
    let work_dir = config.work_dir.clone();
    let executor = LocalExecutor::new(config);
    let scratch = tempfile::tempdir().expect("tempdir");
    let (report, log) = build(
        &executor,
        "set -e; make --version >/dev/null; echo ok > /build/out/ok",
        &scratch.path().join("out"),
    );
    assert_eq!(report.layering, RootLayering::Unpacked);
    let line = log
        .lines()
        .find(|line| line.contains("instead of an overlay"))
        .unwrap_or_else(|| panic!("no fallback line in:\n{log}"));
    assert!(line.contains("mounting the overlay failed"), "{line}");
    assert_eq!(
        log.matches("instead of an overlay").count(),
        1,
        "one line says why: {log}"
    );
    assert!(scratch.path().join("out/ok").is_file());
    assert_eq!(std::fs::read_dir(&work_dir).expect("work dir").count(), 0);
}
