//! `cargo xtask fleet`: the fleet end-to-end harness by hand. Starts the real build-service on
//! loopback, boots a cold node (driver built on demand) and then a warm node (prebuilt hit) per
//! chosen real Debian kernel under qemu, and prints a table: kernel, distro version, build time,
//! time to driver live cold and warm, result.
//!
//! ```text
//! cargo xtask fleet --all [--jobs N] [--flavor amd64|cloud-amd64|rt-amd64] [--limit N]
//! cargo xtask fleet --kernel 6.1.0-47-amd64 [--kernel ...]
//! ```
//!
//! `--all` sweeps every amd64 kernel image reachable from the configured Debian suites (generic,
//! cloud and rt flavors). Kernels are processed `--jobs` at a time (default 2: each holds a qemu
//! VM, and cold ones a build); kernels downloaded only for the sweep are evicted afterwards.

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask fleet (--all | --kernel RELEASE...) [--jobs N] [--flavor FLAVOR] [--limit N]";

pub fn run(args: &[String]) -> Result<()> {
    let mut all = false;
    let mut kernels: Vec<String> = Vec::new();
    let mut jobs: usize = 2;
    let mut flavors: Vec<String> = Vec::new();
    let mut limit: Option<usize> = None;
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

    let reachable = fleet::sweep::reachable_kernels().context("listing reachable kernels")?;
    let mut chosen: Vec<_> = if all {
        reachable.clone()
    } else {
        let mut chosen = Vec::new();
        for kernel in &kernels {
            let info = reachable
                .iter()
                .find(|info| info.release.as_str() == kernel)
                .with_context(|| {
                    format!("--kernel {kernel}: not an amd64 image of the configured Debian suites")
                })?;
            chosen.push(info.clone());
        }
        chosen
    };
    if !flavors.is_empty() {
        chosen.retain(|info| flavors.contains(&info.flavor));
    }
    if let Some(limit) = limit {
        chosen.truncate(limit);
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
    let rows = fleet::sweep::sweep(&fleet, &chosen, jobs);
    let table = fleet::sweep::render(&rows);
    print!("{table}");
    std::fs::write(fleet.dir().join("table.txt"), &table)?;
    eprintln!(
        "fleet: table saved to {}",
        fleet.dir().join("table.txt").display()
    );
    if rows.iter().any(|row| row.result != "loaded") {
        bail!("not every kernel loaded its driver (see the table)");
    }
    Ok(())
}
