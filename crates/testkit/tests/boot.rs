//! Real Debian kernels booted under qemu (TCG) to an initramfs built by testkit: amd64 bookworm
//! 6.1 with virtio networking reaching a loopback HTTP server, a trixie 6.12 kernel whose modules
//! are `.ko.xz`, an arm64 kernel under qemu-system-aarch64 running a musl binary, three VMs at
//! once, and a VM that never reaches its marker being killed at its hard timeout.
//!
//! Console logs stay in `target/test-logs/<test>/`. Boot times are printed, not asserted.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kernel_id::Arch;
use testkit::initramfs::{END_MARKER, INIT_MARKER, INSMOD_FAILED_MARKER};
use testkit::{
    Initramfs, KernelImage, Network, QemuConfig, QemuNode, StandardInit, Suite, VmError,
    list_kernel_images, musl_binary, test_log_dir,
};

const BOOKWORM_AMD64: &str = "6.1.0-47-amd64";
const BOOKWORM_ARM64: &str = "6.1.0-47-arm64";
/// The virtio network stack; on kernels where parts are built in they are skipped.
const NET_MODULES: [&str; 3] = ["virtio_pci", "virtio_net", "virtio_ring"];
/// Generous: TCG on a shared 2-core machine. The hard timeout bounds every VM anyway.
const BOOT_TIMEOUT: Duration = Duration::from_secs(150);

fn x86_64() -> Arch {
    Arch::parse("x86_64").expect("x86_64 is an arch")
}

fn aarch64() -> Arch {
    Arch::parse("aarch64").expect("aarch64 is an arch")
}

/// A guest command that ends the init's command subshell with its own exit status when it fails.
/// StandardInit closes that subshell with `:`, so without this `END_MARKER rc=` is 0 whatever the
/// commands did, and asserting `rc=0` would prove nothing.
fn must(command: impl AsRef<str>) -> String {
    format!("{} || exit $?", command.as_ref())
}

/// Serves `body` to every GET on 127.0.0.1 until dropped (or for at most ten minutes).
struct LoopbackServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LoopbackServer {
    fn start(body: &'static str) -> LoopbackServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let give_up = Instant::now() + Duration::from_secs(600);
            while !stop_flag.load(Ordering::Relaxed) && Instant::now() < give_up {
                match listener.accept() {
                    Ok((stream, _)) => answer(stream, body),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        LoopbackServer {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

fn answer(stream: TcpStream, body: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    // Read the request head; the content does not matter.
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
        line.clear();
    }
    let mut stream = &stream;
    let _ = write!(
        stream,
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Builds `<dir>/initrd.gz` for `kernel` with the network modules and `init`.
fn initramfs_with_network(
    kernel: &KernelImage,
    dir: &Path,
    init: StandardInit,
    extra: impl FnOnce(&mut Initramfs),
) -> std::path::PathBuf {
    let mut image = Initramfs::new(kernel.arch()).expect("initramfs skeleton");
    let modules = image
        .kernel_modules(kernel, &NET_MODULES)
        .expect("network modules from the image");
    assert!(
        modules.iter().any(|m| m.ends_with("/virtio_net.ko")),
        "virtio_net must be among {modules:?}"
    );
    extra(&mut image);
    image
        .init(&init.modules(modules).render())
        .expect("init script");
    let path = dir.join("initrd.gz");
    image.write(&path).expect("write initramfs");
    path
}

fn boot(kernel: &KernelImage, initrd: &Path, console: &Path) -> QemuNode {
    QemuNode::boot(
        QemuConfig::new(kernel.arch(), kernel.qemu_kernel(), console)
            .initrd(initrd)
            .hard_timeout(BOOT_TIMEOUT + Duration::from_secs(30)),
    )
    .expect("qemu starts")
}

#[test]
fn bookworm_amd64_boots_loads_virtio_net_and_fetches_over_http() {
    let dir = test_log_dir("testkit-bookworm-amd64").expect("log dir");
    let kernel = KernelImage::fetch(BOOKWORM_AMD64, x86_64()).expect("kernel 6.1.0-47-amd64");
    assert!(kernel.modules_dir().join("modules.dep").is_file());
    let probe = musl_binary(
        "testkit",
        "testkit-guest-probe",
        "x86_64-unknown-linux-musl",
    )
    .expect("static probe for x86_64");
    // Started after the cargo build (which may wait on the shared build lock) so the
    // server's lifetime bound is spent on the VM.
    let server = LoopbackServer::start("payload-7f3e9c from the host loopback\n");
    let init = StandardInit::new()
        .network(Network::Static)
        .command(must(format!(
            "wget -q -O - http://10.0.2.2:{}/payload",
            server.port
        )))
        .command(must(
            "grep -E '^(virtio_net|net_failover|failover) ' /proc/modules",
        ))
        .command(must("/bin/probe /etc/probe.conf"));
    let initrd = initramfs_with_network(&kernel, &dir, init, |image| {
        image
            .file_from_host("/bin/probe", &probe, 0o755)
            .expect("probe");
        image
            .file("/etc/probe.conf", b"probe-config-line\n", 0o644)
            .expect("config");
    });

    let started = Instant::now();
    let node = boot(&kernel, &initrd, &dir.join("console.log"));
    let marker = node
        .wait_for_line(INIT_MARKER, BOOT_TIMEOUT)
        .expect("init marker");
    eprintln!(
        "boot-to-marker {BOOKWORM_AMD64}: {:.2}s",
        started.elapsed().as_secs_f64()
    );
    assert!(marker.contains(BOOKWORM_AMD64), "{marker}");
    node.wait_for_line(END_MARKER, BOOT_TIMEOUT)
        .expect("end marker");
    let console = node.run_to_completion().expect("VM powers off");
    assert!(
        !console.contains(INSMOD_FAILED_MARKER),
        "a module failed to load:\n{console}"
    );
    assert!(
        console.contains("payload-7f3e9c from the host loopback"),
        "guest did not fetch from 10.0.2.2:\n{console}"
    );
    for module in ["virtio_net ", "net_failover ", "failover "] {
        assert!(
            console.lines().any(|line| line.starts_with(module)),
            "/proc/modules lacks {module}:\n{console}"
        );
    }
    assert!(console.contains("TESTKIT-PROBE arch=x86_64"), "{console}");
    assert!(
        console.contains("first-line=probe-config-line"),
        "{console}"
    );
    assert!(console.contains(&format!("{END_MARKER} rc=0")), "{console}");
}

#[test]
fn trixie_kernel_with_xz_modules_boots_and_loads_them() {
    let dir = test_log_dir("testkit-trixie-amd64").expect("log dir");
    let trixie = Suite::family("trixie").expect("trixie suites");
    let images = list_kernel_images(x86_64(), &trixie).expect("trixie kernel list");
    // The oldest 6.12 generic image of trixie proper (stable across runs until the next point
    // release), else of any trixie pocket.
    let pick = images
        .iter()
        .filter(|image| image.flavor == "amd64")
        .filter(|image| {
            let release = image.release.as_str();
            release.starts_with("6.12.") && release.ends_with("+deb13-amd64")
        })
        .min_by_key(|image| image.suite.name() != "trixie")
        .expect("a 6.12.*+deb13-amd64 kernel is reachable");
    eprintln!("trixie kernel: {} ({})", pick.package, pick.suite);
    assert_eq!(pick.distro_version.as_str(), "13");
    let kernel = KernelImage::fetch(pick.release.as_str(), x86_64()).expect("trixie kernel");
    let virtio_net = kernel
        .module("virtio_net")
        .expect("virtio_net in the image");
    assert!(
        virtio_net.relative_path.ends_with(".ko.xz"),
        "trixie ships xz modules: {}",
        virtio_net.relative_path
    );
    let init = StandardInit::new()
        .network(Network::Static)
        .command(must("grep -E '^(virtio_net|failover) ' /proc/modules"))
        .command(must("ip -o link show eth0"));
    let initrd = initramfs_with_network(&kernel, &dir, init, |_| {});

    let started = Instant::now();
    let node = boot(&kernel, &initrd, &dir.join("console.log"));
    node.wait_for_line(INIT_MARKER, BOOT_TIMEOUT)
        .expect("init marker");
    eprintln!(
        "boot-to-marker {}: {:.2}s",
        pick.release,
        started.elapsed().as_secs_f64()
    );
    let console = node.run_to_completion().expect("VM powers off");
    assert!(!console.contains(INSMOD_FAILED_MARKER), "{console}");
    assert!(
        console.lines().any(|line| line.starts_with("virtio_net ")),
        "{console}"
    );
    assert!(console.contains("eth0"), "{console}");
    assert!(console.contains(&format!("{END_MARKER} rc=0")), "{console}");
}

#[test]
fn arm64_kernel_boots_under_qemu_system_aarch64_with_network() {
    let dir = test_log_dir("testkit-bookworm-arm64").expect("log dir");
    let kernel = KernelImage::fetch(BOOKWORM_ARM64, aarch64()).expect("kernel 6.1.0-47-arm64");
    let probe = musl_binary(
        "testkit",
        "testkit-guest-probe",
        "aarch64-unknown-linux-musl",
    )
    .expect("static probe for aarch64");
    // Started after the cargo build (which may wait on the shared build lock) so the
    // server's lifetime bound is spent on the VM.
    let server = LoopbackServer::start("arm64-payload-51d2\n");
    let init = StandardInit::new()
        .network(Network::Static)
        .command(must("/bin/probe"))
        .command(must(format!(
            "wget -q -O - http://10.0.2.2:{}/payload",
            server.port
        )));
    let initrd = initramfs_with_network(&kernel, &dir, init, |image| {
        image
            .file_from_host("/bin/probe", &probe, 0o755)
            .expect("probe");
    });

    let started = Instant::now();
    let node = boot(&kernel, &initrd, &dir.join("console.log"));
    let marker = node
        .wait_for_line(INIT_MARKER, BOOT_TIMEOUT)
        .expect("init marker");
    eprintln!(
        "boot-to-marker {BOOKWORM_ARM64}: {:.2}s",
        started.elapsed().as_secs_f64()
    );
    assert!(marker.contains("aarch64"), "{marker}");
    let console = node.run_to_completion().expect("VM powers off");
    assert!(!console.contains(INSMOD_FAILED_MARKER), "{console}");
    assert!(console.contains("TESTKIT-PROBE arch=aarch64"), "{console}");
    assert!(console.contains("arm64-payload-51d2"), "{console}");
    assert!(console.contains(&format!("{END_MARKER} rc=0")), "{console}");
}

#[test]
fn three_vms_boot_concurrently() {
    let dir = test_log_dir("testkit-three-vms").expect("log dir");
    let kernel = KernelImage::fetch(BOOKWORM_AMD64, x86_64()).expect("kernel");
    let mut image = Initramfs::new(x86_64()).expect("skeleton");
    image
        .init(&StandardInit::new().network(Network::None).render())
        .expect("init");
    let initrd = dir.join("initrd.gz");
    image.write(&initrd).expect("initramfs");

    let started = Instant::now();
    let nodes: Vec<QemuNode> = (0..3)
        .map(|index| {
            QemuNode::boot(
                QemuConfig::new(
                    x86_64(),
                    kernel.qemu_kernel(),
                    &dir.join(format!("node{index}.log")),
                )
                .initrd(&initrd)
                .hard_timeout(BOOT_TIMEOUT + Duration::from_secs(30)),
            )
            .expect("qemu starts")
        })
        .collect();
    for (index, node) in nodes.iter().enumerate() {
        node.wait_for_line(INIT_MARKER, BOOT_TIMEOUT)
            .unwrap_or_else(|error| panic!("node {index}: {error}"));
        eprintln!(
            "node {index} at marker after {:.2}s",
            started.elapsed().as_secs_f64()
        );
    }
    for node in nodes {
        node.run_to_completion().expect("powers off");
    }
}

#[test]
fn vm_without_marker_is_killed_at_its_hard_timeout() {
    let dir = test_log_dir("testkit-hard-timeout").expect("log dir");
    let kernel = KernelImage::fetch(BOOKWORM_AMD64, x86_64()).expect("kernel");
    let mut image = Initramfs::new(x86_64()).expect("skeleton");
    image
        .init("#!/bin/sh\nwhile :; do sleep 60; done\n")
        .expect("init");
    let initrd = dir.join("initrd.gz");
    image.write(&initrd).expect("initramfs");

    let hard_timeout = Duration::from_secs(4);
    let node = QemuNode::boot(
        QemuConfig::new(x86_64(), kernel.qemu_kernel(), &dir.join("console.log"))
            .initrd(&initrd)
            .hard_timeout(hard_timeout),
    )
    .expect("qemu starts");
    let started = Instant::now();
    let error = node
        .wait_for_line(INIT_MARKER, Duration::from_secs(120))
        .expect_err("the marker never comes");
    let waited = started.elapsed();
    assert!(
        matches!(error, VmError::HardTimeout { .. }),
        "expected a hard timeout, got {error}"
    );
    assert!(
        waited < hard_timeout + Duration::from_secs(3),
        "killed after {waited:?}"
    );
    assert!(!node.is_running());
    assert!(matches!(
        node.run_to_completion(),
        Err(VmError::HardTimeout { .. })
    ));
}

#[test]
fn qemu_that_cannot_start_reports_its_stderr() {
    let dir = test_log_dir("testkit-bad-kernel").expect("log dir");
    let not_a_kernel = dir.join("vmlinuz");
    std::fs::write(&not_a_kernel, b"not a kernel").expect("write");
    let node = QemuNode::boot(
        QemuConfig::new(x86_64(), &not_a_kernel, &dir.join("console.log"))
            .hard_timeout(Duration::from_secs(20)),
    )
    .expect("qemu process starts");
    match node.wait_for_line(INIT_MARKER, Duration::from_secs(20)) {
        Err(VmError::Exited { stderr, .. }) => assert!(!stderr.is_empty()),
        other => panic!("expected qemu to exit with an error, got {other:?}"),
    }
}
