//! End to end with the production local backend: `POST /build` for a real Debian kernel
//! (6.1.0-47-amd64, bookworm) -> the real clean-root executor (`build_root::LocalExecutor` running
//! the static `driver-builder` in a fresh mmdebstrap root of bookworm) builds the sample driver at
//! the commit its version's tag names in a git repository (the driver in a subdirectory of it,
//! `--driver-subdir`) -> the service signs and publishes it with its build provenance -> the package
//! is downloaded from the releases path and checked with dpkg-deb (the commit in its control file),
//! its digest, its signature (the minisign CLI) and its provenance (securesystemslib and the in-toto
//! attestation framework, `crates/integrity/tests/check_provenance.py`): the header packages it
//! names are, by digest, exactly the real Debian packages the root installed -> the module in it
//! is signed for Secure Boot by the kernel's own sign-file with the service's module-signing key:
//! the key was removed from the root before the build ran and a process the driver's build left
//! running was killed before the key was written for sign-file; the signature, split off the way
//! the kernel reads it, verifies with the certificate the service
//! publishes at `GET /module-signing-cert.der` (openssl cms) and with no other certificate -> a
//! second request is answered `done` from the store without another build.
//!
//! Needs root, mmdebstrap, network access to deb.debian.org and the x86_64 musl target; base images
//! and packages are cached under `testkit::cache_dir()/build-root` (shared with build-root's tests).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
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
    let state = tempfile::tempdir().unwrap();
    // The module-signing key pair, as the kernel's certs/x509.genkey makes one.
    let (module_key, module_cert) = module_key_pair(state.path(), "module", None);
    let module_signing = build_service::module_signing::ModuleSigning::load(
        &module_key,
        &module_cert,
        build_root::executor::ModuleSignHash::Sha256,
    )
    .unwrap();
    executor_config.module_signing = Some(
        module_signing
            .executor_input(&state.path().join(build_service::module_signing::CERT_FILE))
            .unwrap(),
    );
    let executor = Arc::new(build_root::executor::LocalExecutor::new(executor_config));

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
    // A driver build system that leaves a process running (a Kbuild `$(shell)` that backgrounds a
    // sleep), which could watch for the module-signing key: the builder, init of the root's PID
    // namespace, kills it before the key is written for sign-file.
    let kbuild = std::fs::read_to_string(repo.driver_dir().join("Kbuild")).unwrap();
    let commit = repo
        .commit_file(
            "Kbuild",
            format!("{kbuild}\n# Left running on purpose (tests/local_e2e.rs).\n$(shell (sleep 600 >/dev/null 2>&1 &))\n")
                .as_bytes(),
            "leave a process running",
        )
        .unwrap();
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
    config.module_signing_cert = Some(module_signing.certificate_der().to_vec());
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

    // The module is signed with the module-signing key, and the certificate the service publishes
    // is the one that verifies it.
    let published = client
        .get(format!("{base}/module-signing-cert.der"))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status().as_u16(), 200);
    assert_eq!(
        published.headers()["content-type"].to_str().unwrap(),
        "application/pkix-cert"
    );
    let published = published.bytes().await.unwrap();
    let published_der = state.path().join("published-cert.der");
    std::fs::write(&published_der, &published).unwrap();
    let published_pem = state.path().join("published-cert.pem");
    openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        published_der.to_str().unwrap(),
        "-out",
        published_pem.to_str().unwrap(),
    ]);
    let extracted = state.path().join("extracted");
    assert!(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&downloaded)
            .arg(&extracted)
            .status()
            .unwrap()
            .success()
    );
    let module = find_module(&extracted);
    let module_bytes = std::fs::read(&module).unwrap();
    let (content, signature) = split_module_signature(&module_bytes);
    let content_path = state.path().join("module-without-signature");
    let signature_path = state.path().join("signature.p7");
    std::fs::write(&content_path, content).unwrap();
    std::fs::write(&signature_path, signature).unwrap();
    let printed = openssl(&[
        "cms",
        "-cmsout",
        "-print",
        "-inform",
        "DER",
        "-in",
        signature_path.to_str().unwrap(),
    ]);
    assert!(
        printed.contains("d.subjectKeyIdentifier"),
        "sign-file -k names the signer by its subject key identifier:\n{printed}"
    );
    assert!(
        log.contains("sign-file -k"),
        "the build log says how the signer is named:\n{log}"
    );
    assert!(!log.contains("PRIVATE KEY"), "{log}");
    assert!(
        log.contains("read the module-signing key into memory and removed its file")
            && log.contains("the build left processes running; killing them"),
        "the key left the disk before the build, and nothing of the build outlived it:\n{log}"
    );
    let verify = |cert_pem: &Path| {
        Command::new("openssl")
            .args(["cms", "-verify", "-binary", "-inform", "DER", "-in"])
            .arg(&signature_path)
            .arg("-content")
            .arg(&content_path)
            .arg("-certfile")
            .arg(cert_pem)
            .args(["-nointern", "-noverify", "-out", "/dev/null"])
            .output()
            .unwrap()
    };
    let verified = verify(&published_pem);
    assert!(
        verified.status.success(),
        "openssl refuses the module's signature with the published certificate: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    // Another key's certificate, even one claiming the same subject key identifier, does not.
    let skid = openssl(&[
        "x509",
        "-noout",
        "-ext",
        "subjectKeyIdentifier",
        "-in",
        published_pem.to_str().unwrap(),
    ]);
    let skid = skid.lines().nth(1).unwrap().trim().to_owned();
    for (name, claimed) in [("other", None), ("impostor", Some(skid.as_str()))] {
        let (_, other_cert) = module_key_pair(state.path(), name, claimed);
        let refused = verify(&other_cert);
        assert!(
            !refused.status.success(),
            "{name}'s certificate verifies a signature it did not make"
        );
    }

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

/// A module-signing key pair made with openssl the way the kernel's `certs/x509.genkey` asks for
/// one: `<dir>/<name>.key` (PEM, 0600) and `<dir>/<name>.pem`; with `skid`, the certificate claims
/// that subject key identifier instead of its own.
fn module_key_pair(dir: &Path, name: &str, skid: Option<&str>) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    let config = dir.join(format!("{name}.genkey"));
    std::fs::write(
        &config,
        format!(
            "[ req ]\ndefault_bits = 2048\ndistinguished_name = dn\nprompt = no\n\
             x509_extensions = exts\n[ dn ]\nCN = kdriver module signing ({name})\n[ exts ]\n\
             basicConstraints=critical,CA:FALSE\nkeyUsage=digitalSignature\n\
             subjectKeyIdentifier={}\nauthorityKeyIdentifier=keyid\n",
            skid.unwrap_or("hash")
        ),
    )
    .unwrap();
    openssl(&[
        "req",
        "-new",
        "-nodes",
        "-utf8",
        "-sha256",
        "-days",
        "36500",
        "-batch",
        "-x509",
        "-config",
        config.to_str().unwrap(),
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (key, cert)
}

fn openssl(args: &[&str]) -> String {
    let output = Command::new("openssl").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The one `.ko` under `dir`.
fn find_module(dir: &Path) -> PathBuf {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "ko") {
                found.push(path);
            }
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    found.remove(0)
}

/// A signed module split the way the kernel reads it (`mod_verify_sig`): the trailer
/// `~Module signature appended~\n`, before it the 12-byte `struct module_signature` whose last 4
/// bytes are the signature's length (big-endian), before that the PKCS#7 signature (DER), and
/// before that the module as it was signed.
fn split_module_signature(bytes: &[u8]) -> (&[u8], &[u8]) {
    let rest = bytes
        .strip_suffix(b"~Module signature appended~\n".as_slice())
        .expect("the module carries a signature");
    let (rest, info) = rest.split_at(rest.len() - 12);
    assert_eq!(info[2], 2, "id_type: PKEY_ID_PKCS7");
    let length = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    rest.split_at(rest.len() - length)
}
