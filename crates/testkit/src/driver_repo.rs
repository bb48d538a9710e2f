//! The sample driver as a git repository, the way the build-service sees a driver's source: a
//! repository whose tags are driver versions, each naming one commit.
//!
//! [`SampleDriverRepo::create`] commits `driver/example-driver` of this workspace (at the
//! repository's root, or under a subdirectory with [`SampleDriverRepo::create_in`]); tests then tag
//! versions (lightweight or annotated), make further commits, move tags and read which commit each
//! tag names. Git runs with a fixed author and committer, no system or global configuration and
//! `HOME` inside the repository's own `.git`, so it works on a fresh machine without a git identity
//! and never reads or writes the user's configuration.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

/// Author and committer of every commit and annotated tag made here.
pub const IDENTITY_NAME: &str = "kdriver tests";
/// Their e-mail address.
pub const IDENTITY_EMAIL: &str = "tests@kdriver.invalid";
/// Commit and tag date (fixed, so the same tree and history give the same commit ids).
const DATE: &str = "2026-01-01T00:00:00+00:00";

/// A git repository holding the sample driver.
#[derive(Debug, Clone)]
pub struct SampleDriverRepo {
    dir: PathBuf,
    subdir: String,
}

impl SampleDriverRepo {
    /// Makes a repository at `dir` (created if missing, must not be a repository yet) with the
    /// sample driver's files at its root, committed once on `main`. No tag yet.
    pub fn create(dir: &Path) -> Result<Self> {
        Self::create_in(dir, "")
    }

    /// Like [`SampleDriverRepo::create`], with the driver's files under `subdir` (empty: the root).
    pub fn create_in(dir: &Path, subdir: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        ensure!(
            !dir.join(".git").exists(),
            "{} is a git repository already",
            dir.display()
        );
        let repo = Self {
            dir: dir.to_path_buf(),
            subdir: subdir.trim_matches('/').to_owned(),
        };
        repo.git(["init", "--quiet", "--initial-branch=main"])?;
        repo.copy_driver_files()?;
        repo.commit_all("example-driver")?;
        Ok(repo)
    }

    /// Makes a repository at `dir` whose first commit carries every tag of `tags` (lightweight).
    pub fn create_tagged(dir: &Path, tags: &[&str]) -> Result<Self> {
        let repo = Self::create(dir)?;
        let head = repo.head()?;
        for tag in tags {
            repo.tag(tag, &head)?;
        }
        Ok(repo)
    }

    /// Opens the repository at `dir` if there is one, else creates it (driver files under
    /// `subdir`); then makes its tree equal to the workspace's `driver/example-driver` (one new
    /// commit when anything changed) and points every tag of `tags` at the head. For a long-lived
    /// sample repository (`cargo xtask serve`): a driver edit becomes a new commit, and the tags
    /// follow it.
    pub fn refresh(dir: &Path, subdir: &str, tags: &[&str]) -> Result<Self> {
        let repo = if dir.join(".git").is_dir() {
            Self {
                dir: dir.to_path_buf(),
                subdir: subdir.trim_matches('/').to_owned(),
            }
        } else {
            Self::create_in(dir, subdir)?
        };
        let target = repo.driver_dir();
        if target.exists() && target != repo.dir {
            std::fs::remove_dir_all(&target)
                .with_context(|| format!("removing {}", target.display()))?;
        } else if target == repo.dir {
            for entry in std::fs::read_dir(&repo.dir)? {
                let entry = entry?;
                if entry.file_name() == ".git" {
                    continue;
                }
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    std::fs::remove_dir_all(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
            }
        }
        repo.copy_driver_files()?;
        let changed = !repo
            .git_output(["status", "--porcelain", "--untracked-files=all"])?
            .trim()
            .is_empty();
        if changed {
            repo.commit_all("example-driver: as in the workspace")?;
        }
        let head = repo.head()?;
        for tag in tags {
            if repo.tag_commit(tag).ok().as_deref() != Some(head.as_str()) {
                repo.git(["tag", "--force", tag, &head])?;
            }
        }
        Ok(repo)
    }

    /// The repository's directory (what `--driver-repo` takes).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where the driver's files are inside the repository (what `--driver-subdir` takes; empty
    /// for the root).
    pub fn subdir(&self) -> &str {
        &self.subdir
    }

    /// The directory of the driver's files in the work tree.
    pub fn driver_dir(&self) -> PathBuf {
        if self.subdir.is_empty() {
            self.dir.clone()
        } else {
            self.dir.join(&self.subdir)
        }
    }

    /// The commit `main` is at.
    pub fn head(&self) -> Result<String> {
        self.rev_parse("HEAD^{commit}")
    }

    /// Writes `contents` to `file` (relative to the driver's directory, parents created) and
    /// commits it on `main`. Returns the new commit.
    pub fn commit_file(&self, file: &str, contents: &[u8], message: &str) -> Result<String> {
        ensure!(
            !file.starts_with('/') && !file.split('/').any(|part| part == ".."),
            "{file} must be a relative path inside the driver"
        );
        let path = self.driver_dir().join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        self.commit_all(message)?;
        self.head()
    }

    /// Tags `commit` as `tag` (a lightweight tag: the ref names the commit itself).
    pub fn tag(&self, tag: &str, commit: &str) -> Result<()> {
        self.git(["tag", tag, commit])
    }

    /// Tags `commit` as `tag` with an annotated tag object (the ref names the tag object, which
    /// names the commit). Returns the tag object's id.
    pub fn tag_annotated(&self, tag: &str, commit: &str, message: &str) -> Result<String> {
        self.git(["tag", "--annotate", "--message", message, tag, commit])?;
        self.rev_parse(&format!("refs/tags/{tag}"))
    }

    /// Points the (lightweight) tag `tag` at `commit`, whether or not it exists.
    pub fn move_tag(&self, tag: &str, commit: &str) -> Result<()> {
        self.git(["tag", "--force", tag, commit])
    }

    /// Removes the tag `tag`.
    pub fn delete_tag(&self, tag: &str) -> Result<()> {
        self.git(["tag", "--delete", tag])
    }

    /// The commit `tag` names (peeled: an annotated tag's commit, never the tag object).
    pub fn tag_commit(&self, tag: &str) -> Result<String> {
        self.rev_parse(&format!("refs/tags/{tag}^{{commit}}"))
    }

    /// Every tag and the commit it names (peeled).
    pub fn tags(&self) -> Result<BTreeMap<String, String>> {
        let listed = self.git_output(["tag", "--list"])?;
        listed
            .lines()
            .filter(|line| !line.is_empty())
            .map(|tag| Ok((tag.to_owned(), self.tag_commit(tag)?)))
            .collect()
    }

    /// The content of `file` (relative to the driver's directory) at `commit`.
    pub fn file_at(&self, commit: &str, file: &str) -> Result<Vec<u8>> {
        let path = if self.subdir.is_empty() {
            file.to_owned()
        } else {
            format!("{}/{file}", self.subdir)
        };
        let output = self
            .command()
            .args(["show", &format!("{commit}:{path}")])
            .output()
            .context("running git show")?;
        ensure!(
            output.status.success(),
            "git show {commit}:{path}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(output.stdout)
    }

    fn rev_parse(&self, what: &str) -> Result<String> {
        let out = self.git_output(["rev-parse", "--verify", "--quiet", what])?;
        let id = out.trim().to_owned();
        ensure!(!id.is_empty(), "{what} names nothing");
        Ok(id)
    }

    fn copy_driver_files(&self) -> Result<()> {
        let source = crate::workspace_root()
            .join("driver")
            .join("example-driver");
        copy_tree(&source, &self.driver_dir())
    }

    fn commit_all(&self, message: &str) -> Result<()> {
        self.git(["add", "--all"])?;
        self.git(["commit", "--quiet", "--allow-empty", "--message", message])
    }

    /// git in this repository, with a fixed identity and no configuration but the repository's.
    fn command(&self) -> Command {
        let mut command = Command::new("git");
        command
            .arg("-C")
            .arg(&self.dir)
            .args([
                "-c",
                "commit.gpgsign=false",
                "-c",
                "tag.gpgsign=false",
                "-c",
                "core.autocrlf=false",
            ])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("HOME", self.dir.join(".git"))
            .env("GIT_AUTHOR_NAME", IDENTITY_NAME)
            .env("GIT_AUTHOR_EMAIL", IDENTITY_EMAIL)
            .env("GIT_AUTHOR_DATE", DATE)
            .env("GIT_COMMITTER_NAME", IDENTITY_NAME)
            .env("GIT_COMMITTER_EMAIL", IDENTITY_EMAIL)
            .env("GIT_COMMITTER_DATE", DATE)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE");
        command
    }

    fn git<I, S>(&self, args: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.git_output(args).map(drop)
    }

    fn git_output<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let shown: Vec<String> = args
            .iter()
            .map(|arg| arg.as_ref().to_string_lossy().into_owned())
            .collect();
        let output = self
            .command()
            .args(&args)
            .output()
            .with_context(|| format!("running git {} (is git installed?)", shown.join(" ")))?;
        if !output.status.success() {
            bail!(
                "git {} in {} failed ({}): {}",
                shown.join(" "),
                self.dir.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        String::from_utf8(output.stdout).context("git printed something that is not UTF-8")
    }
}

/// Copies the regular files and directories of `from` into `to` (created), keeping permissions.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut entries: Vec<_> = std::fs::read_dir(from)
        .with_context(|| format!("reading {}", from.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).with_context(|| {
                format!("copying {} to {}", entry.path().display(), target.display())
            })?;
        }
    }
    Ok(())
}
