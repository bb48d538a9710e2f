//! The `matrix-gen` command line: `generate` plans the nightly matrices, `add-kernel` grows
//! kernels.json after a successful on-demand build.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use kernel_id::{
    Arch, Distribution, DriverName, DriverVersion, IdentityInput, KernelIdentity, KernelsFile,
};
use matrix_gen::plan::{self, Plan, PlanOptions};
use matrix_gen::{Report, add_kernel, crawler, livepatch};

#[derive(Parser)]
#[command(
    version,
    about = "Plans driver build matrices and maintains kernels.json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints `$GITHUB_OUTPUT` lines: the shard list, or with --shard one shard's `matrix=`.
    Generate(Generate),
    /// Inserts one kernel into kernels.json and prints the PR branch name.
    AddKernel(AddKernel),
}

#[derive(Args)]
struct Generate {
    /// Driver version: part of every identity.
    #[arg(long, env = "DRIVER_VERSION")]
    driver_version: String,
    /// Driver name used in package file names.
    #[arg(long, env = "DRIVER_NAME", default_value = "example-driver")]
    driver_name: String,
    /// The fleet's kernels.
    #[arg(long, default_value = "kernels.json")]
    kernels: PathBuf,
    /// Also read a Falco kernel-crawler feed (opt-in, speculative).
    #[arg(long)]
    kernel_crawler: Option<PathBuf>,
    /// Architecture the crawler feed was made for.
    #[arg(long, default_value = "x86_64")]
    crawler_arch: String,
    /// Also read AL2023 livepatch repositories (directory or URL; repeatable).
    #[arg(long)]
    livepatch_repo: Vec<String>,
    /// Already-published package file names or cache keys, one per line: emit only what is missing.
    #[arg(long)]
    built: Option<PathBuf>,
    /// Keep only these architectures.
    #[arg(long = "arch")]
    arches: Vec<String>,
    /// Keep only these distributions.
    #[arg(long = "distribution")]
    distributions: Vec<String>,
    /// Keep only these distro versions.
    #[arg(long = "distro-version")]
    distro_versions: Vec<String>,
    /// Report malformed entries and continue instead of failing.
    #[arg(long)]
    skip_invalid: bool,
    /// Jobs per shard (GitHub Actions allows at most 256).
    #[arg(long, default_value_t = plan::MAX_JOBS_PER_MATRIX)]
    max_jobs_per_shard: usize,
    /// Bytes per `matrix=` output (GitHub allows 1 MB per job output).
    #[arg(long, default_value_t = plan::DEFAULT_MAX_OUTPUT_BYTES)]
    max_output_bytes: usize,
    /// Print `matrix=<json>` for this shard instead of the shard list.
    #[arg(long)]
    shard: Option<usize>,
    /// Append to this file (e.g. "$GITHUB_OUTPUT") instead of printing.
    #[arg(long)]
    github_output: Option<PathBuf>,
}

#[derive(Args)]
struct AddKernel {
    /// kernels.json to update.
    #[arg(long, default_value = "kernels.json")]
    file: PathBuf,
    #[arg(long)]
    kernel_version: String,
    #[arg(long)]
    architecture: String,
    #[arg(long)]
    distribution: String,
    #[arg(long)]
    distro_version: Option<String>,
    #[arg(long)]
    driver_version: String,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("matrix-gen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => generate(args),
        Command::AddKernel(args) => {
            let identity = KernelIdentity::from_input(&IdentityInput {
                kernel_version: args.kernel_version,
                architecture: args.architecture,
                distribution: args.distribution,
                distro_version: args.distro_version,
                driver_version: args.driver_version,
            })?;
            let added = add_kernel::add_kernel(&args.file, &identity)?;
            if added.changed {
                eprintln!(
                    "added {} to {}",
                    identity.kernel_release(),
                    args.file.display()
                );
            } else {
                eprintln!(
                    "{} is already in {}; nothing changed",
                    identity.kernel_release(),
                    args.file.display()
                );
            }
            println!("{}", added.branch);
            Ok(())
        }
    }
}

fn generate(args: Generate) -> Result<()> {
    let driver = DriverName::parse(&args.driver_name)?;
    let driver_version = DriverVersion::parse(&args.driver_version)?;
    let mut report = Report::default();
    let mut plan = Plan::default();

    let text = std::fs::read_to_string(&args.kernels)
        .with_context(|| format!("reading {}", args.kernels.display()))?;
    let kernels =
        KernelsFile::parse(&text).with_context(|| format!("in {}", args.kernels.display()))?;
    for (arch, entry) in kernels.iter() {
        match entry.identity(arch, &driver_version) {
            Ok(identity) => plan.add(identity, []),
            Err(e) => report.invalid(
                &format!("{}: {arch} {}", args.kernels.display(), entry.kernelrelease),
                e,
            ),
        }
    }
    if let Some(path) = &args.kernel_crawler {
        let arch = Arch::parse(&args.crawler_arch)?;
        let file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
        crawler::read_feed(file, arch, &driver_version, &mut report, &mut |k| {
            plan.add(k.identity, k.headers)
        })
        .with_context(|| format!("in {}", path.display()))?;
    }
    for repository in &args.livepatch_repo {
        for identity in livepatch::discover(repository, &driver_version, &mut report)? {
            plan.add(identity, []);
        }
    }
    if let Some(path) = &args.built {
        plan.remove_built(&read_built(path, &driver)?);
    }

    eprint!("{}", report.summary());
    if !report.invalid.is_empty() && !args.skip_invalid {
        bail!(
            "{} invalid entries (pass --skip-invalid to plan the rest)",
            report.invalid.len()
        );
    }

    let options = PlanOptions {
        arches: args
            .arches
            .iter()
            .map(|a| Arch::parse(a))
            .collect::<Result<_, _>>()?,
        distributions: args
            .distributions
            .iter()
            .map(|d| Distribution::parse(d))
            .collect::<Result<_, _>>()?,
        distro_versions: args.distro_versions.clone(),
        max_jobs_per_shard: args.max_jobs_per_shard,
        max_output_bytes: args.max_output_bytes,
    };
    let shards = plan::shard(plan.jobs(&driver, &options), &options)?;
    let output = match args.shard {
        None => plan::plan_outputs(&shards),
        Some(index) => match shards.get(index) {
            Some(shard) => plan::matrix_output(shard),
            None => bail!(
                "--shard {index} is out of range: the plan has {} shards",
                shards.len()
            ),
        },
    };
    match &args.github_output {
        Some(path) => OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(output.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?,
        None => print!("{output}"),
    }
    Ok(())
}

/// Published artifacts: package file names (`parse_any_package_file_name`) or cache keys.
fn read_built(path: &PathBuf, driver: &DriverName) -> Result<BTreeSet<KernelIdentity>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut built = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let identity = KernelIdentity::parse_package_file_name(driver, line)
            .or_else(|_| KernelIdentity::parse_cache_key(line))
            .with_context(|| {
                format!(
                    "{}:{}: neither a {driver} package file name nor a cache key: {line:?}",
                    path.display(),
                    n + 1
                )
            })?;
        built.insert(identity);
    }
    Ok(built)
}
