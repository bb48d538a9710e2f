//! Running a host command with its output in a log file and a hard time limit.
//!
//! Commands that touch a root (mmdebstrap, chroot) are started through `unshare --mount --pid --fork
//! --kill-child`: their mounts live in a private mount namespace, so they vanish with the last process
//! and can never leak onto the host or be walked into when the work directory is removed; and killing
//! the unshare process takes every process of the build with it, however it daemonised.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::error::{BuildRootError, Result};

/// How a bounded command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited (or was killed by someone else) with this status.
    Exited(ExitStatus),
    /// It ran past the limit and was killed.
    TimedOut,
    /// It was cancelled and killed.
    Cancelled,
}

/// A request to stop a build, shared between whoever decides (the build service) and the thread that
/// runs the build. The thread that started a command is the one that kills it: it owns the child, so
/// the process group it kills can never be one recycled after the child was reaped.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A request not yet made.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for the build to stop: a running command's whole process group is killed within
    /// [`CANCEL_LATENCY`], and no further command starts.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the build was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Longest time between [`Cancel::cancel`] and the kill of a running command's process group.
pub const CANCEL_LATENCY: Duration = Duration::from_millis(200);

/// The prefix that puts a command in private mount and pid namespaces tied to the unshare process.
pub(crate) fn isolated(program: &str) -> Command {
    isolated_in(None, program)
}

/// [`isolated`], with the private mount namespace copied from `mount_namespace` (a
/// `/proc/<pid>/ns/mnt` link; `nsenter` enters it and execs `unshare`, keeping the process) rather
/// than from the caller's.
pub(crate) fn isolated_in(mount_namespace: Option<&Path>, program: &str) -> Command {
    let mut command = match mount_namespace {
        Some(namespace) => {
            let mut command = Command::new("nsenter");
            let mut option = std::ffi::OsString::from("--mount=");
            option.push(namespace);
            command.arg(option).args(["--", "unshare"]);
            command
        }
        None => Command::new("unshare"),
    };
    command.args([
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
        "--",
        program,
    ]);
    command
}

/// Opens `log` for appending, creating it and its directory.
pub(crate) fn open_log(log: &Path) -> Result<File> {
    if let Some(parent) = log.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(BuildRootError::io(format!("creating {}", parent.display())))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(BuildRootError::io(format!("opening log {}", log.display())))
}

/// Appends one line written by this crate (not by the command) to the log.
pub(crate) fn log_line(log: &Path, line: &str) -> Result<()> {
    let mut file = open_log(log)?;
    writeln!(file, "build-root: {line}")
        .map_err(BuildRootError::io(format!("writing log {}", log.display())))
}

/// Runs `command` in its own process group with stdout and stderr appended to `log`, killing the
/// whole group when `limit` passes.
pub(crate) fn run_bounded(command: &mut Command, log: &Path, limit: Duration) -> Result<Ended> {
    run_cancellable(command, log, limit, &Cancel::new())
}

/// Runs `command` in its own process group with stdout and stderr appended to `log`, killing the
/// whole group when `limit` passes or `cancel` is requested (and not starting it at all when it
/// already was). Every command of a build runs through here; it is public so that other executors
/// (and tests standing in for the real one) stop their processes exactly the same way.
pub fn run_cancellable(
    command: &mut Command,
    log: &Path,
    limit: Duration,
    cancel: &Cancel,
) -> Result<Ended> {
    if cancel.is_cancelled() {
        return Ok(Ended::Cancelled);
    }
    let stdout = open_log(log)?;
    let stderr = stdout.try_clone().map_err(BuildRootError::io(format!(
        "duplicating log {}",
        log.display()
    )))?;
    let description = format!("{:?}", command.get_program());
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(BuildRootError::io(format!("starting {description}")))?;
    let deadline = Instant::now() + limit;
    let pid = child.id();
    // The exit is noticed the moment it happens (a thread blocked in wait), not at the next poll:
    // a build runs several commands, and polling cost up to a poll interval after each one.
    let (exited, exit) = std::sync::mpsc::channel();
    let reaper = std::thread::spawn(move || {
        let status = child.wait();
        let _ = exited.send(());
        status
    });
    let reap = |reaper: std::thread::JoinHandle<std::io::Result<ExitStatus>>| {
        reaper
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the reaper thread panicked")))
            .map_err(BuildRootError::io(format!("waiting for {description}")))
    };
    let ended = loop {
        let now = Instant::now();
        if now >= deadline {
            break Ended::TimedOut;
        }
        match exit.recv_timeout(CANCEL_LATENCY.min(deadline - now)) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Ok(Ended::Exited(reap(reaper)?));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if cancel.is_cancelled() {
            break Ended::Cancelled;
        }
    };
    let raw = i32::try_from(pid).map(Pid::from_raw);
    if raw.is_err() || raw.is_ok_and(|group| killpg(group, Signal::SIGKILL).is_err()) {
        // The group is gone or unknown; killing the leader still triggers --kill-child. The
        // reaper has not collected it (we are here because it had not exited), so the pid is
        // still this child's.
        if let Ok(leader) = raw {
            let _ = nix::sys::signal::kill(leader, Signal::SIGKILL);
        }
    }
    reap(reaper)?;
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_goes_to_the_log_and_status_is_returned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("nested/run.log");
        let ended = run_bounded(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            &log,
            Duration::from_secs(30),
        )
        .expect("runs");
        assert!(matches!(ended, Ended::Exited(status) if status.code() == Some(3)));
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(text.contains("out\n") && text.contains("err\n"), "{text}");
    }

    #[test]
    fn the_whole_group_is_killed_at_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("run.log");
        let marker = dir.path().join("survivor");
        // The background child would create the marker after 2 s if it outlived the kill.
        let script = format!("(sleep 2; touch {}) & sleep 60", marker.display());
        let started = Instant::now();
        let ended = run_bounded(
            Command::new("sh").args(["-c", &script]),
            &log,
            Duration::from_millis(300),
        )
        .expect("runs");
        assert_eq!(ended, Ended::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_secs(3));
        assert!(!marker.exists(), "a process of the killed group survived");
    }

    #[test]
    fn cancelling_kills_the_whole_group_and_a_cancelled_command_never_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("run.log");
        let marker = dir.path().join("survivor");
        let script = format!("(sleep 2; touch {}) & sleep 60", marker.display());
        let cancel = Cancel::new();
        let canceller = {
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                cancel.cancel();
            })
        };
        let started = Instant::now();
        let ended = run_cancellable(
            Command::new("sh").args(["-c", &script]),
            &log,
            Duration::from_secs(60),
            &cancel,
        )
        .expect("runs");
        canceller.join().expect("canceller");
        assert_eq!(ended, Ended::Cancelled);
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            !marker.exists(),
            "a process of the cancelled group survived"
        );

        let never = dir.path().join("never");
        let ended = run_cancellable(
            Command::new("touch").arg(&never),
            &log,
            Duration::from_secs(60),
            &cancel,
        )
        .expect("runs");
        assert_eq!(ended, Ended::Cancelled);
        assert!(!never.exists(), "a command started after the cancellation");
    }
}
