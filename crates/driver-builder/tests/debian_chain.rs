//! The Debian header chain step by step in fresh bookworm roots from build-root, with REAL Debian
//! header packages (downloaded once through testkit's isolated apt) served from a loopback HTTP
//! server. apt itself is exercised for real by the end-to-end builds (tests/end_to_end.rs); here
//! the root's apt sources are emptied, the way a kernel that rolled off the mirror looks to apt,
//! so the later steps have to deliver.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{LoopbackServer, WorkRootRunner, fresh_root, identity, sample_driver, tail};
use driver_builder::compile;
use driver_builder::headers::{
    HeaderChain, HeaderContext, HeaderOptions, HeadersError, ResolvedHeaders,
};
use driver_builder::http::UreqHttp;
use driver_builder::system::System;
use kernel_id::{DriverName, KernelIdentity, SourceCommit};
use sha2::{Digest, Sha256};

const RELEASE: &str = "6.1.0-47-amd64";
/// The Debian version of linux-headers-6.1.0-47-* in bookworm main.
const HEADERS_VERSION: &str = "6.1.170-3";

/// The real header packages of 6.1.0-47-amd64: (file name, bytes). With `compiler`, also the
/// `linux-compiler-gcc-12-x86` metapackage the arch headers depend on, so a plain `dpkg -i`
/// succeeds; without it the install has to fall back to `--force-depends`.
fn real_header_debs(compiler: bool) -> Vec<(String, Vec<u8>)> {
    let mut packages = vec![
        ("linux-headers-6.1.0-47-amd64", Some(HEADERS_VERSION)),
        ("linux-headers-6.1.0-47-common", Some(HEADERS_VERSION)),
        // The shared host tools; bookworm keeps only newer uploads of it, which the headers
        // accept (`linux-kbuild-6.1 (>= 6.1.170-3)`).
        ("linux-kbuild-6.1", None),
    ];
    if compiler {
        packages.push(("linux-compiler-gcc-12-x86", None));
    }
    packages
        .into_iter()
        .map(|(package, version)| {
            let path = testkit::download_deb(package, version)
                .unwrap_or_else(|error| panic!("downloading {package}: {error:#}"));
            // The cache names files its own way; the archive's pool names them
            // <package>_<version>_<arch>.deb, which is what the listing must show.
            let field = |name: &str| {
                let output = Command::new("dpkg-deb")
                    .args(["-f"])
                    .arg(&path)
                    .arg(name)
                    .output()
                    .expect("dpkg-deb -f");
                String::from_utf8_lossy(&output.stdout).trim().to_owned()
            };
            let name = format!(
                "{}_{}_{}.deb",
                field("Package"),
                field("Version"),
                field("Architecture")
            );
            (name, std::fs::read(&path).expect("read deb"))
        })
        .collect()
}

/// A fresh bookworm root whose apt knows no packages at all.
fn root_without_apt_sources(
    identity: &KernelIdentity,
) -> (Arc<build_root::work::WorkRoot>, System, PathBuf) {
    let work = Arc::new(fresh_root(identity));
    let root = work.root_path().to_path_buf();
    std::fs::write(root.join("etc/apt/sources.list"), "").expect("empty sources.list");
    for dir in ["etc/apt/sources.list.d", "var/lib/apt/lists"] {
        for entry in std::fs::read_dir(root.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                std::fs::remove_file(entry.path()).expect("remove apt source/list");
            }
        }
    }
    let log = work.work_dir().join("runner.log");
    let system = System::new(
        &root,
        Box::new(WorkRootRunner {
            work: Arc::clone(&work),
            log: log.clone(),
        }),
    );
    (work, system, log)
}

fn resolve(
    identity: &KernelIdentity,
    system: &System,
    options: &HeaderOptions,
) -> Result<ResolvedHeaders, HeadersError> {
    let downloads = system.scratch_dir("downloads").expect("scratch");
    let http = UreqHttp::default();
    HeaderChain::for_identity(identity, options).resolve(&HeaderContext {
        identity,
        system,
        http: &http,
        downloads: &downloads,
    })
}

fn outcomes(resolved: &ResolvedHeaders) -> Vec<String> {
    resolved
        .attempts
        .iter()
        .map(|a| {
            format!(
                "{} => {}",
                a.source,
                a.failure.as_ref().map_or("ok".into(), |f| f.to_string())
            )
        })
        .collect()
}

/// (Package, Version) of a .deb, as dpkg-deb reads them.
fn deb_name_version(deb: &Path) -> (String, String) {
    let field = |name: &str| {
        let output = Command::new("dpkg-deb")
            .arg("-f")
            .arg(deb)
            .arg(name)
            .output()
            .expect("dpkg-deb -f");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    (field("Package"), field("Version"))
}

/// `sha256sum <file>`'s digest.
fn sha256sum(file: &Path) -> String {
    let output = Command::new("sha256sum")
        .arg(file)
        .output()
        .expect("sha256sum runs");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A signed module split as the kernel reads it: the trailer `~Module signature appended~\n`,
/// before it the 12-byte `struct module_signature` ending in the signature's big-endian length,
/// before that the PKCS#7 signature (DER) and the module's own bytes.
fn split_module_signature(bytes: &[u8]) -> (&[u8], &[u8]) {
    let rest = bytes
        .strip_suffix(b"~Module signature appended~\n".as_slice())
        .expect("the module is signed");
    let (rest, info) = rest.split_at(rest.len() - 12);
    assert_eq!(info[2], 2, "id_type PKEY_ID_PKCS7");
    let length = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    rest.split_at(rest.len() - length)
}

fn modinfo(module: &Path, field: &str) -> String {
    let output = Command::new("modinfo")
        .args(["-F", field])
        .arg(module)
        .output()
        .expect("modinfo runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn explicit_urls_install_real_header_debs_then_kbuild_and_sign_file_use_them() {
    let identity = identity(RELEASE, "x86_64", "debian", "12");
    let server = LoopbackServer::start();
    let mut urls = Vec::new();
    let served = real_header_debs(true);
    for (name, bytes) in &served {
        let path = format!("/pool/main/l/linux/{name}");
        server.file(&path, bytes.clone());
        urls.push(server.url(&path));
    }
    // The arch package first: the source must install the shared parts before it anyway.
    urls.sort();
    let (work, system, log) = root_without_apt_sources(&identity);
    let options = HeaderOptions {
        header_urls: urls,
        ..HeaderOptions::default()
    };
    let resolved = resolve(&identity, &system, &options)
        .unwrap_or_else(|error| panic!("{error}\n{}", tail(&log)));
    let outcomes = outcomes(&resolved);
    assert_eq!(
        resolved.dir,
        Path::new("/usr/src/linux-headers-6.1.0-47-amd64")
    );
    assert_eq!(outcomes.len(), 3, "{outcomes:#?}");
    assert!(
        outcomes[0].starts_with("apt-get install linux-headers-6.1.0-47-amd64 => failed:")
            && outcomes[0].contains(
                "exit code 100: E: Couldn't find any package by glob 'linux-headers-6.1.0-47-amd64'"
            ),
        "{outcomes:#?}"
    );
    // With no archive in the root's sources there is no backports pocket to add.
    assert_eq!(
        outcomes[1],
        "apt-get install linux-headers-6.1.0-47-amd64 from bookworm-backports => skipped: \
         /etc/apt/sources.list has no `deb <archive> bookworm` line to take the archive from"
    );
    assert_eq!(outcomes[2], "explicit header URLs (4 given) => ok");
    let log_text = std::fs::read_to_string(&log).expect("log");
    assert!(
        !log_text.contains("--force-depends"),
        "with every dependency served, a plain dpkg -i must do:\n{}",
        tail(&log)
    );
    // The build facts name every served file with its URL, its SHA-256 and the name and version
    // dpkg-deb reads from it, shared parts first (the install order).
    let mut expected: Vec<(String, String, String)> = served
        .iter()
        .map(|(name, bytes)| {
            (
                name.clone(),
                server.url(&format!("/pool/main/l/linux/{name}")),
                hex::encode(Sha256::digest(bytes)),
            )
        })
        .collect();
    expected.sort();
    let mut recorded: Vec<(String, String, String)> = resolved
        .packages
        .iter()
        .map(|p| {
            (
                p.file_name.clone(),
                p.uri.clone().expect("a URL"),
                p.sha256.clone(),
            )
        })
        .collect();
    recorded.sort();
    assert_eq!(recorded, expected);
    for package in &resolved.packages {
        let (name, version) = deb_name_version(
            &system
                .host_path(Path::new("/tmp"))
                .read_dir()
                .expect("tmp")
                .flatten()
                .map(|e| e.path().join(&package.file_name))
                .find(|p| p.is_file())
                .expect("the downloaded file is still there"),
        );
        assert_eq!((&package.name, &package.version), (&name, &version));
    }
    assert_eq!(
        resolved.packages.last().map(|p| p.name.as_str()),
        Some("linux-headers-6.1.0-47-amd64"),
        "the arch package is installed last: {:#?}",
        resolved.packages
    );

    // The headers are usable: kbuild builds the sample driver against them, and the kernel's own
    // sign-file signs it with a throwaway key.
    let driver = DriverName::parse("example-driver").expect("driver");
    let scratch = system.scratch_dir("build").expect("scratch");
    let commit = SourceCommit::parse(common::SOURCE_COMMIT).expect("commit");
    let kbuild = compile::Kbuild {
        identity: &identity,
        driver: &driver,
        headers_dir: &resolved.dir,
        source_commit: &commit,
        jobs: 2,
    };
    let compiled = compile::compile(&system, &scratch, &kbuild, &sample_driver())
        .unwrap_or_else(|error| panic!("{error}\n{}", tail(&log)));
    assert_eq!(compiled.modules.len(), 1);
    let module = &compiled.modules[0];
    assert!(modinfo(module, "vermagic").starts_with("6.1.0-47-amd64 "));
    assert_eq!(modinfo(module, "version"), common::DRIVER_VERSION);
    assert_eq!(modinfo(module, "scmversion"), common::SOURCE_COMMIT);
    assert!(!modinfo(module, "srcversion").is_empty());
    // kbuild ran the compiler the kernel was built with (Debian's headers pin gcc-12).
    assert_eq!(compiled.compiler, ["gcc-12"]);

    let keys = tempfile::tempdir().expect("tempdir");
    let (key, cert) = (keys.path().join("key.pem"), keys.path().join("cert.der"));
    let status = Command::new("openssl")
        .args([
            "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=driver-builder test signing key/",
            "-outform",
            "DER",
        ])
        .args(["-addext", "subjectKeyIdentifier=hash"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let refused =
        compile::ModuleSigningKey::load(&key, &cert, compile::ModuleSignHash::Sha256, true)
            .expect_err("a key others can read");
    assert!(refused.to_string().contains("chmod 600"), "{refused}");
    assert!(key.exists(), "a refused key is left alone");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // The executor's per-build copy: read into memory, its file gone before anything else runs.
    let signing =
        compile::ModuleSigningKey::load(&key, &cert, compile::ModuleSignHash::Sha512, true)
            .expect("the module-signing key loads");
    assert!(!key.exists(), "the key file is removed once read");
    let before: Vec<_> = std::fs::read_dir(&scratch.host)
        .expect("scratch")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let signed = compile::sign_modules(&system, &scratch, &resolved.dir, &compiled, &signing)
        .unwrap_or_else(|error| panic!("{error}\n{}", tail(&log)));
    assert!(
        signed.by_subject_key_identifier,
        "bookworm's sign-file takes -k and the certificate has a subjectKeyIdentifier"
    );
    assert_eq!(signed.hash, compile::ModuleSignHash::Sha512);
    let after: Vec<_> = std::fs::read_dir(&scratch.host)
        .expect("scratch")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(before, after, "the key's directory is gone after signing");
    // kmod's modinfo names no signer identified by subject key identifier: openssl checks the
    // PKCS#7 signature against the certificate instead.
    let bytes = std::fs::read(module).expect("module");
    let (content, signature) = split_module_signature(&bytes);
    let dir = keys.path();
    std::fs::write(dir.join("content"), content).expect("write");
    std::fs::write(dir.join("sig.p7"), signature).expect("write");
    let print = Command::new("openssl")
        .args(["cms", "-cmsout", "-print", "-inform", "DER", "-in"])
        .arg(dir.join("sig.p7"))
        .output()
        .expect("openssl cms -print");
    let printed = String::from_utf8_lossy(&print.stdout);
    assert!(printed.contains("d.subjectKeyIdentifier"), "{printed}");
    assert!(printed.contains("sha512"), "{printed}");
    let pem = dir.join("cert.pem");
    assert!(
        Command::new("openssl")
            .args(["x509", "-inform", "DER", "-in"])
            .arg(&cert)
            .arg("-out")
            .arg(&pem)
            .status()
            .expect("openssl x509")
            .success()
    );
    let verify = Command::new("openssl")
        .args(["cms", "-verify", "-binary", "-inform", "DER", "-in"])
        .arg(dir.join("sig.p7"))
        .arg("-content")
        .arg(dir.join("content"))
        .arg("-certfile")
        .arg(&pem)
        .args(["-nointern", "-noverify", "-out", "/dev/null"])
        .output()
        .expect("openssl cms -verify");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    drop(system);
    Arc::try_unwrap(work)
        .expect("only owner")
        .remove()
        .expect("remove root");
}

#[test]
fn a_snapshot_archive_listing_is_used_after_a_dead_explicit_url() {
    let identity = identity(RELEASE, "x86_64", "debian", "12");
    let server = LoopbackServer::start();
    let base = "/archive/debian/20250601T000000Z";
    let mut listing = String::from(
        "<html><head><title>Index</title></head><body><table>\n\
         <tr><td><a href=\"../\">../</a></td></tr>\n\
         <tr><td><a href=\"linux-headers-6.1.0-46-amd64_6.1.168-1_amd64.deb\">x</a></td></tr>\n\
         <tr><td><a href=\"linux-headers-6.1.0-47-cloud-amd64_6.1.170-3_amd64.deb\">x</a></td></tr>\n",
    );
    for (name, bytes) in real_header_debs(false) {
        server.file(&format!("{base}/pool/main/l/linux/{name}"), bytes);
        listing.push_str(&format!(
            "<tr><td><a href=\"{name}\">{name}</a></td></tr>\n"
        ));
    }
    listing.push_str("</table></body></html>\n");
    server.file(&format!("{base}/pool/main/l/linux/"), listing.into_bytes());
    let (work, system, log) = root_without_apt_sources(&identity);
    let options = HeaderOptions {
        header_urls: vec![server.url("/gone/linux-headers-6.1.0-47-amd64_6.1.170-3_amd64.deb")],
        snapshot_bases: vec![server.url(base)],
        ..HeaderOptions::default()
    };
    let resolved = resolve(&identity, &system, &options)
        .unwrap_or_else(|error| panic!("{error}\n{}", tail(&log)));
    let outcomes = outcomes(&resolved);
    assert_eq!(outcomes.len(), 4, "{outcomes:#?}");
    assert!(outcomes[1].contains("skipped"), "{outcomes:#?}");
    assert!(outcomes[2].contains("HTTP status 404"), "{outcomes:#?}");
    assert_eq!(outcomes[3], "snapshot archives (1 configured) => ok");
    // linux-compiler-gcc-12-x86 is not in the listing set: the install had to force it.
    assert!(
        std::fs::read_to_string(&log)
            .expect("log")
            .contains("\"--force-depends\""),
        "{}",
        tail(&log)
    );
    let fetched: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with(&format!("GET {base}")))
        .collect();
    assert_eq!(fetched.len(), 4, "listing + three packages: {fetched:#?}");
    let recorded: Vec<(String, String)> = resolved
        .packages
        .iter()
        .map(|p| (p.name.clone(), p.uri.clone().expect("a URL")))
        .collect();
    assert_eq!(
        recorded,
        [
            (
                "linux-headers-6.1.0-47-common".to_owned(),
                server.url(&format!(
                    "{base}/pool/main/l/linux/linux-headers-6.1.0-47-common_6.1.170-3_all.deb"
                ))
            ),
            (
                "linux-kbuild-6.1".to_owned(),
                server.url(&format!(
                    "{base}/pool/main/l/linux/{}",
                    resolved.packages[1].file_name
                ))
            ),
            (
                "linux-headers-6.1.0-47-amd64".to_owned(),
                server.url(&format!(
                    "{base}/pool/main/l/linux/linux-headers-6.1.0-47-amd64_6.1.170-3_amd64.deb"
                ))
            ),
        ],
        "{:#?}",
        resolved.packages
    );
    assert!(
        system
            .host_path(Path::new(
                "/usr/src/linux-headers-6.1.0-47-common/include/linux/module.h"
            ))
            .is_file()
    );
    drop(system);
    Arc::try_unwrap(work)
        .expect("only owner")
        .remove()
        .expect("remove root");
}

#[test]
fn every_debian_failure_path_ends_in_an_error_listing_every_source() {
    // An empty directory as the root: apt-get cannot even start there.
    let root = tempfile::tempdir().expect("tempdir");
    let system = System::chroot(root.path());
    let identity = identity(RELEASE, "x86_64", "debian", "12");
    let server = LoopbackServer::start();
    server.file(
        "/snap/pool/main/l/linux/",
        b"<a href=\"linux-headers-6.1.0-46-amd64_6.1.168-1_amd64.deb\">only another ABI</a>"
            .to_vec(),
    );
    let options = HeaderOptions {
        header_urls: vec![server.url("/gone/linux-headers-6.1.0-47-amd64_6.1.170-3_amd64.deb")],
        snapshot_bases: vec![server.url("/snap")],
        ..HeaderOptions::default()
    };
    let error = resolve(&identity, &system, &options).expect_err("nothing provides headers");
    let text = error.to_string();
    eprintln!("{text}");
    let lines: Vec<&str> = text.lines().map(str::trim_start).collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(
        lines[0],
        "no kernel headers for 6.1.0-47-amd64: all 4 header sources failed"
    );
    assert!(
        lines[1].starts_with(
            "1. apt-get install linux-headers-6.1.0-47-amd64: failed: `DEBIAN_FRONTEND=noninteractive apt-get update`: exit code 127"
        ),
        "{text}"
    );
    assert!(
        lines[2].starts_with(
            "2. apt-get install linux-headers-6.1.0-47-amd64 from bookworm-backports: skipped: "
        ),
        "{text}"
    );
    assert!(
        lines[3].starts_with("3. explicit header URLs (1 given): failed: download ")
            && lines[3].ends_with("HTTP status 404"),
        "{text}"
    );
    assert!(
        lines[4].starts_with("4. snapshot archives (1 configured): failed: ")
            && lines[4]
                .contains("/snap/pool/main/l/linux/: no linux-headers-6.1.0-47-amd64 for amd64")
            && lines[4].contains("/snap/pool/updates/main/l/linux/: HTTP status 404"),
        "{text}"
    );
}

/// The newest bookworm-backports kernel whose headers the mirror serves (backports keeps one ABI,
/// and which one moves with Debian, so it is looked up rather than pinned).
fn current_backports_kernel() -> String {
    let suite = testkit::Suite::new("bookworm-backports").expect("suite");
    let images = testkit::list_kernel_images(kernel_id::Arch::X86_64, &[suite])
        .expect("bookworm-backports kernel images");
    images
        .iter()
        .rev()
        .filter(|info| info.flavor == "amd64")
        .map(|info| info.release.to_string())
        .find(|release| testkit::download_deb(&format!("linux-headers-{release}"), None).is_ok())
        .unwrap_or_else(|| panic!("no bookworm-backports amd64 kernel with headers: {images:#?}"))
}

#[test]
fn a_backports_kernel_gets_its_headers_from_the_backports_pocket_of_the_roots_archive() {
    let release = current_backports_kernel();
    let identity = identity(&release, "x86_64", "debian", "12");
    let work = Arc::new(fresh_root(&identity));
    let root = work.root_path().to_path_buf();
    let sources_before =
        std::fs::read_to_string(root.join("etc/apt/sources.list")).expect("sources.list");
    assert!(
        !sources_before.contains("backports"),
        "the root itself never takes packages from backports:\n{sources_before}"
    );
    let log = work.work_dir().join("runner.log");
    let system = System::new(
        &root,
        Box::new(WorkRootRunner {
            work: Arc::clone(&work),
            log: log.clone(),
        }),
    );
    let resolved = resolve(&identity, &system, &HeaderOptions::default())
        .unwrap_or_else(|error| panic!("{error}\n{}", tail(&log)));
    let outcomes = outcomes(&resolved);
    assert_eq!(outcomes.len(), 2, "{outcomes:#?}");
    assert!(
        outcomes[0].starts_with(&format!(
            "apt-get install linux-headers-{release} => failed:"
        )),
        "bookworm itself does not carry the backports kernel's headers: {outcomes:#?}"
    );
    assert_eq!(
        outcomes[1],
        format!("apt-get install linux-headers-{release} from bookworm-backports => ok")
    );
    assert_eq!(
        resolved.dir,
        PathBuf::from(format!("/usr/src/linux-headers-{release}"))
    );
    assert!(
        !root
            .join("etc/apt/sources.list.d/kdriver-backports.list")
            .exists(),
        "the backports source is removed again"
    );
    // apt's installs are recorded from its archive cache: every package whose installed version
    // changed, each the very file in the cache (sha256sum), named and versioned as dpkg-deb says.
    let names: Vec<&str> = resolved.packages.iter().map(|p| p.name.as_str()).collect();
    for wanted in [
        format!("linux-headers-{release}"),
        format!(
            "linux-headers-{}-common",
            release.trim_end_matches("-amd64")
        ),
    ] {
        assert!(names.contains(&wanted.as_str()), "{wanted}: {names:?}");
    }
    for package in &resolved.packages {
        let file = root.join("var/cache/apt/archives").join(&package.file_name);
        assert_eq!(package.sha256, sha256sum(&file), "{}", file.display());
        assert_eq!(
            deb_name_version(&file),
            (package.name.clone(), package.version.clone())
        );
    }
    // Resolved again, the headers are already there: apt installs nothing, and the packages owning
    // the kbuild tree (the arch package and the `-common` one its Makefile includes) are recorded
    // from the archive cache with the same digests.
    let again = resolve(&identity, &system, &HeaderOptions::default())
        .unwrap_or_else(|error| panic!("{error}\n{}", tail(&log)));
    assert_eq!(
        again.attempts.len(),
        1,
        "apt needs nothing: {:#?}",
        again.attempts
    );
    assert_eq!(again.attempts[0].failure, None);
    let mut present: Vec<&str> = again.packages.iter().map(|p| p.name.as_str()).collect();
    present.sort_unstable();
    let common = format!(
        "linux-headers-{}-common",
        release.trim_end_matches("-amd64")
    );
    let arch = format!("linux-headers-{release}");
    assert_eq!(present, [arch.as_str(), common.as_str()]);
    for package in &again.packages {
        let first = resolved
            .packages
            .iter()
            .find(|p| p.name == package.name)
            .expect("installed by the first resolution");
        assert_eq!(package, first);
    }
    // The headers are usable with the root's own (bookworm) compiler.
    let driver = DriverName::parse("example-driver").expect("driver");
    let scratch = system.scratch_dir("build").expect("scratch");
    let commit = SourceCommit::parse(common::SOURCE_COMMIT).expect("commit");
    let kbuild = compile::Kbuild {
        identity: &identity,
        driver: &driver,
        headers_dir: &resolved.dir,
        source_commit: &commit,
        jobs: 2,
    };
    let compiled = compile::compile(&system, &scratch, &kbuild, &sample_driver())
        .unwrap_or_else(|error| panic!("{error}\n{}", tail(&log)));
    assert_eq!(compiled.modules.len(), 1);
    let module = &compiled.modules[0];
    assert!(
        modinfo(module, "vermagic").starts_with(&format!("{release} ")),
        "{}",
        module.display()
    );
    drop(system);
    Arc::try_unwrap(work)
        .expect("only owner")
        .remove()
        .expect("remove root");
}
