//! The machine the builder acts on: a filesystem root plus a way to run commands in it.
//!
//! In production both are the build root the builder was started in (`/` and plain process
//! spawning). Tests point the same logic at an unpacked root on the host, running commands with
//! `chroot`, so the header chain installs real packages without touching the host. Every path the
//! pipeline hands to a command is a *guest* path (as seen inside the root); [`System::host_path`]
//! maps it to where this process can read or write it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

/// One command line: a program and its arguments, plus extra environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl CommandLine {
    pub fn new<I, S>(program: &str, args: I) -> CommandLine
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        CommandLine {
            program: program.to_owned(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> CommandLine {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, value) in &self.env {
            write!(f, "{key}={value} ")?;
        }
        f.write_str(&self.program)?;
        for arg in &self.args {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

/// What a finished command left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit code, or None when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The last few lines of stderr (or stdout when stderr is empty): enough to say why a step
    /// failed in a one-line summary without flooding the final error.
    pub fn tail(&self, lines: usize) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        all[all.len().saturating_sub(lines)..].join(" | ")
    }

    /// `exit code N: <tail>` for error messages.
    pub fn describe_failure(&self) -> String {
        let status = match self.code {
            Some(code) => format!("exit code {code}"),
            None => "killed by a signal".to_owned(),
        };
        let tail = self.tail(3);
        if tail.is_empty() {
            status
        } else {
            format!("{status}: {tail}")
        }
    }
}

#[derive(Debug, Error)]
pub enum RunError {
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs commands. Behind a trait so the header chain can be driven by tests that need to
/// observe or redirect what is executed.
pub trait CommandRunner: fmt::Debug + Send + Sync {
    fn run(&self, command: &CommandLine) -> Result<CommandOutput, RunError>;
}

/// Spawns commands directly: the builder already runs inside the build root.
#[derive(Debug, Default, Clone)]
pub struct DirectRunner;

/// Runs every command under `chroot <root>`: the same build-root semantics driven from outside.
#[derive(Debug, Clone)]
pub struct ChrootRunner {
    root: PathBuf,
}

impl ChrootRunner {
    pub fn new(root: impl Into<PathBuf>) -> ChrootRunner {
        ChrootRunner { root: root.into() }
    }
}

fn spawn(mut command: Command, line: &CommandLine) -> Result<CommandOutput, RunError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in &line.env {
        command.env(key, value);
    }
    tracing::debug!(command = %line, "running");
    let output = command.output().map_err(|source| RunError::Spawn {
        command: line.to_string(),
        source,
    })?;
    let result = CommandOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    tracing::debug!(command = %line, code = ?result.code, "finished");
    Ok(result)
}

impl CommandRunner for DirectRunner {
    fn run(&self, command: &CommandLine) -> Result<CommandOutput, RunError> {
        let mut process = Command::new(&command.program);
        process.args(&command.args);
        spawn(process, command)
    }
}

impl CommandRunner for ChrootRunner {
    fn run(&self, command: &CommandLine) -> Result<CommandOutput, RunError> {
        let mut process = Command::new("chroot");
        process
            .arg(&self.root)
            .arg(&command.program)
            .args(&command.args)
            // A chroot has none of the host's PATH guarantees; give apt/dpkg/make the usual one.
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        spawn(process, command)
    }
}

/// The root the builder works in and how to run commands there.
#[derive(Debug)]
pub struct System {
    root: PathBuf,
    runner: Box<dyn CommandRunner>,
}

/// A scratch directory known under both of its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchDir {
    /// As commands inside the root see it.
    pub guest: PathBuf,
    /// As this process sees it.
    pub host: PathBuf,
}

impl System {
    /// The builder's own root: `/`, commands spawned directly.
    pub fn local() -> System {
        System::new("/", Box::new(DirectRunner))
    }

    pub fn new(root: impl Into<PathBuf>, runner: Box<dyn CommandRunner>) -> System {
        System {
            root: root.into(),
            runner,
        }
    }

    /// A root on this host whose commands run under `chroot`.
    pub fn chroot(root: impl Into<PathBuf>) -> System {
        let root = root.into();
        System::new(root.clone(), Box::new(ChrootRunner::new(root)))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn run(&self, command: &CommandLine) -> Result<CommandOutput, RunError> {
        self.runner.run(command)
    }

    /// Where a guest path lives for this process. Guest paths are absolute; anything else is
    /// taken relative to the root as well.
    pub fn host_path(&self, guest: &Path) -> PathBuf {
        let relative = guest.strip_prefix("/").unwrap_or(guest);
        if relative.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(relative)
        }
    }

    /// Follows symlinks of a guest path the way the root would (absolute link targets are
    /// inside the root, not on the host), returning the final guest path if it exists.
    pub fn resolve(&self, guest: &Path) -> Option<PathBuf> {
        let mut current = guest.to_path_buf();
        // Bounded: a symlink loop ends the search instead of the process.
        for _ in 0..16 {
            let host = self.host_path(&current);
            match std::fs::symlink_metadata(&host) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    let target = std::fs::read_link(&host).ok()?;
                    current = if target.is_absolute() {
                        target
                    } else {
                        current.parent()?.join(target)
                    };
                }
                Ok(_) => return Some(current),
                Err(_) => return None,
            }
        }
        None
    }

    /// Creates a fresh, uniquely named scratch directory under the root's `/tmp`.
    pub fn scratch_dir(&self, label: &str) -> std::io::Result<ScratchDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let guest = PathBuf::from(format!(
            "/tmp/driver-builder-{label}-{}-{n}",
            std::process::id()
        ));
        let host = self.host_path(&guest);
        if host.exists() {
            std::fs::remove_dir_all(&host)?;
        }
        std::fs::create_dir_all(&host)?;
        Ok(ScratchDir { guest, host })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_stay_under_the_root() {
        let system = System::new("/srv/root", Box::new(DirectRunner));
        assert_eq!(
            system.host_path(Path::new("/usr/src/x")),
            PathBuf::from("/srv/root/usr/src/x")
        );
        assert_eq!(system.host_path(Path::new("/")), PathBuf::from("/srv/root"));
        let local = System::local();
        assert_eq!(
            local.host_path(Path::new("/tmp/a")),
            PathBuf::from("/tmp/a")
        );
    }

    #[test]
    fn resolve_follows_absolute_links_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/src/linux-headers-1.2.3")).expect("mkdir");
        std::fs::create_dir_all(root.join("lib/modules/1.2.3")).expect("mkdir");
        std::os::unix::fs::symlink(
            "/usr/src/linux-headers-1.2.3",
            root.join("lib/modules/1.2.3/build"),
        )
        .expect("symlink");
        std::os::unix::fs::symlink("loop", root.join("loop")).expect("symlink");
        let system = System::new(root, Box::new(DirectRunner));
        assert_eq!(
            system.resolve(Path::new("/lib/modules/1.2.3/build")),
            Some(PathBuf::from("/usr/src/linux-headers-1.2.3"))
        );
        assert_eq!(system.resolve(Path::new("/loop")), None);
        assert_eq!(system.resolve(Path::new("/missing")), None);
    }

    #[test]
    fn failures_are_summarised_from_stderr() {
        let output = CommandOutput {
            code: Some(100),
            stdout: "Reading package lists...\n".into(),
            stderr: "\nE: Unable to locate package linux-headers-9.9.9\n".into(),
        };
        assert_eq!(
            output.describe_failure(),
            "exit code 100: E: Unable to locate package linux-headers-9.9.9"
        );
        let output = DirectRunner
            .run(&CommandLine::new("sh", ["-c", "echo out; exit 3"]))
            .expect("sh runs");
        assert_eq!(output.code, Some(3));
        assert_eq!(output.describe_failure(), "exit code 3: out");
    }
}
