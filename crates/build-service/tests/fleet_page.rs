//! The `/fleet` page as a person sees it: the real `build-service` binary (anonymous, on
//! loopback), reports from eight nodes over three kernel families and two driver versions, a kernel
//! prebuilt outside the service (published in the local backend's artifact directory) and one
//! whose build failed — then a real headless Chromium (Debian's `chromium`) loads `/fleet` as a
//! browser does (its own `Accept` header picks the page) and the test reads the DOM it rendered:
//! the family headings, each kernel's row with its counts and status words, the upcoming kernels
//! marked built or not.
//!
//! With `KDRIVER_WRITE_FLEET_SCREENSHOT=1` it also writes `docs/fleet-page.png` (1280x900), the
//! picture the README shows.

#![allow(clippy::unwrap_used)]

mod fleet_support;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use build_api::ArtifactOrigin;
use fleet_support::{Service, build_and_wait, client, docs_dir, identity, post_report, report};

/// Chromium's first start (profile, font cache) can take a while on a cold machine.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs headless Chromium with `args` and `url`, in its own process group (killed whole on
/// timeout); its standard output.
fn chromium(args: &[&str], url: &str, profile: &Path) -> String {
    let mut child = Command::new("chromium")
        // As root Chromium needs --no-sandbox; there is no GPU in CI.
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|error| {
            panic!(
                "chromium could not be started ({error}): install Debian's chromium package \
                 (apt-get install -y chromium; .ci/run does)"
            )
        });
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let errors = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stderr.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            // The whole group this test started: Chromium's own helper processes too, nothing else.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within {CHROMIUM_TIMEOUT:?}:\n{}",
                errors.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().unwrap();
    let errors = errors.join().unwrap();
    assert!(status.success(), "chromium failed ({status}):\n{errors}");
    out
}

/// The text of an HTML fragment as shown: tags dropped, entities decoded, whitespace collapsed.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let decoded = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&");
    decoded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The parts of `html` between each `open` and the following `close`.
fn between<'a>(html: &'a str, open: &str, close: &str) -> Vec<&'a str> {
    html.split(open)
        .skip(1)
        .filter_map(|part| part.split(close).next())
        .collect()
}

/// Every table row of the section headed `family`, as the texts of its cells.
fn rows(dom: &str, family: &str) -> Vec<Vec<String>> {
    let section = between(dom, "<section", "</section>")
        .into_iter()
        .find(|section| {
            between(section, "<h2", "</h2>")
                .first()
                .is_some_and(|heading| text(&format!("<h2{heading}")) == family)
        })
        .unwrap_or_else(|| panic!("no section headed {family} in\n{dom}"));
    between(section, "<tr", "</tr>")
        .into_iter()
        .map(|row| {
            let cells: Vec<String> = row
                .split("<t")
                .skip(1)
                .filter(|cell| cell.starts_with('d') || cell.starts_with('h'))
                .map(|cell| text(&format!("<t{cell}")))
                .collect();
            cells
        })
        .collect()
}

fn row<'a>(rows: &'a [Vec<String>], kernel: &str) -> &'a [String] {
    rows.iter()
        .find(|cells| {
            cells
                .first()
                .is_some_and(|first| first.split(' ').next() == Some(kernel))
        })
        .unwrap_or_else(|| panic!("no row for {kernel} in {rows:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_shows_families_kernels_counts_and_what_is_built() {
    let service = Service::start(&[]).await;
    let base = service.base.clone();
    let client = client();

    // Prebuilt ahead of the fleet for both driver versions in use; 6.1.0-49's build fails here.
    for version in ["v0.1.2", "v0.2.0"] {
        service.publish(&identity("6.1.0-48-amd64", "x86_64", version));
    }
    let failed = build_and_wait(
        &client,
        &base,
        None,
        &identity("6.1.0-49-amd64", "x86_64", "v0.1.2"),
    )
    .await;
    assert_eq!(failed["status"], "error", "{failed}");

    let mut reports = Vec::new();
    for node in 1..=3 {
        let origin = if node == 1 {
            ArtifactOrigin::Build
        } else {
            ArtifactOrigin::Store
        };
        reports.push(report(node, "6.1.0-47-amd64", 0, Some(origin)));
    }
    let mut rollout = report(4, "6.1.0-47-amd64", 0, Some(ArtifactOrigin::Store));
    rollout.driver_version = "v0.2.0".to_owned();
    reports.push(rollout);
    reports.push(report(5, "6.1.0-47-amd64", 6, Some(ArtifactOrigin::Store)));
    for report in &mut reports {
        report.pending_kernels = vec!["6.1.0-48-amd64".to_owned()];
    }
    reports.push(report(6, "6.1.0-44-amd64", 3, None));
    let mut cloud = report(7, "6.1.0-47-cloud-amd64", 0, Some(ArtifactOrigin::Build));
    cloud.timings.build_wait_ms = Some(110_000);
    reports.push(cloud);
    let mut arm = report(8, "6.1.0-47-arm64", 0, Some(ArtifactOrigin::Cache));
    arm.pending_kernels = vec!["6.1.0-48-arm64".to_owned()];
    reports.push(arm);
    for body in &reports {
        let (code, answer) =
            post_report(&client, &base, None, &serde_json::to_value(body).unwrap()).await;
        assert_eq!(code, 204, "{answer}");
    }

    let profile = tempfile::tempdir().unwrap();
    let url = format!("{base}/fleet");
    let dom = tokio::task::spawn_blocking({
        let (url, profile) = (url.clone(), profile.path().to_owned());
        move || chromium(&["--dump-dom"], &url, &profile)
    })
    .await
    .unwrap();

    // What a person sees: the title, the totals, one heading per family, a row per kernel.
    let headings: Vec<String> = between(&dom, "<h2", "</h2>")
        .into_iter()
        .map(|heading| text(&format!("<h2{heading}")))
        .collect();
    assert_eq!(
        headings,
        [
            "debian/12/aarch64/6.1/arm64",
            "debian/12/x86_64/6.1/amd64",
            "debian/12/x86_64/6.1/cloud-amd64"
        ],
        "{dom}"
    );
    let page = text(&dom);
    assert!(page.contains("Fleet: example-driver"), "{page}");
    for (label, value) in [
        ("Nodes", 8),
        ("Without a live driver", 2),
        ("First-boot waits", 2),
        ("Kernel families", 3),
    ] {
        // Each total is a <dd> after its <dt>.
        assert!(
            dom.contains(&format!("<dt>{label}</dt><dd>{value}</dd>")),
            "{label} {value}: {dom}"
        );
    }

    let main = rows(&dom, "debian/12/x86_64/6.1/amd64");
    assert_eq!(
        main[0],
        [
            "Kernel",
            "Nodes running",
            "Nodes pending",
            "Driver v0.2.0",
            "Driver v0.1.2"
        ]
    );
    let kernels: Vec<&str> = main[1..]
        .iter()
        .map(|cells| cells[0].split(' ').next().unwrap())
        .collect();
    assert_eq!(
        kernels,
        [
            "6.1.0-49-amd64",
            "6.1.0-48-amd64",
            "6.1.0-47-amd64",
            "6.1.0-44-amd64"
        ],
        "newest first"
    );
    assert_eq!(
        row(&main, "6.1.0-49-amd64"),
        [
            "6.1.0-49-amd64 upcoming not built yet",
            "0",
            "0",
            "not used",
            "failed"
        ]
    );
    assert_eq!(
        row(&main, "6.1.0-48-amd64"),
        [
            "6.1.0-48-amd64 upcoming built",
            "0",
            "5",
            "published",
            "published"
        ]
    );
    assert_eq!(
        row(&main, "6.1.0-47-amd64"),
        [
            "6.1.0-47-amd64",
            "5",
            "0",
            "published 1 loaded · 0 refused · 0 failed",
            "published 3 loaded · 1 refused · 0 failed 1 first-boot wait, longest 120.0 s"
        ]
    );
    assert_eq!(
        row(&main, "6.1.0-44-amd64"),
        [
            "6.1.0-44-amd64",
            "1",
            "0",
            "not used",
            "missing 0 loaded · 0 refused · 1 failed"
        ]
    );
    let cloud = rows(&dom, "debian/12/x86_64/6.1/cloud-amd64");
    assert_eq!(
        row(&cloud, "6.1.0-47-cloud-amd64"),
        [
            "6.1.0-47-cloud-amd64",
            "1",
            "0",
            "published 1 loaded · 0 refused · 0 failed 1 first-boot wait, longest 110.0 s"
        ]
    );
    let arm = rows(&dom, "debian/12/aarch64/6.1/arm64");
    assert_eq!(
        row(&arm, "6.1.0-48-arm64"),
        ["6.1.0-48-arm64 upcoming not built yet", "0", "1", "missing"]
    );
    // Nothing ran: the page carries no script, and the browser built no other document.
    assert!(!dom.contains("<script"), "{dom}");

    if std::env::var_os("KDRIVER_WRITE_FLEET_SCREENSHOT").is_some_and(|value| value == "1") {
        let target = docs_dir().join("fleet-page.png");
        let screenshot = format!("--screenshot={}", target.display());
        tokio::task::spawn_blocking({
            let profile = profile.path().to_owned();
            move || {
                chromium(
                    &[&screenshot, "--window-size=1280,900", "--hide-scrollbars"],
                    &url,
                    &profile,
                )
            }
        })
        .await
        .unwrap();
        let written = std::fs::metadata(&target).unwrap();
        assert!(written.len() > 10_000, "{} is too small", target.display());
        eprintln!("wrote {}", target.display());
    }
}
