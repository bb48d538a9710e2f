//! Extraction benchmark entry point for `cargo xtask bench loader`: extracts one package with this
//! crate and with `dpkg-deb -x` (for .deb) or `rpm2cpio | cpio -idm` (for .rpm) into fresh directories
//! and prints one tab-separated line per tool plus the ratio. Peak RSS is measured by the caller
//! (e.g. `/usr/bin/time -v` around `extract_bench --only-crate`).
//!
//! Usage: extract_bench <package> [--runs N] [--only-crate] [--ko-only]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use driver_package::{ExtractOptions, PackageFormat, Selection};

fn usage() -> ! {
    eprintln!(
        "usage: extract_bench <package.deb|package.rpm> [--runs N] [--only-crate] [--ko-only]"
    );
    std::process::exit(2);
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn reference_extract(package: &Path, format: PackageFormat, target: &Path) {
    let status = match format {
        PackageFormat::Deb => Command::new("dpkg-deb")
            .arg("-x")
            .arg(package)
            .arg(target)
            .status(),
        PackageFormat::Rpm => {
            std::fs::create_dir_all(target).expect("reference target");
            Command::new("sh")
                .arg("-c")
                .arg("rpm2cpio \"$1\" | cpio -idm --quiet")
                .arg("sh")
                .arg(package)
                .current_dir(target)
                .status()
        }
    };
    assert!(
        status.expect("reference tool runs").success(),
        "reference extraction failed"
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut package: Option<PathBuf> = None;
    let mut runs = 3usize;
    let mut only_crate = false;
    let mut selection = Selection::All;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--only-crate" => only_crate = true,
            "--ko-only" => selection = Selection::KernelModules,
            other if package.is_none() && !other.starts_with('-') => {
                package = Some(PathBuf::from(other))
            }
            _ => usage(),
        }
    }
    let package = package.unwrap_or_else(|| usage());
    let runs = runs.max(1);
    let format = driver_package::detect_format(&package).unwrap_or_else(|err| {
        eprintln!("{err}");
        std::process::exit(1);
    });
    let scratch_parent = package.parent().unwrap_or(Path::new("."));
    let options = ExtractOptions {
        selection,
        ..ExtractOptions::default()
    };

    let mut ours = Vec::new();
    let mut bytes = 0;
    for _ in 0..runs {
        let scratch = tempfile::tempdir_in(scratch_parent).expect("scratch dir");
        let target = scratch.path().join("out");
        let start = Instant::now();
        let report = driver_package::extract(&package, &target, &options).unwrap_or_else(|err| {
            eprintln!("extract failed: {err}");
            std::process::exit(1);
        });
        ours.push(start.elapsed());
        bytes = report.bytes;
    }
    let ours = median(ours);
    println!("tool\tmedian_seconds\tbytes_written\truns");
    println!("driver-package\t{:.3}\t{bytes}\t{runs}", ours.as_secs_f64());
    if only_crate {
        return;
    }
    let tool = match format {
        PackageFormat::Deb => "dpkg-deb -x",
        PackageFormat::Rpm => "rpm2cpio|cpio -idm",
    };
    let mut theirs = Vec::new();
    for _ in 0..runs {
        let scratch = tempfile::tempdir_in(scratch_parent).expect("scratch dir");
        let target = scratch.path().join("out");
        let start = Instant::now();
        reference_extract(&package, format, &target);
        theirs.push(start.elapsed());
    }
    let theirs = median(theirs);
    println!("{tool}\t{:.3}\t-\t{runs}", theirs.as_secs_f64());
    println!(
        "ratio(driver-package/{tool})\t{:.2}",
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
}
