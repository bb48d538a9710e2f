//! The fleet end-to-end harness: the real `build-service` (local backend) on loopback, and "nodes"
//! that boot real Debian kernels under qemu into an initramfs running the static `driver-loader`
//! against it. The judge is the kernel: a node has its driver only when the driver's own line
//! shows up on the node's console.
//!
//! Every run gets a directory `target/fleet-logs/<scenario>-<timestamp>/` holding the service's
//! log, its state (SQLite, artifacts, per-build `build.log`), the run's keys and every node's
//! console; tests name it in their failure messages.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let fleet = fleet::Fleet::start("example")?;
//! let spec = fleet::NodeSpec::debian("cold", "6.1.0-47-amd64", "12")?;
//! let node = fleet.prepare(&spec)?;
//! let outcome = fleet.run_node(&node)?;
//! assert!(outcome.loaded(), "{}", fleet.failure_context(&outcome.describe()));
//! # Ok(())
//! # }
//! ```

pub mod gate;
pub mod host;
pub mod node;
pub mod service;
pub mod sweep;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kernel_id::{DriverName, DriverVersion};

pub use node::{LoaderSettings, ModuleState, NodeOptions, NodeOutcome, NodeSpec, PreparedNode};
pub use service::{BuildAnswer, BuildCounters, BuildTimes, Metrics, Service, SigningKey};

/// The sample driver every fleet run builds and loads.
pub const DRIVER: &str = "example-driver";
/// The driver version nodes ask for.
pub const DRIVER_VERSION: &str = "v0.1.2";

/// Hard timeout of a node that may have to wait for a build (root creation included; an arm64 root
/// under emulation takes minutes). Above the loader's own deadline, so the loader reports first.
pub const COLD_NODE_TIMEOUT: Duration = Duration::from_secs(27 * 60);
/// Hard timeout of a node whose artifact exists (boot + download + load).
pub const WARM_NODE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// A service plus the settings and directory of one run.
#[derive(Debug)]
pub struct Fleet {
    pub service: Service,
    pub settings: LoaderSettings,
    dir: PathBuf,
}

impl Fleet {
    /// Creates `target/fleet-logs/<scenario>-<timestamp>/` and starts the service there.
    pub fn start(scenario: &str) -> Result<Fleet> {
        let dir = run_dir(scenario)?;
        Fleet::start_in(&dir)
    }

    /// Starts the service with its state in `dir` (created if missing).
    pub fn start_in(dir: &Path) -> Result<Fleet> {
        Fleet::start_in_with(dir, &service::ServiceOptions::default())
    }

    /// [`Fleet::start_in`] with the service started with `options` (e.g. a module-signing key).
    pub fn start_in_with(dir: &Path, options: &service::ServiceOptions) -> Result<Fleet> {
        std::fs::create_dir_all(dir)?;
        let service = Service::start_with(dir, options)
            .with_context(|| format!("starting the build-service (logs in {})", dir.display()))?;
        let settings = LoaderSettings::new(
            DriverName::parse(DRIVER)?,
            DriverVersion::parse(DRIVER_VERSION)?,
        );
        Ok(Fleet {
            service,
            settings,
            dir: dir.to_path_buf(),
        })
    }

    /// The run's log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn prepare(&self, spec: &NodeSpec) -> Result<PreparedNode> {
        node::prepare(spec, &self.service, &self.settings, &self.dir.join("nodes"))
    }

    /// Like [`Fleet::prepare`], with this node's loader told `settings` instead of the run's.
    pub fn prepare_with(&self, spec: &NodeSpec, settings: &LoaderSettings) -> Result<PreparedNode> {
        node::prepare(spec, &self.service, settings, &self.dir.join("nodes"))
    }

    /// Like [`Fleet::prepare_with`], with the node's firmware, kernel command line and extra loader
    /// flags from `options`.
    pub fn prepare_with_options(
        &self,
        spec: &NodeSpec,
        settings: &LoaderSettings,
        options: &NodeOptions,
    ) -> Result<PreparedNode> {
        node::prepare_with_options(
            spec,
            &self.service,
            settings,
            options,
            &self.dir.join("nodes"),
        )
    }

    /// Boots one node and follows it to the end (cold timeout: it may wait for a build).
    pub fn run_node(&self, node: &PreparedNode) -> Result<NodeOutcome> {
        let running = node::boot(node, COLD_NODE_TIMEOUT)?;
        Ok(node::observe(running))
    }

    /// Boots all `nodes` at the same moment and starts their loaders together, once the last
    /// has booted ([`gate`]).
    pub fn run_together(&self, nodes: &[PreparedNode]) -> Result<Vec<NodeOutcome>> {
        node::boot_together(nodes, COLD_NODE_TIMEOUT)
    }

    /// `message` followed by where the logs are: the run directory, the service log and every
    /// build log, so a failing test names them.
    pub fn failure_context(&self, message: &str) -> String {
        let mut text = format!(
            "{message}\n\nfleet logs: {}\nservice log: {}\n",
            self.dir.display(),
            self.service.log_file().display()
        );
        for id in self.service.build_ids() {
            text.push_str(&format!(
                "build log: {}\n",
                self.service
                    .builds_dir()
                    .join(id)
                    .join("build.log")
                    .display()
            ));
        }
        text
    }

    /// Removes the bulky per-node initramfs images (and UEFI variable store copies) after a
    /// successful run (consoles, service state and logs stay).
    pub fn tidy(&self) {
        if let Ok(entries) = std::fs::read_dir(self.dir.join("nodes")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".initrd.gz") || name.ends_with(".vars.fd") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// Replaces the published package at `target` with `bytes` and rewrites its `.sha256` to match,
/// as someone with write access to the artifact store could; the signature is left alone (see
/// [`SigningKey::sign`] to forge one with the run's key).
pub fn overwrite_published(target: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(target, bytes).with_context(|| format!("writing {}", target.display()))?;
    let name = target
        .file_name()
        .with_context(|| format!("{} has no file name", target.display()))?
        .to_string_lossy()
        .into_owned();
    let output = Command::new("sha256sum")
        .arg(target)
        .output()
        .context("running sha256sum")?;
    let hex = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    if !output.status.success() || hex.len() != 64 {
        bail!("sha256sum {} failed ({})", target.display(), output.status);
    }
    let mut digest = target.as_os_str().to_owned();
    digest.push(".sha256");
    std::fs::write(PathBuf::from(digest), format!("{hex}  {name}\n"))?;
    Ok(())
}

/// What a published `.deb` says about its architecture, read with the real `dpkg-deb`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageArch {
    /// The control file's `Architecture:` field.
    pub control: String,
    /// The ELF `e_machine` of every kernel module in it.
    pub module_machines: Vec<u16>,
}

/// Reads `package`'s `Architecture:` and extracts it under `scratch` (emptied first) to read each
/// module's ELF machine.
pub fn package_arch(package: &Path, scratch: &Path) -> Result<PackageArch> {
    let field = Command::new("dpkg-deb")
        .arg("-f")
        .arg(package)
        .arg("Architecture")
        .output()
        .context("running dpkg-deb -f")?;
    if !field.status.success() {
        bail!(
            "dpkg-deb -f {}: {}",
            package.display(),
            String::from_utf8_lossy(&field.stderr)
        );
    }
    if scratch.exists() {
        std::fs::remove_dir_all(scratch)?;
    }
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(package)
        .arg(scratch)
        .status()
        .context("running dpkg-deb -x")?;
    if !status.success() {
        bail!("dpkg-deb -x {} failed ({status})", package.display());
    }
    let mut module_machines = Vec::new();
    let mut pending = vec![scratch.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "ko") {
                let bytes = std::fs::read(&path)?;
                // e_machine: a little-endian u16 at offset 18 of the ELF header.
                let machine = bytes
                    .get(18..20)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .with_context(|| format!("{}: too short for an ELF header", path.display()))?;
                module_machines.push(machine);
            }
        }
    }
    Ok(PackageArch {
        control: String::from_utf8_lossy(&field.stdout).trim().to_owned(),
        module_machines,
    })
}

/// `<workspace>/target/fleet-logs/<scenario>-<UTC timestamp>-<pid>/`, created.
pub fn run_dir(scenario: &str) -> Result<PathBuf> {
    if scenario.is_empty()
        || !scenario
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("scenario '{scenario}': must be [A-Za-z0-9_-]+");
    }
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let dir = testkit::workspace_root()
        .join("target")
        .join("fleet-logs")
        .join(format!("{scenario}-{stamp}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Builds `bin` of workspace `package` for the host (debug profile, or `target` triple in
/// release) and returns the executable; cargo's freshness check makes repeats cheap.
pub fn cargo_binary(package: &str, bin: &str, target: Option<&str>) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(testkit::workspace_root())
        .args(["build", "--message-format=json-render-diagnostics"])
        .args(["-p", package, "--bin", bin])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(target) = target {
        command.args(["--release", "--target", target]);
    }
    let output = command
        .output()
        .with_context(|| format!("running cargo build -p {package} --bin {bin}"))?;
    if !output.status.success() {
        bail!(
            "cargo build -p {package} --bin {bin} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["target"]["name"] == bin)
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo reported no executable for {package}/{bin}"))
}
