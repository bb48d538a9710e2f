//! `cargo xtask fleet`: the fleet end-to-end harness by hand. Starts the real build-service on
//! loopback, boots a cold node (driver built on demand) and then a warm node (prebuilt hit) per
//! chosen real Debian kernel under qemu, and prints a table: kernel, distro version, build time,
//! time to driver live cold and warm, result.
//!
//! ```text
//! cargo xtask fleet --all [--arch amd64|arm64] [--jobs N] [--flavor FLAVOR] [--limit N]
//! cargo xtask fleet --kernel 6.1.0-47-amd64 [--kernel 6.1.0-47-arm64 ...]
//! ```
//!
//! `--all` sweeps every amd64 and arm64 kernel image reachable from the configured Debian suites
//! (generic, cloud and rt flavors; `--arch` keeps one architecture, `--flavor` some flavors, and
//! `--limit N` the first N per architecture). arm64 nodes boot under qemu-system-aarch64 and their
//! drivers are built in arm64 roots (emulated on an x86_64 host). Kernels are processed `--jobs`
//! at a time (default 2: each holds a qemu VM, and cold ones a build); kernels downloaded only for
//! the sweep are evicted afterwards. Rows are appended to `rows.txt` in the run's directory as
//! they complete; the table with per-architecture medians goes to `table.txt` at the end.

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask fleet (--all | --kernel RELEASE...) [--arch amd64|arm64] [--jobs N] [--flavor FLAVOR] [--limit N]";

pub fn run(args: &[String]) -> Result<()> {
    let mut all = false;
    let mut kernels: Vec<String> = Vec::new();
    let mut jobs: usize = 2;
    let mut flavors: Vec<String> = Vec::new();
    let mut limit: Option<usize> = None;
    let mut arches: Vec<kernel_id::Arch> = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| {
            iter.next()
                .cloned()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--all" => all = true,
            "--kernel" => kernels.push(value("--kernel")?),
            "--jobs" => {
                jobs = value("--jobs")?
                    .parse()
                    .context("--jobs: must be a number 1..8")?;
                if !(1..=8).contains(&jobs) {
                    bail!("--jobs: must be 1..8");
                }
            }
            "--flavor" => flavors.push(value("--flavor")?),
            "--arch" => arches.push(kernel_id::Arch::parse(&value("--arch")?).context("--arch")?),
            "--limit" => limit = Some(value("--limit")?.parse().context("--limit: a number")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument '{other}'\n{USAGE}"),
        }
    }
    if !all && kernels.is_empty() {
        bail!("nothing to do: give --all or --kernel\n{USAGE}");
    }

    if arches.is_empty() {
        arches = kernel_id::Arch::ALL.to_vec();
    }
    let reachable =
        fleet::sweep::reachable_kernels(&arches).context("listing reachable kernels")?;
    let mut chosen: Vec<_> = if all {
        reachable.clone()
    } else {
        let mut chosen = Vec::new();
        for kernel in &kernels {
            let info = reachable
                .iter()
                .find(|info| info.release.as_str() == kernel)
                .with_context(|| {
                    format!(
                        "--kernel {kernel}: not a kernel image of the configured Debian suites \
                         (for {})",
                        arches
                            .iter()
                            .map(|a| a.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            chosen.push(info.clone());
        }
        chosen
    };
    if !flavors.is_empty() {
        chosen.retain(|info| flavors.contains(&info.flavor));
    }
    if let Some(limit) = limit {
        let mut taken: std::collections::BTreeMap<kernel_id::Arch, usize> = Default::default();
        chosen.retain(|info| {
            let count = taken.entry(info.arch).or_default();
            *count += 1;
            *count <= limit
        });
    }
    if chosen.is_empty() {
        bail!("no kernel left to run after --flavor/--limit");
    }
    eprintln!(
        "fleet: {} kernel(s) of {} reachable, {jobs} at a time",
        chosen.len(),
        reachable.len()
    );
    let fleet = fleet::Fleet::start("sweep")?;
    eprintln!("fleet: logs in {}", fleet.dir().display());
    let progress = fleet.dir().join("rows.txt");
    eprintln!("fleet: rows as they complete: {}", progress.display());
    let rows = fleet::sweep::sweep(&fleet, &chosen, jobs, &progress);
    let table = fleet::sweep::render(&rows);
    print!("{table}");
    std::fs::write(fleet.dir().join("table.txt"), &table)?;
    eprintln!(
        "fleet: table saved to {}",
        fleet.dir().join("table.txt").display()
    );
    // Kernels the mirror or the archive cannot supply are reported, not failed: the system did
    // what it should with them.
    let failed = rows
        .iter()
        .filter(|row| row.outcome == fleet::sweep::Outcome::Failed)
        .count();
    if failed > 0 {
        bail!("{failed} kernel(s) failed (see the table)");
    }
    Ok(())
}
