//! `cargo xtask bench dkms`: the loader beside what users run instead, DKMS, in one run and one table.
//!
//! One qemu VM (TCG, 2 vCPUs, 2 GiB) boots Debian's real `6.1.0-47-amd64` into a real bookworm root
//! (mmdebstrap; systemd as init; the kernel's modules installed) that also holds what a DKMS node must
//! carry: `dkms` and everything `dkms linux-headers-6.1.0-47-amd64` depend on (gcc, make, binutils,
//! libc6-dev, linux-kbuild, ...; installed when the image is made, since the VM has no apt mirror, and
//! without Recommends, as mmdebstrap installs: a lower bound of what `apt-get install` pulls in). A
//! oneshot unit ordered after `multi-user.target` then runs, each timed with the kernel's own log clock
//! from a marker written to /dev/kmsg to the driver's "loaded" line:
//!
//! 1. loader warm: `driver-loader --mode host run` downloads the sample driver's published package
//!    (digest, signature and provenance by a fresh key; `bench_loader`'s loopback artifact server),
//!    verifies it, installs it with dpkg and modprobes it;
//! 2. loader cold: the same against a real build-service (local backend, `fleet::Fleet`) that has never
//!    built this kernel: the download is a miss, the loader asks for a build, the service builds the
//!    driver in a clean bookworm root, signs and publishes it, and the loader then proceeds as warm (the
//!    build host's caches — root image, apt lists, header packages — are as earlier runs left them);
//! 3. dkms: `dpkg -i` of a Debian DKMS source package of the sample driver made here with dpkg-deb
//!    (`/usr/src/example-driver-0.1.2/` with a `dkms.conf`; a postinst calling dkms's own
//!    `common.postinst` as dh_dkms's does: `dkms add`, build and install for the running kernel), then
//!    `modprobe example_driver`.
//!
//! Before the first marker the script reads dpkg's database and runs depmod once, untimed, so the page
//! cache does not favour whichever contender runs later; the package installed by the loader is
//! purged between runs. Bytes on the node: for DKMS the apparent size (`du -sb`) of the DKMS root
//! minus that of the same root without dkms and the headers, plus the source package; for the loader
//! its static binary plus the package and its sidecars as published. Performance lives in this table,
//! never in timed assertions.
//!
//! The DKMS root is cached by `testkit::debian_root` (keyed by suite, architecture and package set);
//! the console and the service's logs stay in `target/fleet-logs/bench-dkms-<time>/`.
//!
//! Needs: qemu-system-x86_64, mmdebstrap and e2fsprogs (root disk), dpkg-deb and gzip, python3
//! (artifact server), and what `fleet` needs for the build-service (first run: the sample package's
//! and the build roots' mmdebstrap). `KDRIVER_BENCH_LOADER=<path>` measures that loader binary instead.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kernel_id::Arch;
use testkit::{DiskImage, KernelImage, QemuConfig, QemuNode, debian_root};

use crate::bench_loader::{
    self, BENCH_BUILDER, BENCH_REPOSITORY, DRIVER, RELEASE, VERSION, kernel_log_events,
    seconds_to_loaded,
};

const SUITE: &str = "bookworm";
/// What DKMS needs on the node beyond the host-mode root: dkms itself (its dependencies bring the
/// toolchain) and the running kernel's headers.
const DKMS_EXTRA_PACKAGES: [&str; 2] = ["dkms", "linux-headers-6.1.0-47-amd64"];
/// The DKMS module version (Debian versions start with a digit; the driver's tag is `v0.1.2`).
const DKMS_VERSION: &str = "0.1.2";
const SOURCE_PACKAGE: &str = "example-driver-dkms";
/// Boot, an on-demand build and a gcc build under TCG, with room to spare; the VM dies at this limit.
const VM_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// The loader's own deadline for the cold run, below the VM's hard timeout so the loader reports first.
const COLD_DEADLINE_SECONDS: u64 = 30 * 60;

/// After multi-user.target so boot-time activity has settled before anything is timed; the poweroff
/// is in ExecStopPost so a failing script still ends the VM.
const BENCH_UNIT: &str = "[Unit]\n\
     Description=dkms versus driver-loader benchmark\n\
     Wants=network-online.target\n\
     After=network-online.target multi-user.target\n\n\
     [Service]\n\
     Type=oneshot\n\
     StandardOutput=tty\n\
     StandardError=tty\n\
     TTYPath=/dev/ttyS0\n\
     TimeoutStartSec=45min\n\
     ExecStart=/bin/sh /usr/local/bin/bench-dkms\n\
     ExecStopPost=/bin/systemctl --no-block poweroff\n\n\
     [Install]\n\
     WantedBy=multi-user.target\n";

pub fn run() -> Result<()> {
    let work = std::env::temp_dir().join(format!("bench-dkms-{}", std::process::id()));
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = measure(&work);
    let _ = fs::remove_dir_all(&work);
    println!();
    print!("{}", result?);
    Ok(())
}

/// One contender's row.
struct Row {
    name: String,
    seconds: f64,
    bytes: u64,
    carries: String,
}

fn measure(work: &Path) -> Result<String> {
    let kernel = KernelImage::fetch(RELEASE, Arch::X86_64).context("fetching the kernel")?;
    let loader = bench_loader::loader_binary().context("building the static loader")?;
    let base_root = debian_root(SUITE, Arch::X86_64, &fleet::host::ROOT_PACKAGES)
        .context("the host-mode root")?;
    let mut packages: Vec<&str> = fleet::host::ROOT_PACKAGES.to_vec();
    packages.extend(DKMS_EXTRA_PACKAGES);
    let dkms_root =
        debian_root(SUITE, Arch::X86_64, &packages).context("the host-mode root with dkms")?;
    let footprint = Footprint::between(&base_root, &dkms_root)?;
    let source_deb = dkms_source_package(work).context("making the dkms source package")?;

    let served = bench_loader::serve_sample(work).context("serving the sample package")?;
    let fleet = fleet::Fleet::start("bench-dkms").context("starting the build-service")?;
    eprintln!("bench dkms: logs in {}", fleet.dir().display());

    let script = bench_script(&served, &fleet.service, &source_deb)?;
    let disk = work.join("root.img");
    write_disk(&dkms_root, &kernel, &disk, work, |image| {
        Ok(image
            .file("/usr/local/bin/driver-loader", &read(&loader)?, 0o755)
            .file("/etc/bench/warm.pub", &read(&served.public_key)?, 0o644)
            .file(
                "/etc/bench/service.pub",
                &read(&fleet.service.key().public_key)?,
                0o644,
            )
            .file(
                &format!("/root/{}", file_name(&source_deb)?),
                &read(&source_deb)?,
                0o644,
            )
            .file("/usr/local/bin/bench-dkms", script.as_bytes(), 0o755))
    })?;

    let initrd = work.join("initrd.gz");
    testkit::write_root_disk_initrd(Arch::X86_64, &kernel, &initrd)?;
    let console_path = fleet.dir().join("bench-dkms.console.log");
    eprintln!(
        "bench dkms: booting the node (console {}; up to {} min)",
        console_path.display(),
        VM_TIMEOUT.as_secs() / 60
    );
    let node = QemuNode::boot(
        QemuConfig::new(Arch::X86_64, kernel.vmlinuz(), &console_path)
            .initrd(&initrd)
            .drive(&disk, "raw", false)
            .memory_mib(2048)
            // qemu takes the last -smp: two vCPUs (multi-threaded TCG) for gcc's sake.
            .extra_arg("-smp")
            .extra_arg("2")
            .hard_timeout(VM_TIMEOUT),
    )?;
    let console = node
        .run_to_completion()
        .map_err(|e| anyhow::anyhow!("bench VM: {e}"))?;
    let _ = fs::remove_file(&disk);
    if !console.contains("BENCH-END") || console.contains("BENCH-FAILED") {
        bail!(
            "bench VM run failed (console {}):\n{}",
            console_path.display(),
            console_tail(&console, 120)
        );
    }
    for prefix in ["WARMLOG ", "COLDLOG ", "DKMSLOG "] {
        for line in console.lines().filter_map(|l| l.strip_prefix(prefix)) {
            eprintln!("  {prefix}{line}");
        }
    }
    let events = kernel_log_events(&console);
    let warm = seconds_to_loaded(&events, "BENCH loader-warm start")?;
    let cold = seconds_to_loaded(&events, "BENCH loader-cold start")?;
    let dkms = seconds_to_loaded(&events, "BENCH dkms start")?;
    let build = match fleet.service.build_ids().as_slice() {
        [id] => Some(fleet.service.build_duration(id)?),
        _ => None,
    };
    // BENCH-DU <bytes>\t<path>, from du -sb in the VM.
    let node_dkms_tree = console
        .lines()
        .filter_map(|l| l.strip_prefix("BENCH-DU "))
        .filter_map(|l| {
            let (bytes, path) = l.split_once('\t')?;
            Some(format!("{path} {}", mb(bytes.trim().parse().ok()?)))
        })
        .collect::<Vec<_>>()
        .join(", ");
    fleet.tidy();

    let loader_bytes = fs::metadata(&loader)?.len();
    let published: u64 = served
        .files
        .iter()
        .map(|f| fs::metadata(f).map(|m| m.len()))
        .sum::<std::io::Result<u64>>()?;
    let source_bytes = fs::metadata(&source_deb)?.len();
    let loader_carries = format!(
        "static driver-loader ({}) + signed .deb with .sha256/.minisig/.intoto.jsonl ({})",
        mb(loader_bytes),
        mb(published)
    );
    let rows = [
        Row {
            name: "dkms: `dpkg -i` source package -> dkms add/build/install -> modprobe".to_owned(),
            seconds: dkms,
            bytes: footprint.added_bytes + source_bytes,
            carries: format!(
                "dkms + toolchain + headers: {} packages ({}) + source .deb ({})",
                footprint.added.len(),
                mb(footprint.added_bytes),
                mb(source_bytes)
            ),
        },
        Row {
            name: "driver-loader warm: published package -> verify -> dpkg -i -> modprobe"
                .to_owned(),
            seconds: warm,
            bytes: loader_bytes + published,
            carries: loader_carries.clone(),
        },
        Row {
            name:
                "driver-loader cold: unseen kernel, built on demand by build-service, then as warm"
                    .to_owned(),
            seconds: cold,
            bytes: loader_bytes + published,
            carries: loader_carries,
        },
    ];
    let mut out = String::new();
    writeln!(
        out,
        "| {RELEASE}, bookworm root, qemu TCG 2 vCPU | time to module live | bytes on the node | what the node must carry |"
    )?;
    writeln!(out, "|---|---|---|---|")?;
    for row in &rows {
        writeln!(
            out,
            "| {} | {:.2} s | {} | {} |",
            row.name,
            row.seconds,
            mb(row.bytes),
            row.carries
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "dkms / loader warm: {:.1}x the time, {:.1}x the bytes",
        dkms / warm,
        rows[0].bytes as f64 / rows[1].bytes as f64
    )?;
    if let (Some(warm_dpkg), Some(cold_dpkg)) = (
        loader_dpkg_seconds(&console, "WARMLOG "),
        loader_dpkg_seconds(&console, "COLDLOG "),
    ) {
        writeln!(
            out,
            "loader time inside `dpkg -i` of its package (dpkg + the postinst's `depmod -a`; the \
             loader's own log clock): warm {warm_dpkg:.2} s, cold {cold_dpkg:.2} s"
        )?;
    }
    if let Some(build) = build {
        writeln!(
            out,
            "cold: the service's build of the unseen kernel took {:.1} s of it (same run)",
            build.as_secs_f64()
        )?;
    }
    writeln!(
        out,
        "dkms bytes: `du -sb` of the bookworm root with {} minus without ({} -> {}); dpkg Installed-Size \
         of the {} added packages: {}; heaviest: {}",
        DKMS_EXTRA_PACKAGES.join(" + "),
        mb(footprint.base_bytes),
        mb(footprint.base_bytes + footprint.added_bytes),
        footprint.added.len(),
        mb(footprint.added_installed_size),
        footprint.heaviest(6)
    )?;
    if !node_dkms_tree.is_empty() {
        writeln!(
            out,
            "after the dkms install the node also holds (du -sb, not counted above): {node_dkms_tree}"
        )?;
    }
    writeln!(
        out,
        "times: the kernel's log clock, from a /dev/kmsg marker written just before the install \
         command to the driver's \"loaded\" line; all three in the same VM (TCG: slower than \
         hardware for every row), run as loader warm, loader cold, dkms after one untimed pass over dpkg's database and \
         depmod, which all of them run"
    )?;
    Ok(out)
}

/// Seconds from the loader's `dpkg -i` to its `modprobe`, read from its log lines under `prefix`:
/// how much of a row is dpkg and the package's postinst, which DKMS pays as well.
fn loader_dpkg_seconds(console: &str, prefix: &str) -> Option<f64> {
    let lines: Vec<&str> = console
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .collect();
    let stamp = |program: &str| {
        lines
            .iter()
            .find(|l| l.contains("running command=") && l.contains(program))
            .and_then(|l| time_of_day(l.split_whitespace().next()?))
    };
    let (start, end) = (stamp("\"dpkg\"")?, stamp("\"modprobe\"")?);
    // A run across midnight wraps the time of day.
    Some((end - start).rem_euclid(86_400.0))
}

/// Seconds since midnight of an RFC 3339 UTC stamp (`2026-12-03T17:00:49.817647Z`).
fn time_of_day(stamp: &str) -> Option<f64> {
    let clock = stamp.split_once('T')?.1.strip_suffix('Z')?;
    let mut parts = clock.split(':').map(|p| p.parse::<f64>().ok());
    let (hours, minutes, seconds) = (parts.next()??, parts.next()??, parts.next()??);
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

/// What the DKMS root adds to the host-mode root.
struct Footprint {
    base_bytes: u64,
    added_bytes: u64,
    /// Added package -> dpkg Installed-Size in bytes.
    added: BTreeMap<String, u64>,
    added_installed_size: u64,
}

impl Footprint {
    fn between(base: &Path, with_dkms: &Path) -> Result<Footprint> {
        let base_bytes = du_bytes(base)?;
        let dkms_bytes = du_bytes(with_dkms)?;
        let before = installed_packages(base)?;
        let added: BTreeMap<String, u64> = installed_packages(with_dkms)?
            .into_iter()
            .filter(|(name, _)| !before.contains_key(name))
            .collect();
        Ok(Footprint {
            base_bytes,
            added_bytes: dkms_bytes.saturating_sub(base_bytes),
            added_installed_size: added.values().sum(),
            added,
        })
    }

    fn heaviest(&self, count: usize) -> String {
        let mut by_size: Vec<(&String, &u64)> = self.added.iter().collect();
        by_size.sort_by(|a, b| b.1.cmp(a.1));
        by_size
            .iter()
            .take(count)
            .map(|(name, bytes)| format!("{name} {}", mb(**bytes)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `du -sb`: apparent bytes of everything below `path`.
fn du_bytes(path: &Path) -> Result<u64> {
    let output = testkit::command_output(Command::new("du").arg("-sb").arg(path))?;
    output
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("du -sb {}: unexpected output '{output}'", path.display()))
}

/// Package -> Installed-Size in bytes, from the root's own dpkg database.
fn installed_packages(root: &Path) -> Result<BTreeMap<String, u64>> {
    let output = testkit::command_output(
        Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args([
                "-W",
                "-f",
                "${Package}\t${Installed-Size}\t${db:Status-Abbrev}\n",
            ]),
    )?;
    Ok(output
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let (name, size, status) = (fields.next()?, fields.next()?, fields.next()?);
            status.starts_with("ii").then(|| {
                // Installed-Size is in KiB; a package without one counts as empty.
                (
                    name.to_owned(),
                    size.trim().parse::<u64>().unwrap_or(0) * 1024,
                )
            })
        })
        .collect())
}

/// A Debian DKMS source package of the sample driver, as a driver vendor ships one, in `work`.
fn dkms_source_package(work: &Path) -> Result<PathBuf> {
    let tree = work.join("dkms-package");
    let source = tree.join(format!("usr/src/{DRIVER}-{DKMS_VERSION}"));
    fs::create_dir_all(&source)?;
    let driver_dir = testkit::workspace_root().join("driver/example-driver");
    for file in ["Kbuild", "Makefile", "example_driver.c"] {
        fs::copy(driver_dir.join(file), source.join(file))
            .with_context(|| format!("copying {file} of the sample driver"))?;
    }
    // The driver's own Makefile hands KDIR to kbuild; dkms runs MAKE in its build copy of the source.
    // The source stops with #error without a version, so the tag goes on the command line as the
    // README says.
    let dkms_conf = format!(
        "PACKAGE_NAME=\"{DRIVER}\"\n\
         PACKAGE_VERSION=\"{DKMS_VERSION}\"\n\
         BUILT_MODULE_NAME[0]=\"example_driver\"\n\
         DEST_MODULE_LOCATION[0]=\"/updates/dkms\"\n\
         MAKE[0]=\"make KDIR=${{kernel_source_dir}} EXAMPLE_DRIVER_VERSION={VERSION} modules\"\n\
         CLEAN=\"make KDIR=${{kernel_source_dir}} clean\"\n\
         AUTOINSTALL=\"yes\"\n"
    );
    fs::write(source.join("dkms.conf"), dkms_conf)?;
    let doc = tree.join(format!("usr/share/doc/{SOURCE_PACKAGE}"));
    fs::create_dir_all(&doc)?;
    fs::write(
        doc.join("copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: example-driver\n\n\
         Files: *\nCopyright: 2026 kernel-driver delivery project\nLicense: GPL-2.0-only\n",
    )?;
    // Debian policy wants a compressed changelog in every binary package (lintian checks it).
    fs::write(
        doc.join("changelog.Debian"),
        format!(
            "{SOURCE_PACKAGE} ({DKMS_VERSION}-1) unstable; urgency=medium\n\n  \
             * Benchmark package of the sample driver.\n\n \
             -- kernel-driver delivery bench <bench@example.invalid>  Thu, 01 Jan 2026 00:00:00 +0000\n"
        ),
    )?;
    testkit::command_output(
        Command::new("gzip")
            .args(["-9", "-n"])
            .arg(doc.join("changelog.Debian")),
    )?;
    let installed_kib = du_bytes(&tree.join("usr"))?.div_ceil(1024);
    let debian = tree.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let deb_version = format!("{DKMS_VERSION}-1");
    fs::write(
        debian.join("control"),
        format!(
            "Package: {SOURCE_PACKAGE}\n\
             Version: {deb_version}\n\
             Architecture: all\n\
             Maintainer: kernel-driver delivery bench <bench@example.invalid>\n\
             Installed-Size: {installed_kib}\n\
             Depends: dkms (>= 2.1.0.0)\n\
             Section: kernel\n\
             Priority: optional\n\
             Description: sample driver, DKMS source (benchmark)\n \
             The project's sample driver as DKMS source, compiled on the node.\n"
        ),
    )?;
    // As dh_dkms's maintainer scripts: configure hands over to dkms's own common.postinst (dkms add,
    // then build and install for the running and the newest kernel); removal removes every build.
    write_script(
        &debian.join("postinst"),
        &format!(
            "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n\
             \t/usr/lib/dkms/common.postinst {DRIVER} {DKMS_VERSION} /usr/share/{SOURCE_PACKAGE} \"\" \"$2\"\n\
             fi\n"
        ),
    )?;
    write_script(
        &debian.join("prerm"),
        &format!(
            "#!/bin/sh\nset -e\ncase \"$1\" in\n\
             \tremove|upgrade|deconfigure) dkms remove -m {DRIVER} -v {DKMS_VERSION} --all || true ;;\n\
             esac\n"
        ),
    )?;
    let deb = work.join(format!("{SOURCE_PACKAGE}_{deb_version}_all.deb"));
    testkit::command_output(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&tree)
            .arg(&deb),
    )?;
    Ok(deb)
}

fn write_script(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The script the bench unit runs: loader warm, loader cold, dkms; then the kernel log lines.
fn bench_script(
    served: &bench_loader::ServedSample,
    service: &fleet::Service,
    source_deb: &Path,
) -> Result<String> {
    let common = format!(
        "--driver-name {DRIVER} --driver-version {VERSION} --mode host --deadline-seconds {COLD_DEADLINE_SECONDS}"
    );
    let deb = file_name(source_deb)?;
    let module = "example_driver";
    Ok(format!(
        r#"#!/bin/sh
mark() {{ echo "BENCH $1" > /dev/kmsg; }}
live() {{ [ -d /sys/module/{module} ]; }}
# The next contender must load the module itself: unload it and purge the loader's package.
reset() {{
  modprobe -r {module}
  for p in $(dpkg-query -W -f '${{Package}}\n' '*example-driver*' 2>/dev/null); do dpkg --purge "$p" >/dev/null 2>&1; done
  live && echo "BENCH-FAILED reset: {module} still loaded"
}}

# What every contender runs (dpkg, depmod over the kernel's modules, modprobe) is read once untimed,
# so the first contender does not pay the page cache for the others.
dpkg-query -W >/dev/null 2>&1
depmod -a "$(uname -r)"
modprobe --show-depends {module} >/dev/null 2>&1

mark "loader-warm start"
driver-loader {common} --artifact-base-url http://10.0.2.2:{warm_port}/releases/download \
  --public-key-file /etc/bench/warm.pub --expected-source-repository {BENCH_REPOSITORY} \
  --allowed-builder {BENCH_BUILDER} --cache-dir /var/cache/bench-warm run >/var/log/bench-warm.log 2>&1 \
  && live || echo "BENCH-FAILED loader-warm"
reset

mark "loader-cold start"
driver-loader {common} --artifact-base-url {service_base} --build-service-url {service_url} \
  --public-key-file /etc/bench/service.pub --expected-source-repository {service_repository} \
  --allowed-builder {service_builder} --cache-dir /var/cache/bench-cold run >/var/log/bench-cold.log 2>&1 \
  && live || echo "BENCH-FAILED loader-cold"
reset

mark "dkms start"
dpkg -i /root/{deb} >/var/log/bench-dkms.log 2>&1 && modprobe {module} >>/var/log/bench-dkms.log 2>&1 \
  && live || echo "BENCH-FAILED dkms"

du -sb /var/lib/dkms /usr/src/{DRIVER}-{DKMS_VERSION} | sed 's/^/BENCH-DU /'
dmesg | grep -E 'BENCH|{module}: loaded' | sed 's/^/KLOG /'
sed 's/^/DKMSLOG /' /var/log/bench-dkms.log
sed 's/^/COLDLOG /' /var/log/bench-cold.log
sed 's/^/WARMLOG /' /var/log/bench-warm.log
echo BENCH-END
"#,
        warm_port = served.port,
        service_base = service.node_artifact_base(),
        service_url = service.node_url(),
        service_repository = service.source_repository(),
        service_builder = fleet::service::BUILDER_ID,
    ))
}

/// The node's root disk: `root` with the kernel's modules merged into `/usr/lib/modules/<release>`
/// (the headers package already made that directory for its `build` link, so the modules cannot be
/// copied in as a whole tree), networking, the bench unit, and what `add` puts in.
fn write_disk(
    root: &Path,
    kernel: &KernelImage,
    disk: &Path,
    work: &Path,
    add: impl FnOnce(DiskImage) -> Result<DiskImage>,
) -> Result<()> {
    let staging = work.join("root");
    let result = (|| {
        testkit::command_output(
            Command::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(root)
                .arg(&staging),
        )?;
        let modules = staging.join("usr/lib/modules").join(RELEASE);
        fs::create_dir_all(&modules)?;
        let mut from = kernel.modules_dir().as_os_str().to_owned();
        from.push("/.");
        testkit::command_output(
            Command::new("cp")
                .args(["-a", "--dereference"])
                .arg(&from)
                .arg(&modules),
        )?;
        let wants = "/etc/systemd/system/multi-user.target.wants";
        let image = DiskImage::from_root(&staging)
            .size_mib(4096)
            .qemu_user_network()
            .file(
                "/etc/systemd/system/bench-dkms.service",
                BENCH_UNIT.as_bytes(),
                0o644,
            )
            .symlink(
                &format!("{wants}/bench-dkms.service"),
                "/etc/systemd/system/bench-dkms.service",
            )
            // A getty on the serial console hangs the tty up under the bench unit's output.
            .symlink(
                "/etc/systemd/system/serial-getty@ttyS0.service",
                "/dev/null",
            );
        add(image)?.write(disk).context("writing the root disk")
    })();
    let _ = fs::remove_dir_all(&staging);
    result
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn file_name(path: &Path) -> Result<String> {
    Ok(path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string_lossy()
        .into_owned())
}

fn mb(bytes: u64) -> String {
    if bytes < 1_000_000 {
        format!("{:.1} kB", bytes as f64 / 1e3)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

fn console_tail(console: &str, lines: usize) -> String {
    let all: Vec<&str> = console.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loaders_dpkg_share_is_read_from_its_log() {
        let console = "WARMLOG 2026-12-03T23:59:59.500000Z  INFO running command=DEBIAN_FRONTEND=\"noninteractive\" \"dpkg\" \"-i\" \"/x.deb\"\n\
                       COLDLOG 2026-12-03T10:00:00.000000Z  INFO running command=\"modprobe\" \"example_driver\"\n\
                       WARMLOG 2026-12-04T00:00:09.750000Z  INFO running command=\"modprobe\" \"example_driver\"\n";
        let seconds = loader_dpkg_seconds(console, "WARMLOG ").expect("both lines");
        assert!((seconds - 10.25).abs() < 1e-6, "{seconds}");
        assert_eq!(loader_dpkg_seconds(console, "COLDLOG "), None);
        assert_eq!(time_of_day("not a stamp"), None);
    }
}
