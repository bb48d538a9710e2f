//! `cargo xtask bench first-run`: how long a newcomer waits from a fresh clone to the first driver
//! served by README's main command, and what the wait is made of.
//!
//! The committed HEAD is cloned into a scratch directory and run there exactly as README says, with
//! nothing carried over from this checkout: a fresh `CARGO_HOME` (every crate downloaded from
//! crates.io again), a fresh target directory, and a fresh `target/build-service` state directory
//! (no signing keys, no base image, no header cache). The parts:
//!
//! - **fetch crates**: `cargo fetch --locked` into the fresh `CARGO_HOME`;
//! - **compile**: `cargo xtask serve` from its start until `GET /healthz` answers, split at each
//!   `Finished` line cargo prints (xtask itself, the static driver-builder(s), the release
//!   build-service);
//! - **first build**: README's `curl .../build` for 6.1.0-47-amd64 until `GET /status` says `done`,
//!   split into the first base image (the service logs "made the base image" with its seconds) and
//!   the rest (overlay root, headers from the mirror, compile, package, sign);
//! - **download**: the package from the `download_url` the status names.
//!
//! What a truly fresh machine adds and this one cannot measure: installing Debian packages and the
//! Rust toolchain (the preflight of `cargo xtask serve` does that as root). Uncommitted changes of
//! this checkout are not part of the measurement (a warning says so).
//!
//! Needs: git, curl, network access to crates.io and deb.debian.org, and what `cargo xtask serve`
//! needs. About 15 minutes on 2 cores; the scratch directory (≈5 GB) is removed afterwards unless
//! `KDRIVER_BENCH_KEEP=1`.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use build_api::{BuildState, BuildStatus};

/// README's request, verbatim apart from the host.
const README_REQUEST: &str = r#"{"kernel_version":"6.1.0-47-amd64","architecture":"x86_64","distribution":"debian","distro_version":"12","driver_version":"v0.1.0"}"#;
/// Bounds on each wait, so a broken step ends the bench instead of hanging it.
const COMPILE_LIMIT: Duration = Duration::from_secs(60 * 60);
const BUILD_LIMIT: Duration = Duration::from_secs(30 * 60);

pub fn run() -> Result<()> {
    let root = crate::workspace_root();
    let head = git_output(&root, &["rev-parse", "HEAD"])?;
    if !git_output(&root, &["status", "--porcelain", "--untracked-files=no"])?.is_empty() {
        eprintln!("note: uncommitted changes are not measured; the bench clones HEAD {head}");
    }
    let work = root
        .join("target")
        .join(format!("bench-first-run-{}", std::process::id()));
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let outcome = measure(&root, &work);
    if std::env::var_os("KDRIVER_BENCH_KEEP").is_some() {
        eprintln!("kept {}", work.display());
    } else {
        let _ = fs::remove_dir_all(&work);
    }
    let parts = outcome?;
    print_table(&head, &parts);
    Ok(())
}

/// One row of the table.
struct Part {
    name: String,
    seconds: f64,
    /// Rows that are a split of the row above them are indented and not summed.
    detail: bool,
}

fn measure(root: &Path, work: &Path) -> Result<Vec<Part>> {
    let clone = work.join("kdriver");
    run_quiet(
        Command::new("git")
            .args(["clone", "--quiet", "--no-hardlinks"])
            .arg(root)
            .arg(&clone),
        "git clone",
    )?;
    let cargo_home = work.join("cargo-home");
    fs::create_dir_all(&cargo_home)?;
    let rustup_home = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".rustup")))
        .context("neither RUSTUP_HOME nor HOME is set")?;
    let fresh_cargo = || {
        let mut command = Command::new("cargo");
        command
            .current_dir(&clone)
            .env("CARGO_HOME", &cargo_home)
            .env("RUSTUP_HOME", &rustup_home)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET_DIR")
            .env_remove("KDRIVER_TEST_CACHE")
            .env("CARGO_INCREMENTAL", "0")
            .env("CARGO_TERM_COLOR", "never");
        command
    };
    let mut parts = Vec::new();

    let started = Instant::now();
    run_quiet(fresh_cargo().args(["fetch", "--locked"]), "cargo fetch")?;
    parts.push(Part {
        name: "fetch crates (fresh CARGO_HOME)".to_owned(),
        seconds: started.elapsed().as_secs_f64(),
        detail: false,
    });

    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let log_path = work.join("serve.log");
    let started = Instant::now();
    let mut serve = fresh_cargo()
        .args(["xtask", "serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--log-format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so stopping it also stops the service `cargo run` started.
        .process_group(0)
        .spawn()
        .context("starting cargo xtask serve")?;
    let _stop = StopGroup(serve.id());
    let lines = follow_output(&mut serve, &log_path, started)?;

    wait_until(COMPILE_LIMIT, "the service to answer /healthz", || {
        if let Ok(Some(status)) = serve.try_wait() {
            bail!(
                "cargo xtask serve ended with {status} before serving; its output: {}",
                log_path.display()
            );
        }
        Ok(curl(&["-sf", "-o", "/dev/null", &format!("{base}/healthz")]).is_ok())
    })?;
    let compile = started.elapsed().as_secs_f64();
    parts.push(Part {
        name: "compile, until the service answers".to_owned(),
        seconds: compile,
        detail: false,
    });
    parts.extend(compile_steps(&lines));

    let requested = Instant::now();
    let answer = curl(&[
        "-sS",
        "--fail-with-body",
        &format!("{base}/build"),
        "-H",
        "content-type: application/json",
        "-d",
        README_REQUEST,
    ])?;
    let accepted: serde_json::Value =
        serde_json::from_str(&answer).with_context(|| format!("POST /build answered {answer}"))?;
    let build_id = accepted["build_id"]
        .as_str()
        .with_context(|| format!("POST /build answered no build_id: {answer}"))?
        .to_owned();
    let mut status: Option<BuildStatus> = None;
    wait_until(BUILD_LIMIT, "the first build to finish", || {
        let text = curl(&["-sS", &format!("{base}/status/{build_id}?wait=30")])?;
        let current: BuildStatus =
            serde_json::from_str(&text).with_context(|| format!("GET /status answered {text}"))?;
        match current.status {
            BuildState::Done => {
                status = Some(current);
                Ok(true)
            }
            BuildState::Error | BuildState::TimedOut => bail!(
                "the first build ended {:?}: {}",
                current.status,
                current.error.unwrap_or_default()
            ),
            _ => Ok(false),
        }
    })?;
    let first_build = requested.elapsed().as_secs_f64();
    parts.push(Part {
        name: "first build (README's curl → done)".to_owned(),
        seconds: first_build,
        detail: false,
    });
    let log = fs::read_to_string(&log_path).unwrap_or_default();
    match base_image_seconds(&log) {
        Some(seconds) => {
            parts.push(Part {
                name: "first base image (mmdebstrap)".to_owned(),
                seconds,
                detail: true,
            });
            parts.push(Part {
                name: "rest: root layer, headers, compile, package, sign".to_owned(),
                seconds: first_build - seconds,
                detail: true,
            });
        }
        None => {
            eprintln!("the service logged no \"made the base image\" line; first build not split")
        }
    }

    let url = status
        .and_then(|s| s.download_url)
        .context("a done build names no download_url")?;
    let url = if url.starts_with('/') {
        format!("{base}{url}")
    } else {
        url
    };
    let fetched = Instant::now();
    let package = work.join("package.deb");
    curl(&["-sSf", "-o", &package.to_string_lossy(), &url])?;
    let bytes = fs::metadata(&package)?.len();
    parts.push(Part {
        name: format!("download the package ({bytes} bytes)"),
        seconds: fetched.elapsed().as_secs_f64(),
        detail: false,
    });
    Ok(parts)
}

/// Copies the child's output into `log` as it comes, remembering when each line arrived.
fn follow_output(
    child: &mut Child,
    log: &Path,
    started: Instant,
) -> Result<mpsc::Receiver<(f64, String)>> {
    let (sender, receiver) = mpsc::channel();
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let streams: [Box<dyn std::io::Read + Send>; 2] = [
        Box::new(child.stdout.take().context("stdout")?),
        Box::new(child.stderr.take().context("stderr")?),
    ];
    for stream in streams {
        let sender = sender.clone();
        let mut file = file.try_clone()?;
        // Ends when the child closes the stream (it is killed at the end of the bench at latest).
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                use std::io::Write;
                let _ = writeln!(file, "{line}");
                let _ = sender.send((started.elapsed().as_secs_f64(), line));
            }
        });
    }
    Ok(receiver)
}

/// The compile split at each `Finished` line: what was compiled last before it names the step.
fn compile_steps(lines: &mpsc::Receiver<(f64, String)>) -> Vec<Part> {
    let mut steps = Vec::new();
    let mut last_compiled = String::new();
    let mut since = 0.0;
    for (at, line) in lines.try_iter() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Compiling ") {
            last_compiled = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        } else if let Some(rest) = line.strip_prefix("Finished ") {
            let profile = rest.split('`').nth(1).unwrap_or("?");
            steps.push(Part {
                name: format!("cargo {profile}: …{last_compiled}"),
                seconds: at - since,
                detail: true,
            });
            since = at;
        }
    }
    steps
}

/// The seconds of the service's "made the base image" log line (JSON log).
fn base_image_seconds(log: &str) -> Option<f64> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|entry| entry["fields"]["message"] == "made the base image")
        .and_then(|entry| entry["fields"]["seconds"].as_f64())
}

fn print_table(head: &str, parts: &[Part]) {
    let total: f64 = parts.iter().filter(|p| !p.detail).map(|p| p.seconds).sum();
    println!();
    println!(
        "| fresh clone of {} → first driver served by `cargo xtask serve` | seconds | share |",
        &head[..head.len().min(12)]
    );
    println!("|---|---|---|");
    for part in parts {
        let name = if part.detail {
            format!("  ↳ {}", part.name)
        } else {
            part.name.clone()
        };
        println!(
            "| {name} | {:.1} | {:.0}% |",
            part.seconds,
            100.0 * part.seconds / total
        );
    }
    println!("| **total** | **{total:.1}** | 100% |");
}

/// Kills the process group on every way out of the bench.
struct StopGroup(u32);

impl Drop for StopGroup {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0) {
            let group = nix::unistd::Pid::from_raw(-pid);
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
            std::thread::sleep(Duration::from_secs(2));
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ready()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("gave up waiting {limit:?} for {what}")
}

fn curl(args: &[&str]) -> Result<String> {
    let output = Command::new("curl")
        .args(["--max-time", "60"])
        .args(args)
        .output()
        .context("running curl")?;
    if !output.status.success() {
        bail!(
            "curl {args:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn git_output(root: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new("git")
        .current_dir(root)
        .args(args)
        .output()
        .context("running git")?;
    if !output.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn run_quiet(command: &mut Command, what: &str) -> Result<()> {
    testkit::command_output(command)
        .map(drop)
        .context(what.to_owned())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compile_steps_are_named_by_the_last_crate_before_each_finished_line() {
        let (sender, receiver) = mpsc::channel();
        for (at, line) in [
            (1.0, "   Compiling serde v1.0.200"),
            (40.0, "   Compiling xtask v0.1.0 (/x/xtask)"),
            (
                50.0,
                "    Finished `dev` profile [unoptimized + debuginfo] target(s) in 49.9s",
            ),
            (60.0, "   Compiling driver-builder v0.1.0 (/x)"),
            (
                90.0,
                "    Finished `release` profile [optimized] target(s) in 40s",
            ),
        ] {
            sender.send((at, line.to_owned())).unwrap();
        }
        let steps = compile_steps(&receiver);
        let named: Vec<(String, f64)> = steps.into_iter().map(|p| (p.name, p.seconds)).collect();
        assert_eq!(
            named,
            vec![
                ("cargo dev: …xtask".to_owned(), 50.0),
                ("cargo release: …driver-builder".to_owned(), 40.0)
            ]
        );
    }

    #[test]
    fn the_base_image_line_is_found_in_the_json_log() {
        let log = "not json\n\
            {\"fields\":{\"message\":\"serving\"}}\n\
            {\"fields\":{\"message\":\"made the base image\",\"root\":\"debian-12-x86_64\",\"seconds\":81.5}}\n";
        assert_eq!(base_image_seconds(log), Some(81.5));
        assert_eq!(base_image_seconds("{\"fields\":{}}"), None);
    }
}
