//! Container mode for real: a qemu VM (TCG) boots the real Debian kernel 6.1.0-47-amd64 into an
//! initramfs holding the static `driver-loader`, and the loader fetches packages of the sample driver
//! (built by the real driver-builder in a bookworm root) from a loopback artifact server on the host.
//!
//! In one boot the VM sees, in order: a tampered package (refused by the signature), the right package
//! whose provenance names a builder the policy does not allow (refused by the provenance, exit 10), a
//! correctly signed package with valid provenance but built for another kernel release, 6.1.0-50
//! (refused by the vermagic check), and nothing loaded after any of them; then the right package, which
//! is downloaded, verified (digest, signature, provenance), extracted and loaded (the driver's line shows
//! on the console); then the same run again, which finds it loaded and does nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::sample::{SampleBuild, sample_build};
use common::*;
use kernel_id::Arch;
use testkit::initramfs::{END_MARKER, shell_quote};
use testkit::{Initramfs, KernelImage, Network, QemuConfig, QemuNode, StandardInit};

const OTHER_RELEASE: &str = "6.1.0-50-amd64";

/// Serves a sample build's package under this VM's identity, signed by `keys`, with the provenance
/// the service would sign for it (the package's real digest, the commit and facts of its build).
fn artifact_from(keys: &Keys, build: &SampleBuild) -> Artifact {
    let id = identity(RELEASE);
    let bytes = std::fs::read(&build.package).expect("sample package");
    Artifact::from_package(keys, &id, bytes).with_provenance(keys, &id, |p| build.describe(p))
}

fn loader_run(port: u16, prefix: &str, label: &str) -> String {
    format!(
        "/bin/driver-loader --driver-name {DRIVER} --driver-version {VERSION} \
         --artifact-base-url http://10.0.2.2:{port}/{prefix}/releases/download \
         --public-key-file /etc/driver-loader/test.pub \
         --expected-source-repository {SOURCE_REPOSITORY} --allowed-builder {BUILDER_ID} \
         --cache-dir /var/cache/{prefix} \
         --mode container --attempts 3 --backoff-ms 200 --deadline-seconds 60 --ready-file /run/{prefix}.ready run; \
         echo \"LOADER-{label} rc=$?\"; \
         if [ -d /sys/module/example_driver ]; then echo \"MODULE-AFTER-{label} present\"; \
         else echo \"MODULE-AFTER-{label} absent\"; fi"
    )
}

fn line_with<'a>(console: &'a str, prefix: &str) -> &'a str {
    console
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no console line starting with {prefix:?}; console:\n{console}"))
}

#[test]
fn container_mode_loads_the_right_driver_and_refuses_tampered_or_foreign_packages() {
    let keys = Keys::generate();
    let good_build = sample_build(RELEASE);
    let other_build = sample_build(OTHER_RELEASE);

    let good = artifact_from(&keys, &good_build);
    let mut tampered = good.clone();
    // Change one byte in the middle of the package; the attacker also publishes a matching digest.
    let middle = tampered.package.len() / 2;
    tampered.package[middle] ^= 0x01;
    tampered.digest = digest_text(&tampered.package, &tampered.file_name);
    // The right package, but its provenance names a builder nobody allowed.
    let unproven = good
        .clone()
        .with_provenance(&keys, &identity(RELEASE), |p| {
            good_build.describe(p);
            p.builder_id = "https://ci.example.invalid/rogue-builder".to_owned();
        });
    let foreign = artifact_from(&keys, &other_build);

    let server = TestServer::start(move |request| {
        let path = request.path();
        let (artifact, rest) = if let Some(rest) = path.strip_prefix("/good") {
            (&good, rest)
        } else if let Some(rest) = path.strip_prefix("/tampered") {
            (&tampered, rest)
        } else if let Some(rest) = path.strip_prefix("/unproven") {
            (&unproven, rest)
        } else if let Some(rest) = path.strip_prefix("/foreign") {
            (&foreign, rest)
        } else {
            return Response::not_found();
        };
        let mut inner = request.clone();
        inner.target = rest.to_owned();
        artifact.answer(&inner).unwrap_or_else(Response::not_found)
    });
    let port = server.addr.port();

    let kernel = KernelImage::fetch(RELEASE, Arch::X86_64).expect("Debian kernel 6.1.0-47-amd64");
    let loader = testkit::musl_binary(
        "driver-loader",
        "driver-loader",
        "x86_64-unknown-linux-musl",
    )
    .expect("static driver-loader");
    let mut image = Initramfs::new(Arch::X86_64).expect("initramfs");
    let modules = image
        .kernel_modules(&kernel, &["virtio_pci", "virtio_net"])
        .expect("network modules");
    image
        .file_from_host("/bin/driver-loader", &loader, 0o755)
        .expect("loader")
        .file(
            "/etc/os-release",
            b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
            0o644,
        )
        .expect("os-release")
        .file_from_host("/etc/driver-loader/test.pub", &keys.public_key_file, 0o644)
        .expect("public key");
    let init = StandardInit::new()
        .modules(modules)
        .network(Network::Static)
        .command(loader_run(port, "tampered", "TAMPERED"))
        .command(loader_run(port, "unproven", "UNPROVEN"))
        .command(loader_run(port, "foreign", "FOREIGN"))
        .command(loader_run(port, "good", "GOOD"))
        .command("dmesg | grep 'example_driver: loaded' | sed 's/^/DMESG: /'")
        .command(format!(
            "cat {} | sed 's/^/READY: /'",
            shell_quote("/run/good.ready")
        ))
        .command(loader_run(port, "good", "AGAIN"))
        .render();
    image.init(&init).expect("init");
    let work = tempfile::tempdir().expect("tempdir");
    let initrd = work.path().join("initrd.gz");
    image.write(&initrd).expect("write initramfs");
    let console = work.path().join("console.log");
    let node = QemuNode::boot(
        QemuConfig::new(Arch::X86_64, kernel.vmlinuz(), &console)
            .initrd(&initrd)
            .memory_mib(512)
            .hard_timeout(Duration::from_secs(240)),
    )
    .expect("boot qemu");
    let console = node.run_to_completion().unwrap_or_else(|e| {
        panic!(
            "VM did not finish: {e}\n{}",
            std::fs::read_to_string(&console).unwrap_or_default()
        )
    });
    save_console(&console, work.path());
    assert!(console.contains(&format!("{END_MARKER} rc=")), "{console}");

    // Tampered: signature refusal (exit 6), nothing loaded.
    assert_eq!(
        line_with(&console, "LOADER-TAMPERED"),
        "LOADER-TAMPERED rc=6",
        "{console}"
    );
    assert!(
        console.contains(&format!(
            "the signature by key {} does not verify",
            keys.id()
        )),
        "{console}"
    );
    assert_eq!(
        line_with(&console, "MODULE-AFTER-TAMPERED"),
        "MODULE-AFTER-TAMPERED absent"
    );

    // Not built by an allowed builder: provenance refusal (exit 10) naming the field, nothing loaded.
    assert_eq!(
        line_with(&console, "LOADER-UNPROVEN"),
        "LOADER-UNPROVEN rc=10",
        "{console}"
    );
    assert!(
        console.contains(
            "runDetails.builder.id: \"https://ci.example.invalid/rogue-builder\" is not an allowed builder"
        ),
        "{console}"
    );
    assert_eq!(
        line_with(&console, "MODULE-AFTER-UNPROVEN"),
        "MODULE-AFTER-UNPROVEN absent"
    );

    // Built for 6.1.0-50: refused before the kernel sees it (exit 7), nothing loaded.
    assert_eq!(
        line_with(&console, "LOADER-FOREIGN"),
        "LOADER-FOREIGN rc=7",
        "{console}"
    );
    assert!(
        console.contains("built for kernel \"6.1.0-50-amd64\"")
            && console.contains("running kernel is \"6.1.0-47-amd64\""),
        "{console}"
    );
    assert_eq!(
        line_with(&console, "MODULE-AFTER-FOREIGN"),
        "MODULE-AFTER-FOREIGN absent"
    );
    assert!(
        !console.contains("built_for=6.1.0-50-amd64"),
        "the foreign module must never run: {console}"
    );

    // The right package: verified down to its provenance, loaded, and the driver announces itself with
    // the right versions.
    assert!(
        console.contains("package verified: digest, signature and provenance")
            && console.contains(good_build.source_commit.as_str()),
        "{console}"
    );
    assert_eq!(
        line_with(&console, "LOADER-GOOD"),
        "LOADER-GOOD rc=0",
        "{console}"
    );
    assert_eq!(
        line_with(&console, "MODULE-AFTER-GOOD"),
        "MODULE-AFTER-GOOD present"
    );
    let announce =
        format!("example_driver: loaded version={VERSION} built_for={RELEASE} running={RELEASE}");
    assert!(
        console.contains(&announce),
        "the driver's line must be on the console: {console}"
    );
    assert!(
        line_with(&console, "DMESG:").contains(&announce),
        "{console}"
    );
    assert!(
        console.contains("READY: example_driver: loaded"),
        "{console}"
    );

    // Idempotent: the second run finds the same srcversion live and does nothing.
    assert_eq!(
        line_with(&console, "LOADER-AGAIN"),
        "LOADER-AGAIN rc=0",
        "{console}"
    );
    assert!(
        console.contains("example_driver: already loaded (same srcversion)"),
        "{console}"
    );
    assert_eq!(
        console.matches(&announce).count(),
        2,
        "console + dmesg copy, no second load: {console}"
    );
}

/// Keeps the console next to the test cache for inspection after a failure.
fn save_console(console: &str, _work: &Path) {
    let dir = testkit::cache_dir().join("driver-loader");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("vm-container-console.log"), console);
}
