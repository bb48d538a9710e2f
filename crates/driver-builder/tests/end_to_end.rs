//! The issue's "Done when": the sample driver built by the static `driver-builder` inside
//! build-root's mmdebstrap roots of the kernel's own suite (bookworm 6.1.0-47-amd64 and trixie
//! 6.12.107+deb13-amd64), then checked with the real tools — dpkg-deb, lintian, minisign,
//! sha256sum, dpkg -i + modinfo in a fresh root — and loaded into the real kernel booted under
//! qemu. A third test records what a kernel of another ABI does with the 6.1.0-47 module.
//!
//! The build's provenance inputs are checked the same way: the source commit in the package's
//! control file and the module's `scmversion`, `build-facts.json`'s header digests against
//! `sha256sum` of the very .deb files apt installed (the executor's shared apt archive cache,
//! where every downloaded package of the root ends up), its compiler against the root's own
//! `<cc> --version` and the headers' `CONFIG_CC_VERSION_TEXT`, and `root-image.json`.
//!
//! A build is cached under `testkit::cache_dir()/driver-builder/e2e`, keyed by the builder
//! binary's and the driver source's SHA-256, so the tests that need the same package (and a
//! rerun with unchanged code) share one build; parallel test processes wait on a lock.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use build_root::executor::{
    ExecutorConfig, LocalExecutor, ROOT_IMAGE_FILE, SourceRevision, builder_argv,
};
use common::{DRIVER_VERSION, SOURCE_COMMIT, SOURCE_REPOSITORY, identity, sample_driver, tail};
use integrity::{BUILD_FACTS_FILE, BuildFacts};
use kernel_id::SourceCommit;
use kernel_id::{Arch, DriverName, KernelIdentity};
use sha2::{Digest, Sha256};
use testkit::initramfs::{END_MARKER, INIT_MARKER};
use testkit::{Initramfs, KernelImage, QemuConfig, QemuNode, StandardInit};

const BOOKWORM_RELEASE: &str = "6.1.0-47-amd64";
/// In trixie main and trixie-security as of 2026-11-22 (the release build-root's tests use too).
const TRIXIE_RELEASE: &str = "6.12.107+deb13-amd64";
/// A bookworm point-release kernel with another ABI than 6.1.0-47.
const OTHER_ABI_RELEASE: &str = "6.1.0-50-amd64";
const BOOT_TIMEOUT: Duration = Duration::from_secs(150);

fn driver() -> DriverName {
    DriverName::parse("example-driver").expect("driver name")
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("command starts");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

fn sha256_tree(hasher: &mut Sha256, dir: &Path) {
    let mut entries: Vec<_> = walkdir_files(dir);
    entries.sort();
    for path in entries {
        hasher.update(
            path.strip_prefix(dir)
                .expect("under dir")
                .to_string_lossy()
                .as_bytes(),
        );
        hasher.update(std::fs::read(&path).expect("read source"));
    }
}

fn walkdir_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walkdir_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// What one build left behind.
struct Built {
    dir: PathBuf,
    package: PathBuf,
    public_key: PathBuf,
}

/// Builds the sample driver for `identity` with the musl `driver-builder` in a fresh root of its
/// suite through build-root's local executor (or reuses the cached result of the same build).
fn built_package(identity: &KernelIdentity) -> Built {
    let builder = testkit::musl_binary(
        "driver-builder",
        "driver-builder",
        "x86_64-unknown-linux-musl",
    )
    .expect("static driver-builder");
    let mut hasher = Sha256::new();
    hasher.update(std::fs::read(&builder).expect("builder binary"));
    hasher.update(SOURCE_COMMIT.as_bytes());
    sha256_tree(&mut hasher, &sample_driver());
    let key = hex::encode(hasher.finalize());
    let slug = identity.cache_key().replace('/', "_");
    let parent = testkit::cache_dir().join("driver-builder").join("e2e");
    std::fs::create_dir_all(&parent).expect("cache dir");
    let dir = parent.join(format!("{slug}-{}", &key[..16]));
    let lock = File::create(parent.join(format!("{slug}.lock"))).expect("lock file");
    lock.lock().expect("lock");
    let package = dir.join(identity.package_file_name(&driver()));
    let public_key = dir.join("minisign.pub");
    if dir.join("complete").is_file() {
        return Built {
            dir,
            package,
            public_key,
        };
    }
    let scratch = tempfile::tempdir_in(&parent).expect("scratch");
    let source = scratch.path().join("src");
    std::fs::create_dir_all(source.join("keys")).expect("mkdir");
    run(Command::new("cp")
        .arg("-r")
        .arg(sample_driver())
        .arg(source.join("driver")));
    // A real minisign key pair (unencrypted, -W) made by the real CLI.
    run(Command::new("minisign")
        .args(["-G", "-W", "-f"])
        .arg("-p")
        .arg(scratch.path().join("minisign.pub"))
        .arg("-s")
        .arg(source.join("keys/minisign.key")));

    let cache_dir = testkit::cache_dir().join("build-root");
    let mut config = ExecutorConfig::new(cache_dir.clone());
    config.work_dir = cache_dir.join("work-driver-builder");
    config.builder_binaries.insert(Arch::X86_64, builder);
    let executor = LocalExecutor::new(config);
    let source_revision = SourceRevision {
        commit: SourceCommit::parse(SOURCE_COMMIT).expect("commit"),
        repository: SOURCE_REPOSITORY.to_owned(),
    };
    let mut argv = builder_argv(identity, &driver(), &source_revision);
    let source_at = argv.iter().position(|a| a == "--source").expect("--source") + 1;
    argv[source_at] = "/build/src/driver".to_owned();
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
    let report = executor
        .build_with_argv(identity, &source, &out, &log, &argv)
        .unwrap_or_else(|error| panic!("{error}\n{}", tail(&log)));
    eprintln!("executor report for {}: {report:?}", identity.cache_key());
    std::fs::copy(&log, out.join("build.log")).expect("keep the log");
    std::fs::copy(
        scratch.path().join("minisign.pub"),
        out.join("minisign.pub"),
    )
    .expect("pub");
    std::fs::write(out.join("complete"), "").expect("marker");
    std::fs::rename(&out, &dir).expect("publish the build");
    Built {
        dir,
        package,
        public_key,
    }
}

/// dpkg-deb, lintian, minisign, sha256sum and the builder's own summary.
fn check_package(built: &Built, identity: &KernelIdentity) {
    let release = identity.kernel_release().as_str();
    let driver = driver();
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(built.dir.join("summary.json")).expect("summary"),
    )
    .expect("summary json");
    assert_eq!(
        summary["headers_source"],
        format!("apt-get install linux-headers-{release}"),
        "{summary:#}"
    );
    eprintln!("builder phases for {release}: {}", summary["phases"]);

    let info = run(Command::new("dpkg-deb").arg("--info").arg(&built.package));
    assert!(
        info.contains(&format!("Package: {}\n", identity.package_name(&driver))),
        "{info}"
    );
    assert!(info.contains("Version: 0.1.2\n"), "{info}");
    assert!(info.contains("Architecture: amd64\n"), "{info}");
    assert!(
        info.contains(release),
        "the description names the kernel:\n{info}"
    );
    let contents = run(Command::new("dpkg-deb")
        .arg("--contents")
        .arg(&built.package));
    let module_path = format!("./lib/modules/{release}/updates/example-driver/example_driver.ko");
    assert!(contents.contains(&module_path), "{contents}");
    assert_eq!(
        format!("{}/example_driver.ko", identity.module_install_dir(&driver)),
        module_path.trim_start_matches('.')
    );

    let commit_field = run(Command::new("dpkg-deb")
        .arg("-f")
        .arg(&built.package)
        .arg(driver_package::DEB_SOURCE_COMMIT_FIELD));
    assert_eq!(commit_field.trim(), SOURCE_COMMIT);
    assert_eq!(summary["source_commit"], SOURCE_COMMIT, "{summary:#}");
    assert_eq!(
        summary["source_repository"], SOURCE_REPOSITORY,
        "{summary:#}"
    );

    let lintian = Command::new("lintian")
        .args(["--fail-on", "error", "--no-tag-display-limit"])
        .arg(&built.package)
        .output()
        .expect("lintian runs");
    let lintian_text = String::from_utf8_lossy(&lintian.stdout);
    assert!(
        lintian.status.success() && !lintian_text.lines().any(|l| l.starts_with("E:")),
        "lintian errors:\n{lintian_text}{}",
        String::from_utf8_lossy(&lintian.stderr)
    );

    let signature = built.dir.join(identity.signature_file_name(&driver));
    let verified = run(Command::new("minisign")
        .arg("-Vm")
        .arg(&built.package)
        .arg("-x")
        .arg(&signature)
        .arg("-p")
        .arg(&built.public_key));
    assert!(
        verified.contains("Signature and comment signature verified"),
        "{verified}"
    );
    assert!(
        verified.contains(&format!("file:{}", identity.package_file_name(&driver))),
        "{verified}"
    );
    let digest_name = identity.digest_file_name(&driver);
    let checked = run(Command::new("sha256sum")
        .args(["-c", &digest_name])
        .current_dir(&built.dir));
    assert!(checked.contains(": OK"), "{checked}");
}

/// What a fresh root of the suite says about the installed package and its compiler.
struct Installed {
    vermagic: String,
    version: String,
    scmversion: String,
    srcversion: String,
    modules_dep: String,
    /// The first line of `<compiler> --version` in the root.
    compiler_version: String,
}

/// Installs the package with dpkg into a fresh root of its suite and reads the module back with
/// the root's modinfo; also asks the root's `compiler` for its version.
fn dpkg_install_and_modinfo(built: &Built, identity: &KernelIdentity, compiler: &str) -> Installed {
    let release = identity.kernel_release().as_str();
    let work = common::fresh_root(identity);
    work.copy_file_in(&built.package, "/tmp/driver.deb", 0o644)
        .expect("copy the package in");
    let log = work.work_dir().join("install.log");
    let module = format!("/lib/modules/{release}/updates/example-driver/example_driver.ko");
    assert!(
        compiler
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c)),
        "{compiler}"
    );
    let script = format!(
        "set -e; dpkg -i /tmp/driver.deb; \
         modinfo -F vermagic {module} > /build/out/vermagic; \
         modinfo -F version {module} > /build/out/version; \
         modinfo -F scmversion {module} > /build/out/scmversion; \
         modinfo -F srcversion {module} > /build/out/srcversion; \
         cp /lib/modules/{release}/modules.dep /build/out/modules.dep; \
         {compiler} --version | head -n 1 > /build/out/compiler"
    );
    work.run(
        &["/bin/sh".to_owned(), "-c".to_owned(), script],
        &log,
        Duration::from_secs(300),
    )
    .unwrap_or_else(|error| panic!("{error}\n{}", tail(&log)));
    let read = |name: &str| {
        std::fs::read_to_string(work.root_path().join("build/out").join(name))
            .expect("modinfo output")
            .trim()
            .to_owned()
    };
    let result = Installed {
        vermagic: read("vermagic"),
        version: read("version"),
        scmversion: read("scmversion"),
        srcversion: read("srcversion"),
        modules_dep: read("modules.dep"),
        compiler_version: read("compiler"),
    };
    work.remove().expect("remove root");
    result
}

/// `sha256sum <file>`'s digest.
fn sha256sum(file: &Path) -> String {
    run(Command::new("sha256sum").arg(file))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// `build-facts.json` against the real files: every recorded header package is a .deb in the
/// executor's apt archive cache for this root (where each file the root's apt used ends up) whose
/// `sha256sum` is the recorded digest and whose control file names the recorded package and
/// version; the release's header packages are among them; the kernel's compiler text is the
/// headers' own `CONFIG_CC_VERSION_TEXT`. Returns the facts.
fn check_build_facts(built: &Built, identity: &KernelIdentity) -> BuildFacts {
    let release = identity.kernel_release().as_str();
    let facts: BuildFacts = serde_json::from_str(
        &std::fs::read_to_string(built.dir.join(BUILD_FACTS_FILE)).expect("build-facts.json"),
    )
    .expect("build facts parse");
    eprintln!("build facts for {release}: {facts:#?}");
    let archives = testkit::cache_dir()
        .join("build-root/apt-archives")
        .join(build_root::root::RootKey::for_identity(identity).slug());
    let field = |deb: &Path, name: &str| {
        run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))
            .trim()
            .to_owned()
    };
    for package in &facts.headers {
        let file = archives.join(&package.file_name);
        assert_eq!(sha256sum(&file), package.sha256, "{}", file.display());
        assert_eq!(field(&file, "Package"), package.name);
        assert_eq!(field(&file, "Version"), package.version);
        let uri = package.uri.as_deref().expect("apt knows every URI");
        assert!(uri.starts_with("http") && uri.ends_with(".deb"), "{uri}");
    }
    let arch_headers = format!("linux-headers-{release}");
    let headers_deb = facts
        .headers
        .iter()
        .find(|p| p.name == arch_headers)
        .unwrap_or_else(|| panic!("{arch_headers} is recorded: {facts:#?}"));
    assert!(
        facts
            .headers
            .iter()
            .any(|p| p.name.starts_with("linux-headers-") && p.name.ends_with("-common")),
        "{facts:#?}"
    );
    // The headers' CONFIG_CC_VERSION_TEXT, read from the package's own .config.
    let extracted = tempfile::tempdir().expect("tempdir");
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(archives.join(&headers_deb.file_name))
        .arg(extracted.path()));
    let config = std::fs::read_to_string(
        extracted
            .path()
            .join(format!("usr/src/linux-headers-{release}/.config")),
    )
    .expect("the headers' .config");
    let cc_text = config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_CC_VERSION_TEXT="))
        .expect("CONFIG_CC_VERSION_TEXT")
        .trim_matches('"');
    assert_eq!(facts.compiler.kernel_cc_version_text, cc_text);
    assert!(
        cc_text.starts_with(&format!("{} ", facts.compiler.name)),
        "kbuild ran the kernel's own compiler: {:?} vs {cc_text:?}",
        facts.compiler.name
    );
    facts
}

/// Boots `release` under qemu with the packaged module in the initramfs and tries to insmod it.
/// Returns the console text.
fn boot_and_insmod(built: &Built, release: &str, log_name: &str) -> String {
    let extracted = tempfile::tempdir().expect("tempdir");
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&built.package)
        .arg(extracted.path()));
    let ko = walkdir_files(extracted.path())
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "ko"))
        .expect("a .ko in the package");
    let kernel = KernelImage::fetch(release, Arch::X86_64)
        .unwrap_or_else(|error| panic!("kernel {release}: {error:#}"));
    let logs = testkit::test_log_dir(log_name).expect("log dir");
    let mut image = Initramfs::new(Arch::X86_64).expect("initramfs");
    image
        .file_from_host("/example_driver.ko", &ko, 0o644)
        .expect("module into initramfs");
    let init = StandardInit::new()
        .command("insmod /example_driver.ko; echo \"insmod-exit=$?\"")
        .command("dmesg | grep example_driver");
    image.init(&init.render()).expect("init");
    let initrd = logs.join("initrd.gz");
    image.write(&initrd).expect("write initramfs");
    let node = QemuNode::boot(
        QemuConfig::new(Arch::X86_64, kernel.vmlinuz(), &logs.join("console.log"))
            .initrd(&initrd)
            .user_network(false)
            .hard_timeout(BOOT_TIMEOUT + Duration::from_secs(30)),
    )
    .expect("qemu starts");
    let marker = node
        .wait_for_line(INIT_MARKER, BOOT_TIMEOUT)
        .expect("init marker");
    assert!(marker.contains(release), "{marker}");
    node.wait_for_line(END_MARKER, BOOT_TIMEOUT)
        .expect("end marker");
    node.run_to_completion().expect("VM powers off")
}

fn end_to_end(release: &str, distro_version: &str) {
    let identity = identity(release, "x86_64", "debian", distro_version);
    let built = built_package(&identity);
    check_package(&built, &identity);

    let facts = check_build_facts(&built, &identity);
    let root_image: integrity::RootImage = serde_json::from_str(
        &std::fs::read_to_string(built.dir.join(ROOT_IMAGE_FILE)).expect("root-image.json"),
    )
    .expect("root image parses");
    let suite = identity.distro_version().codename().expect("suite");
    assert_eq!(root_image.uri, format!("mmdebstrap:debian/{suite}/amd64"));
    assert_eq!(root_image.sha256.len(), 64);

    let installed = dpkg_install_and_modinfo(&built, &identity, &facts.compiler.name);
    let vermagic = &installed.vermagic;
    assert!(vermagic.starts_with(&format!("{release} ")), "{vermagic}");
    assert!(vermagic.contains("modversions"), "{vermagic}");
    assert_eq!(installed.version, DRIVER_VERSION);
    assert_eq!(installed.scmversion, SOURCE_COMMIT);
    assert!(!installed.srcversion.is_empty());
    assert!(
        installed
            .modules_dep
            .contains("updates/example-driver/example_driver.ko:"),
        "the postinst ran depmod: {}",
        installed.modules_dep
    );
    assert_eq!(
        facts.compiler.root_version_report,
        installed.compiler_version
    );

    let console = boot_and_insmod(&built, release, &format!("driver-builder-e2e-{release}"));
    let expected = format!(
        "example_driver: loaded version={DRIVER_VERSION} built_for={release} running={release}"
    );
    assert!(console.contains(&expected), "{console}");
    assert!(console.contains("insmod-exit=0"), "{console}");
}

#[test]
fn bookworm_6_1_0_47_package_is_correct_and_loads_into_its_kernel() {
    end_to_end(BOOKWORM_RELEASE, "12");
}

#[test]
fn trixie_6_12_package_is_correct_and_loads_into_its_kernel() {
    end_to_end(TRIXIE_RELEASE, "13");
}

/// Records what happens when the module built for 6.1.0-47 meets 6.1.0-50: the kernel checks the
/// CRCs of the symbols the module uses (modversions), not the release string, and refuses it.
#[test]
fn a_different_abi_kernel_refuses_the_module_built_for_6_1_0_47() {
    let identity = identity(BOOKWORM_RELEASE, "x86_64", "debian", "12");
    let built = built_package(&identity);
    let console = boot_and_insmod(&built, OTHER_ABI_RELEASE, "driver-builder-e2e-other-abi");
    let refusal: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("example_driver") || l.contains("insmod"))
        .collect();
    eprintln!(
        "6.1.0-50-amd64 with the 6.1.0-47 module:\n{}",
        refusal.join("\n")
    );
    assert!(
        console.contains("example_driver: disagrees about version of symbol module_layout"),
        "{console}"
    );
    assert!(!console.contains("example_driver: loaded"), "{console}");
    assert!(!console.contains("insmod-exit=0"), "{console}");
}
