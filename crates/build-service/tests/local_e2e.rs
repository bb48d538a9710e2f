//! End to end with the production local backend: `POST /build` for a real Debian kernel
//! (6.1.0-47-amd64, bookworm) -> the real clean-root executor (`build_root::LocalExecutor` running
//! the static `driver-builder` in a fresh mmdebstrap root of bookworm) builds the sample driver at
//! the commit its version's tag names in a git repository (the driver in a subdirectory of it,
//! `--driver-subdir`) -> the service signs and publishes it with its build provenance -> the package
//! is downloaded from the releases path and checked with dpkg-deb (the commit in its control file),
//! its digest, its signature (the minisign CLI) and its provenance (securesystemslib and the in-toto
//! attestation framework, `crates/integrity/tests/check_provenance.py`): the header packages it
//! names are, by digest, exactly the real Debian packages the root installed -> a second request is
//! answered `done` from the store without another build.
//!
//! Needs root, mmdebstrap, network access to deb.debian.org and the x86_64 musl target; base images
//! and packages are cached under `testkit::cache_dir()/build-root` (shared with build-root's tests).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use build_service::signing::ServiceSigner;
use build_service::{BackendConfig, LocalConfig, RunningService, ServiceConfig};
use kernel_id::{Arch, DriverName, IdentityInput, KernelIdentity};
use serde_json::{Value, json};
use sha2::Digest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_kernel_is_built_in_a_clean_root_published_and_then_served_from_the_store() {
    let builder = testkit::musl_binary(
        "driver-builder",
        "driver-builder",
        "x86_64-unknown-linux-musl",
    )
    .expect("static driver-builder");
    let cache_dir = testkit::cache_dir().join("build-root");
    let mut executor_config = build_root::executor::ExecutorConfig::new(cache_dir.clone());
    executor_config.work_dir = cache_dir.join("work-build-service");
    executor_config.builder_binaries = BTreeMap::from([(Arch::X86_64, builder)]);
    executor_config.build_timeout = Duration::from_secs(20 * 60);
    let executor = Arc::new(build_root::executor::LocalExecutor::new(executor_config));

    let state = tempfile::tempdir().unwrap();
    let secret_key = state.path().join("signing.key");
    let public_key = state.path().join("signing.pub");
    let key = integrity::SecretKey::generate(&secret_key, &public_key).unwrap();
    let key_id = key.id().to_string();
    let public_hex = hex::encode(key.public().ed25519());
    let repo = testkit::SampleDriverRepo::create_in(
        &state.path().join("driver-repo"),
        "driver/example-driver",
    )
    .unwrap();
    let commit = repo.head().unwrap();
    repo.tag("v0.1.2", &commit).unwrap();
    let driver = DriverName::parse("example-driver").unwrap();
    let mut config = ServiceConfig::new(
        format!(
            "sqlite://{}?mode=rwc",
            state.path().join("builds.db").display()
        ),
        driver.clone(),
        BackendConfig::Local(Box::new(LocalConfig {
            artifact_dir: state.path().join("artifacts"),
            builds_dir: state.path().join("builds"),
            driver_repo: repo.path().to_string_lossy().into_owned(),
            driver_subdir: "driver/example-driver".into(),
            source_mirror: state.path().join("driver-source.git"),
            max_concurrent_builds: 1,
            signer: Some(ServiceSigner::new(key, "urn:kdriver:builder:test")),
            executor,
        })),
    );
    config.build_timeout = Duration::from_secs(30 * 60);
    config.poll_interval = Some(Duration::from_millis(500));
    let service = RunningService::start(config).await.unwrap();
    let base = service.url();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let request = json!({
        "kernel_version": "6.1.0-47-amd64",
        "architecture": "x86_64",
        "distribution": "debian",
        "distro_version": "12",
        "driver_version": "v0.1.2",
    });

    let response = client
        .post(format!("{base}/build"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let answer: Value = response.json().await.unwrap();
    let build_id = answer["build_id"].as_str().unwrap().to_owned();

    let mut status = Value::Null;
    for _ in 0..60 {
        status = client
            .get(format!("{base}/status/{build_id}?wait=30"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if matches!(
            status["status"].as_str(),
            Some("done" | "error" | "timed_out")
        ) {
            break;
        }
    }
    let log = std::fs::read_to_string(
        state
            .path()
            .join("builds")
            .join(&build_id)
            .join("build.log"),
    )
    .unwrap_or_default();
    assert_eq!(
        status["status"], "done",
        "{status}\n--- build log ---\n{log}"
    );
    assert_eq!(status["source_commit"].as_str(), Some(commit.as_str()));
    assert!(
        log.contains(&format!(" at {commit} (driver/example-driver)")),
        "{log}"
    );

    let identity = KernelIdentity::from_input(
        &serde_json::from_value::<IdentityInput>(request.clone()).unwrap(),
    )
    .unwrap();
    let package_name = identity.package_file_name(&driver);
    let download_url = status["download_url"].as_str().unwrap().to_owned();
    assert!(
        download_url.starts_with(&format!("{base}/releases/download/")),
        "{download_url}"
    );
    assert!(download_url.ends_with(&kernel_id::percent_encode_segment(&package_name)));
    let package = client.get(&download_url).send().await.unwrap();
    assert_eq!(package.status().as_u16(), 200);
    let package = package.bytes().await.unwrap();
    let downloaded = state.path().join(&package_name);
    std::fs::write(&downloaded, &package).unwrap();

    // A real Debian package with the module for this kernel.
    let info = Command::new("dpkg-deb")
        .arg("--field")
        .arg(&downloaded)
        .arg("Package")
        .arg("Architecture")
        .output()
        .unwrap();
    assert!(info.status.success());
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains(&identity.package_name(&driver)), "{info}");
    assert!(info.contains("amd64"), "{info}");
    let contents = Command::new("dpkg-deb")
        .arg("--contents")
        .arg(&downloaded)
        .output()
        .unwrap();
    let contents = String::from_utf8_lossy(&contents.stdout);
    assert!(
        contents.contains(&format!(".{}/", identity.module_install_dir(&driver)))
            && contents.contains(".ko"),
        "{contents}"
    );

    // Digest and signature published beside it.
    let digest = client
        .get(format!("{download_url}.sha256"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        digest.split_whitespace().next().unwrap(),
        hex::encode(sha2::Sha256::digest(&package))
    );
    let signature = client
        .get(format!("{download_url}.minisig"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let signature_path = state.path().join(format!("{package_name}.minisig"));
    std::fs::write(&signature_path, &signature).unwrap();
    let verified = Command::new("minisign")
        .arg("-V")
        .arg("-p")
        .arg(&public_key)
        .arg("-m")
        .arg(&downloaded)
        .arg("-x")
        .arg(&signature_path)
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "the minisign CLI refuses the service's signature: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains(&format!("file:{package_name}")),
        "the signature names the package"
    );

    // The commit is in the package metadata.
    let field = Command::new("dpkg-deb")
        .arg("--field")
        .arg(&downloaded)
        .arg(driver_package::DEB_SOURCE_COMMIT_FIELD)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&field.stdout).trim(),
        commit.as_str()
    );

    // The provenance, judged by independent implementations.
    let provenance = client
        .get(format!("{download_url}.intoto.jsonl"))
        .send()
        .await
        .unwrap();
    assert_eq!(provenance.status().as_u16(), 200);
    let provenance_path = state.path().join(identity.provenance_file_name(&driver));
    std::fs::write(&provenance_path, provenance.bytes().await.unwrap()).unwrap();
    let judged = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../integrity/tests/check_provenance.py"
        ))
        .arg(&provenance_path)
        .arg(&key_id)
        .arg(&public_hex)
        .output()
        .unwrap();
    assert!(
        judged.status.success(),
        "securesystemslib / in-toto refuse the provenance: {}",
        String::from_utf8_lossy(&judged.stderr)
    );
    let statements: Value = serde_json::from_slice(&judged.stdout).unwrap();
    let statement = &statements[0];
    assert_eq!(statement["subject"][0]["name"], package_name.as_str());
    assert_eq!(
        statement["subject"][0]["digest"]["sha256"],
        hex::encode(sha2::Sha256::digest(&package))
    );
    assert_eq!(statement["invocation_id"], build_id.as_str());
    assert_eq!(statement["builder_id"], "urn:kdriver:builder:test");
    assert_eq!(
        statement["external_parameters"]["kernel_version"],
        "6.1.0-47-amd64"
    );
    let dependencies = statement["resolved_dependencies"].as_array().unwrap();
    let source = &dependencies[0];
    assert_eq!(source["name"], "source");
    assert_eq!(source["digest"]["gitCommit"], commit.as_str());
    assert_eq!(
        source["uri"],
        format!("git+file://{}@refs/tags/v0.1.2", repo.path().display())
    );
    // Every header package named, by digest, is a real .deb the root installed: its sha256sum
    // (computed here by coreutils) over the executor's apt archive for this root.
    let archives = cache_dir
        .join("apt-archives")
        .join(build_root::root::RootKey::for_identity(&identity).slug());
    let mut on_disk = BTreeMap::new();
    for entry in std::fs::read_dir(&archives).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "deb") {
            let sum = Command::new("sha256sum").arg(&path).output().unwrap();
            let sum = String::from_utf8_lossy(&sum.stdout);
            on_disk.insert(
                path.file_name().unwrap().to_string_lossy().into_owned(),
                sum.split_whitespace().next().unwrap().to_owned(),
            );
        }
    }
    let headers: Vec<&Value> = dependencies
        .iter()
        .filter(|d| d["annotations"]["kind"] == "kernel-headers")
        .collect();
    assert!(
        headers
            .iter()
            .any(|d| d["annotations"]["package"] == "linux-headers-6.1.0-47-amd64"),
        "{headers:?}"
    );
    for header in &headers {
        let name = header["name"].as_str().unwrap();
        assert_eq!(
            on_disk.get(name).map(String::as_str),
            header["digest"]["sha256"].as_str(),
            "{name}: the provenance's digest is not sha256sum of the installed package"
        );
    }
    let root = dependencies
        .iter()
        .find(|d| d["name"] == "build-root")
        .unwrap();
    assert_eq!(root["uri"], "mmdebstrap:debian/bookworm/amd64");
    let compiler = dependencies
        .iter()
        .find(|d| d["name"] == "compiler")
        .unwrap();
    assert!(
        compiler["annotations"]["kernel_cc_version_text"]
            .as_str()
            .unwrap()
            .contains("gcc"),
        "{compiler}"
    );

    // The second request is answered from the store.
    let again = client
        .post(format!("{base}/build"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["status"], "done");
    assert_eq!(again["download_url"].as_str(), Some(download_url.as_str()));
    assert_eq!(
        std::fs::read_dir(state.path().join("builds"))
            .unwrap()
            .count(),
        1,
        "exactly one build"
    );
    service.stop().await.unwrap();
}
