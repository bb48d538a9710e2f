//! Driver sources: a driver version is a tag of the driver's git repository, and a build is made
//! from exactly the commit that tag named when the build was reserved.
//!
//! - [`SourceRepository`] lists a repository's tags with the commit each names (annotated tags
//!   peeled to their commit, never the tag object) and gives the repository's URI for provenance.
//!   Two implementations: [`GitRepository`] (a local path or a URL, read through a bare mirror
//!   under the service's state directory; the local backend also exports `git archive <commit>`
//!   from it) and the GitHub API (`crate::github`'s `GitHubTags`, through the backend's own API
//!   client).
//! - [`SourceResolver`] answers "which commit is this version?" for the coordinator from a cached
//!   tag map. The map is listed again when a version is missing from it or the map is older than
//!   [`SourceSettings::max_age`], but never more than once per [`SourceSettings::refresh_interval`]
//!   (concurrent lookups share one listing), so a stream of unknown versions cannot hammer git or
//!   the API.
//!
//! The resolved commit is stored with the build and never resolved again for it: a tag moved later
//! changes what new builds get, never what an existing build is made from.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kernel_id::{DriverVersion, SourceCommit};
use tokio::time::Instant;

/// How often the tag map may be listed again, unless configured.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// How long a listed tag map answers without being listed again, unless configured.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);
/// Longest a git command may run (clone, fetch, archive), unless configured.
pub const DEFAULT_GIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a repository's tags (or a commit's tree) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// A repository of driver sources whose tags are driver versions.
#[async_trait::async_trait]
pub trait SourceRepository: Send + Sync + 'static {
    /// The repository's URI: the configured URL, `file://<absolute path>` for a local path, or
    /// `https://github.com/{owner}/{repo}`.
    fn uri(&self) -> String;

    /// The URI in SLSA's form for a git repository: `git+<uri>`.
    fn slsa_uri(&self) -> String {
        format!("git+{}", self.uri())
    }

    /// Every tag (name without `refs/tags/`) with the commit it names, read now. Annotated tags
    /// are peeled to their commit; a tag that names no commit (a tree, a blob) is left out.
    async fn list_tags(&self) -> Result<BTreeMap<String, SourceCommit>, SourceError>;
}

/// What a driver version resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The version is a tag naming this commit.
    Resolved(SourceCommit),
    /// The repository has no such tag.
    UnknownVersion,
    /// The repository could not be read (why); nothing is known about the version.
    Unavailable(String),
}

/// Timing of a [`SourceResolver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceSettings {
    /// At most one listing of the tags per this interval.
    pub refresh_interval: Duration,
    /// A listed map older than this is listed again before it answers (so a moved tag is seen).
    pub max_age: Duration,
}

impl Default for SourceSettings {
    fn default() -> Self {
        Self {
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

#[derive(Debug, Default)]
struct TagMap {
    /// The last listing that succeeded.
    tags: Option<BTreeMap<String, SourceCommit>>,
    /// When it was listed.
    listed_at: Option<Instant>,
    /// When a listing was last attempted, successful or not.
    attempted_at: Option<Instant>,
    /// Why the last attempt failed (cleared by a success).
    failure: Option<String>,
}

impl TagMap {
    fn fresh_commit(&self, version: &str, now: Instant, max_age: Duration) -> Option<SourceCommit> {
        let listed_at = self.listed_at?;
        if now.saturating_duration_since(listed_at) >= max_age {
            return None;
        }
        self.tags.as_ref()?.get(version).cloned()
    }

    fn answer(&self, version: &str, now: Instant, max_age: Duration) -> Resolution {
        if let Some(commit) = self.fresh_commit(version, now, max_age) {
            return Resolution::Resolved(commit);
        }
        if let Some(failure) = &self.failure {
            return Resolution::Unavailable(failure.clone());
        }
        match &self.tags {
            Some(tags) => tags
                .get(version)
                .cloned()
                .map_or(Resolution::UnknownVersion, Resolution::Resolved),
            None => Resolution::Unavailable("the repository's tags were not listed yet".to_owned()),
        }
    }
}

/// Resolves driver versions to commits through a cached tag map (see the module documentation).
pub struct SourceResolver {
    repository: Arc<dyn SourceRepository>,
    settings: SourceSettings,
    map: Mutex<TagMap>,
    /// Held while a listing runs, so concurrent misses share it.
    listing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for SourceResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceResolver")
            .field("repository", &self.repository.uri())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SourceResolver {
    /// A resolver over `repository`; nothing is listed until the first lookup.
    pub fn new(repository: Arc<dyn SourceRepository>, settings: SourceSettings) -> Self {
        Self {
            repository,
            settings,
            map: Mutex::new(TagMap::default()),
            listing: tokio::sync::Mutex::new(()),
        }
    }

    /// The repository resolved against.
    pub fn repository(&self) -> &Arc<dyn SourceRepository> {
        &self.repository
    }

    fn map(&self) -> std::sync::MutexGuard<'_, TagMap> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The commit `version`'s tag names. A fresh map that names it answers at once; otherwise the
    /// tags are listed again, unless a listing was attempted less than the refresh interval ago
    /// (then the map as it is answers: a version it lacks is unknown, or unavailable if that
    /// listing failed).
    pub async fn resolve(&self, version: &DriverVersion) -> Resolution {
        let key = version.as_str();
        let max_age = self.settings.max_age;
        if let Some(commit) = self.map().fresh_commit(key, Instant::now(), max_age) {
            return Resolution::Resolved(commit);
        }
        let _turn = self.listing.lock().await;
        let due = {
            let map = self.map();
            let now = Instant::now();
            // Listed by whoever held the turn before: answer from that.
            if let Some(commit) = map.fresh_commit(key, now, max_age) {
                return Resolution::Resolved(commit);
            }
            map.attempted_at.is_none_or(|at| {
                now.saturating_duration_since(at) >= self.settings.refresh_interval
            })
        };
        if due {
            let listed = self.repository.list_tags().await;
            let mut map = self.map();
            let now = Instant::now();
            map.attempted_at = Some(now);
            match listed {
                Ok(tags) => {
                    tracing::debug!(repository = %self.repository.uri(), tags = tags.len(), "listed the driver repository's tags");
                    map.tags = Some(tags);
                    map.listed_at = Some(now);
                    map.failure = None;
                }
                Err(error) => {
                    tracing::warn!(repository = %self.repository.uri(), %error, "could not list the driver repository's tags");
                    map.failure = Some(format!(
                        "the driver repository {} is unavailable: {error}",
                        self.repository.uri()
                    ));
                }
            }
        }
        self.map().answer(key, Instant::now(), max_age)
    }
}

/// A git repository (a local path or a URL) read through a bare mirror: cloned once with
/// `git clone --mirror`, its tags fetched again on every listing (`--prune --prune-tags`, so a
/// moved or deleted tag is seen), listed with `git for-each-ref` (annotated tags peeled). Commits
/// stay in the mirror after their tag moved (automatic gc is off), so a build reserved earlier is
/// still exported from its own commit. Git runs without a shell, without a terminal prompt and
/// within a time limit; one clone or fetch at a time per process.
#[derive(Clone)]
pub struct GitRepository {
    inner: Arc<GitInner>,
}

struct GitInner {
    /// What git clones and fetches from: an absolute path or a URL.
    remote: String,
    uri: String,
    mirror: PathBuf,
    timeout: Duration,
    /// Serializes clone and fetch in this process.
    updating: Mutex<()>,
    /// Whether the mirror's `origin` was checked against `remote` in this process.
    origin_checked: AtomicBool,
    refreshes: AtomicU64,
}

impl std::fmt::Debug for GitRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitRepository")
            .field("uri", &self.inner.uri)
            .field("mirror", &self.inner.mirror)
            .finish_non_exhaustive()
    }
}

impl GitRepository {
    /// The repository at `location` (a URL such as `https://...`, `ssh://...`, `file://...`, an
    /// scp-like `user@host:path`, or a local directory, made absolute), mirrored at `mirror`
    /// (created on first use). A local directory must exist.
    pub fn new(location: &str, mirror: PathBuf) -> Result<Self, SourceError> {
        let (remote, uri) = locate(location)?;
        Ok(Self {
            inner: Arc::new(GitInner {
                remote,
                uri,
                mirror,
                timeout: DEFAULT_GIT_TIMEOUT,
                updating: Mutex::new(()),
                origin_checked: AtomicBool::new(false),
                refreshes: AtomicU64::new(0),
            }),
        })
    }

    /// Sets the time limit of each git command (default [`DEFAULT_GIT_TIMEOUT`]); only before the
    /// repository is first cloned or shared.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.timeout = timeout;
        }
        self
    }

    /// Where the bare mirror is.
    pub fn mirror(&self) -> &Path {
        &self.inner.mirror
    }

    /// How many times this process cloned or fetched the repository.
    pub fn refreshes(&self) -> u64 {
        self.inner.refreshes.load(Ordering::Relaxed)
    }

    /// Lists the tags (after fetching them), blocking.
    pub fn list_tags_blocking(&self) -> Result<BTreeMap<String, SourceCommit>, SourceError> {
        self.inner.update()?;
        self.inner.list()
    }

    /// Writes the tree of `commit` (only `subdir` of it when not empty, as the root) into `dest`,
    /// which must not exist yet: `git archive <commit>[:<subdir>]` from the mirror, unpacked.
    /// Blocking. A commit the mirror lacks (a fresh state directory) is fetched first.
    pub fn export_blocking(
        &self,
        commit: &SourceCommit,
        subdir: &Path,
        dest: &Path,
    ) -> Result<(), SourceError> {
        self.inner.export(commit, subdir, dest)
    }
}

#[async_trait::async_trait]
impl SourceRepository for GitRepository {
    fn uri(&self) -> String {
        self.inner.uri.clone()
    }

    async fn list_tags(&self) -> Result<BTreeMap<String, SourceCommit>, SourceError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.list_tags_blocking())
            .await
            .map_err(|error| SourceError(format!("listing tags: {error}")))?
    }
}

/// Checks a `--driver-subdir`: relative, without `..`; empty for the repository's root.
pub fn check_subdir(subdir: &Path) -> Result<(), SourceError> {
    let bad = subdir
        .components()
        .any(|component| !matches!(component, Component::Normal(_) | Component::CurDir));
    if bad {
        return Err(SourceError(format!(
            "driver subdirectory {}: must be a relative path inside the repository, without '..'",
            subdir.display()
        )));
    }
    Ok(())
}

/// `(what git fetches from, the URI for provenance)` of a configured location.
fn locate(location: &str) -> Result<(String, String), SourceError> {
    let location = location.trim();
    if location.is_empty() {
        return Err(SourceError(
            "the driver repository is not configured".to_owned(),
        ));
    }
    if location.starts_with('-') {
        return Err(SourceError(format!(
            "driver repository '{location}': must not start with '-'"
        )));
    }
    if let Ok(url) = url::Url::parse(location)
        && url.scheme().len() > 1
    {
        return Ok((location.to_owned(), location.to_owned()));
    }
    let path = Path::new(location);
    // scp-like syntax (`git@host:org/repo.git`): a ':' before any '/', and no such local path.
    let scp_like = location
        .find(':')
        .is_some_and(|colon| !location[..colon].contains('/'));
    if scp_like && !path.exists() {
        return Ok((location.to_owned(), location.to_owned()));
    }
    let absolute = std::fs::canonicalize(path).map_err(|error| {
        SourceError(format!(
            "driver repository {location}: not a URL, and not a readable directory ({error})"
        ))
    })?;
    let uri = url::Url::from_file_path(&absolute)
        .map_err(|()| {
            SourceError(format!(
                "driver repository {}: no file URI",
                absolute.display()
            ))
        })?
        .to_string();
    Ok((absolute.to_string_lossy().into_owned(), uri))
}

impl GitInner {
    fn git(&self) -> Command {
        let mut command = Command::new("git");
        command
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "")
            .env("SSH_ASKPASS", "")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .stdin(Stdio::null());
        command
    }

    fn in_mirror(&self) -> Command {
        let mut command = self.git();
        command.arg("--git-dir").arg(&self.mirror);
        command
    }

    /// Clones the mirror if it is missing, else fetches the tags.
    fn update(&self) -> Result<(), SourceError> {
        let _one = self
            .updating
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        if !self.mirror.join("HEAD").is_file() {
            return self.clone_mirror();
        }
        if !self.origin_checked.load(Ordering::Relaxed) {
            let mut get = self.in_mirror();
            get.args(["config", "--get", "remote.origin.url"]);
            let current = run(&mut get, self.timeout).ok();
            if current
                .as_deref()
                .map(|out| String::from_utf8_lossy(out).trim().to_owned())
                != Some(self.remote.clone())
            {
                let mut set = self.in_mirror();
                set.args(["remote", "set-url", "origin"]).arg(&self.remote);
                run(&mut set, self.timeout)?;
            }
            self.origin_checked.store(true, Ordering::Relaxed);
        }
        let mut fetch = self.in_mirror();
        fetch.args([
            "fetch",
            "--quiet",
            "--prune",
            "--prune-tags",
            "--no-write-fetch-head",
            "origin",
            "+refs/tags/*:refs/tags/*",
        ]);
        run(&mut fetch, self.timeout)
            .map(drop)
            .map_err(|error| SourceError(format!("fetching the tags of {}: {error}", self.uri)))
    }

    fn clone_mirror(&self) -> Result<(), SourceError> {
        let parent = self.mirror.parent().ok_or_else(|| {
            SourceError(format!("mirror {} has no parent", self.mirror.display()))
        })?;
        std::fs::create_dir_all(parent)
            .map_err(|error| SourceError(format!("creating {}: {error}", parent.display())))?;
        let mut staging = self.mirror.clone().into_os_string();
        staging.push(format!(".tmp-{}", uuid::Uuid::new_v4()));
        let staging = PathBuf::from(staging);
        let mut clone = self.git();
        clone
            .args(["clone", "--mirror", "--quiet", "--"])
            .arg(&self.remote)
            .arg(&staging);
        let cloned = run(&mut clone, self.timeout).and_then(|_| {
            // Commits a moved tag no longer names stay: builds reserved earlier export them.
            let mut config = self.git();
            config
                .arg("--git-dir")
                .arg(&staging)
                .args(["config", "gc.auto", "0"]);
            run(&mut config, self.timeout).map(drop)
        });
        if let Err(error) = cloned {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(SourceError(format!("cloning {}: {error}", self.uri)));
        }
        match std::fs::rename(&staging, &self.mirror) {
            Ok(()) => {}
            // Another process over the same state directory made it first: use theirs.
            Err(_) if self.mirror.join("HEAD").is_file() => {
                let _ = std::fs::remove_dir_all(&staging);
            }
            Err(error) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(SourceError(format!(
                    "placing the mirror at {}: {error}",
                    self.mirror.display()
                )));
            }
        }
        self.origin_checked.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn list(&self) -> Result<BTreeMap<String, SourceCommit>, SourceError> {
        let mut list = self.in_mirror();
        list.args([
            "for-each-ref",
            "--format=%(refname) %(objecttype) %(objectname) %(*objecttype) %(*objectname)",
            "refs/tags/",
        ]);
        let out = run(&mut list, self.timeout)
            .map_err(|error| SourceError(format!("listing the tags of {}: {error}", self.uri)))?;
        Ok(parse_tag_listing(&String::from_utf8_lossy(&out)))
    }

    fn has_commit(&self, commit: &SourceCommit) -> bool {
        let mut check = self.in_mirror();
        check
            .args(["cat-file", "-e"])
            .arg(format!("{commit}^{{commit}}"));
        run(&mut check, self.timeout).is_ok()
    }

    fn export(&self, commit: &SourceCommit, subdir: &Path, dest: &Path) -> Result<(), SourceError> {
        check_subdir(subdir)?;
        if !self.mirror.join("HEAD").is_file() {
            self.update()?;
        }
        if !self.has_commit(commit) {
            // Not in the mirror (fresh state directory, or fetched by another name): fetch it by id.
            let _one = self
                .updating
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut fetch = self.in_mirror();
            fetch
                .args(["fetch", "--quiet", "--no-write-fetch-head", "origin"])
                .arg(commit.as_str());
            let _ = run(&mut fetch, self.timeout);
        }
        if !self.has_commit(commit) {
            return Err(SourceError(format!(
                "commit {commit} is not in {} (nor in its mirror {})",
                self.uri,
                self.mirror.display()
            )));
        }
        let subdir = subdir
            .to_string_lossy()
            .trim_matches('/')
            .trim_start_matches("./")
            .to_owned();
        let treeish = if subdir.is_empty() || subdir == "." {
            commit.to_string()
        } else {
            format!("{commit}:{subdir}")
        };
        let mut archive_path: OsString = dest.as_os_str().to_owned();
        archive_path.push(".tar");
        let archive_path = PathBuf::from(archive_path);
        let mut archive = self.in_mirror();
        archive
            .args(["archive", "--format=tar", "--output"])
            .arg(&archive_path)
            .arg(&treeish);
        let archived = run(&mut archive, self.timeout).map_err(|error| {
            SourceError(format!("git archive {treeish} from {}: {error}", self.uri))
        });
        let unpacked = archived.and_then(|_| unpack(&archive_path, dest));
        let _ = std::fs::remove_file(&archive_path);
        unpacked
    }
}

fn unpack(archive: &Path, dest: &Path) -> Result<(), SourceError> {
    let file = std::fs::File::open(archive)
        .map_err(|error| SourceError(format!("opening {}: {error}", archive.display())))?;
    std::fs::create_dir(dest)
        .map_err(|error| SourceError(format!("creating {}: {error}", dest.display())))?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    tar.set_preserve_permissions(true);
    tar.set_overwrite(false);
    tar.unpack(dest).map_err(|error| {
        SourceError(format!(
            "unpacking the source into {}: {error}",
            dest.display()
        ))
    })
}

/// Parses `for-each-ref --format='%(refname) %(objecttype) %(objectname) %(*objecttype)
/// %(*objectname)'`: a lightweight tag names its commit; an annotated tag's commit is its
/// dereferenced object. Tags naming anything else are left out.
fn parse_tag_listing(text: &str) -> BTreeMap<String, SourceCommit> {
    let mut tags = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let [refname, kind, id, peeled_kind, peeled_id] = fields[..] else {
            continue;
        };
        let Some(name) = refname.strip_prefix("refs/tags/") else {
            continue;
        };
        let commit = match (kind, peeled_kind) {
            ("commit", _) => id,
            ("tag", "commit") => peeled_id,
            _ => {
                tracing::debug!(
                    tag = name,
                    kind,
                    peeled_kind,
                    "tag names no commit; left out"
                );
                continue;
            }
        };
        match SourceCommit::parse(commit) {
            Ok(commit) => {
                tags.insert(name.to_owned(), commit);
            }
            Err(error) => tracing::warn!(tag = name, %error, "tag with an odd object id; left out"),
        }
    }
    tags
}

/// Runs `command` without a shell; its output once it exits 0 within `timeout`, else why not.
/// Output is read while it runs (no pipe can fill up), and a command past its time is killed.
fn run(command: &mut Command, timeout: Duration) -> Result<Vec<u8>, SourceError> {
    let program = format!("{:?}", command.get_program());
    let shown: Vec<String> = command
        .get_args()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let shown = format!("{} {}", program.trim_matches('"'), shown.join(" "));
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| SourceError(format!("starting `{shown}`: {error} (is git installed?)")))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SourceError(format!("waiting for `{shown}`: {error}")));
            }
        }
    };
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    let err = String::from_utf8_lossy(&err);
    let err: String = err.trim().chars().take(2000).collect();
    match status {
        None => Err(SourceError(format!(
            "`{shown}` did not finish within {timeout:?}"
        ))),
        Some(status) if status.success() => Ok(out),
        Some(status) => Err(SourceError(format!("`{shown}` failed ({status}): {err}"))),
    }
}

/// Tags held in memory, for the crate's unit tests of what sits above a repository.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct StaticTags(pub BTreeMap<String, SourceCommit>);

#[cfg(test)]
impl StaticTags {
    /// A repository whose tags are `tags` (name, commit id).
    pub(crate) fn of(tags: &[(&str, &str)]) -> Arc<Self> {
        Arc::new(Self(
            tags.iter()
                .map(|(name, id)| {
                    (
                        (*name).to_owned(),
                        SourceCommit::parse(id).expect("test commit id"),
                    )
                })
                .collect(),
        ))
    }
}

#[cfg(test)]
#[async_trait::async_trait]
impl SourceRepository for StaticTags {
    fn uri(&self) -> String {
        "file:///test/driver".to_owned()
    }

    async fn list_tags(&self) -> Result<BTreeMap<String, SourceCommit>, SourceError> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    const C1: &str = "1111111111111111111111111111111111111111";
    const C2: &str = "2222222222222222222222222222222222222222";

    fn commit(id: &str) -> SourceCommit {
        SourceCommit::parse(id).expect("commit")
    }

    fn version(raw: &str) -> DriverVersion {
        DriverVersion::parse(raw).expect("version")
    }

    /// Tags in memory; every listing is counted, and fails while `down` is set.
    #[derive(Default)]
    struct Fake {
        tags: Mutex<BTreeMap<String, SourceCommit>>,
        down: AtomicBool,
        listings: AtomicUsize,
        /// Each listing takes this long (so concurrent lookups overlap it).
        delay: Mutex<Duration>,
    }

    impl Fake {
        fn with(tags: &[(&str, &str)]) -> Arc<Self> {
            let fake = Self::default();
            *fake.tags.lock().unwrap() = tags
                .iter()
                .map(|(name, id)| ((*name).to_owned(), commit(id)))
                .collect();
            Arc::new(fake)
        }

        fn listings(&self) -> usize {
            self.listings.load(Ordering::SeqCst)
        }
    }

    #[async_trait::async_trait]
    impl SourceRepository for Fake {
        fn uri(&self) -> String {
            "https://example.invalid/driver".to_owned()
        }

        async fn list_tags(&self) -> Result<BTreeMap<String, SourceCommit>, SourceError> {
            self.listings.fetch_add(1, Ordering::SeqCst);
            let delay = *self.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            if self.down.load(Ordering::SeqCst) {
                return Err(SourceError("connection refused".to_owned()));
            }
            Ok(self.tags.lock().unwrap().clone())
        }
    }

    fn resolver(fake: &Arc<Fake>) -> SourceResolver {
        SourceResolver::new(
            Arc::clone(fake) as Arc<dyn SourceRepository>,
            SourceSettings {
                refresh_interval: Duration::from_secs(5),
                max_age: Duration::from_secs(60),
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_known_version_is_answered_from_the_map_until_it_ages() {
        let fake = Fake::with(&[("v0.1.2", C1)]);
        let resolver = resolver(&fake);
        assert_eq!(
            resolver.resolve(&version("v0.1.2")).await,
            Resolution::Resolved(commit(C1))
        );
        for _ in 0..10 {
            assert_eq!(
                resolver.resolve(&version("v0.1.2")).await,
                Resolution::Resolved(commit(C1))
            );
        }
        assert_eq!(fake.listings(), 1, "hits never list again");
        // The tag moves; the map answers the old commit until it is older than max_age.
        fake.tags
            .lock()
            .unwrap()
            .insert("v0.1.2".to_owned(), commit(C2));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            resolver.resolve(&version("v0.1.2")).await,
            Resolution::Resolved(commit(C1))
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(
            resolver.resolve(&version("v0.1.2")).await,
            Resolution::Resolved(commit(C2))
        );
        assert_eq!(fake.listings(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_unknown_versions_lists_once_per_interval() {
        let fake = Fake::with(&[("v0.1.2", C1)]);
        *fake.delay.lock().unwrap() = Duration::from_millis(200);
        let resolver = Arc::new(resolver(&fake));
        let lookups: Vec<_> = (0..50)
            .map(|n| {
                let resolver = Arc::clone(&resolver);
                tokio::spawn(async move { resolver.resolve(&version(&format!("v9.9.{n}"))).await })
            })
            .collect();
        for lookup in lookups {
            assert_eq!(lookup.await.unwrap(), Resolution::UnknownVersion);
        }
        assert_eq!(fake.listings(), 1, "50 concurrent misses share one listing");
        for n in 0..20 {
            tokio::time::advance(Duration::from_millis(100)).await;
            assert_eq!(
                resolver.resolve(&version(&format!("v8.0.{n}"))).await,
                Resolution::UnknownVersion
            );
        }
        assert_eq!(
            fake.listings(),
            1,
            "misses within the interval do not list again"
        );
        // A tag created meanwhile is found by the first miss after the interval.
        fake.tags
            .lock()
            .unwrap()
            .insert("v0.2.0".to_owned(), commit(C2));
        assert_eq!(
            resolver.resolve(&version("v0.2.0")).await,
            Resolution::UnknownVersion,
            "still within the interval"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            resolver.resolve(&version("v0.2.0")).await,
            Resolution::Resolved(commit(C2))
        );
        assert_eq!(fake.listings(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreadable_repository_is_unavailable_not_unknown() {
        let fake = Fake::with(&[("v0.1.2", C1)]);
        fake.down.store(true, Ordering::SeqCst);
        let resolver = resolver(&fake);
        let Resolution::Unavailable(reason) = resolver.resolve(&version("v0.1.2")).await else {
            panic!("a failed listing knows nothing");
        };
        assert!(reason.contains("connection refused"), "{reason}");
        assert!(
            reason.contains("https://example.invalid/driver"),
            "{reason}"
        );
        assert!(matches!(
            resolver.resolve(&version("v0.1.2")).await,
            Resolution::Unavailable(_)
        ));
        assert_eq!(
            fake.listings(),
            1,
            "a failing repository is not retried at once"
        );
        fake.down.store(false, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            resolver.resolve(&version("v0.1.2")).await,
            Resolution::Resolved(commit(C1))
        );

        // Fresh entries still answer while the repository is down; a miss is then unavailable,
        // and so is an entry once the map aged: an old answer may name a moved tag.
        fake.down.store(true, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(
            resolver.resolve(&version("v0.3.0")).await,
            Resolution::Unavailable(_)
        ));
        assert_eq!(
            resolver.resolve(&version("v0.1.2")).await,
            Resolution::Resolved(commit(C1))
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(
            resolver.resolve(&version("v0.1.2")).await,
            Resolution::Unavailable(_)
        ));
    }

    #[test]
    fn listings_peel_annotated_tags_and_skip_what_names_no_commit() {
        let listing = format!(
            "refs/tags/v0.1.2 commit {C1}  \n\
             refs/tags/v0.2.0 tag 3333333333333333333333333333333333333333 commit {C2}\n\
             refs/tags/tree-tag tree 4444444444444444444444444444444444444444  \n\
             refs/tags/nested tag 5555555555555555555555555555555555555555 tag 6666666666666666666666666666666666666666\n\
             refs/tags/odd commit XYZ  \n"
        );
        let tags = parse_tag_listing(&listing);
        assert_eq!(tags.len(), 2, "{tags:?}");
        assert_eq!(tags["v0.1.2"], commit(C1));
        assert_eq!(
            tags["v0.2.0"],
            commit(C2),
            "the commit, never the tag object"
        );
    }

    #[test]
    fn locations_are_urls_or_absolute_paths() {
        let (remote, uri) = locate("https://git.example/org/driver.git").unwrap();
        assert_eq!(
            (remote.as_str(), uri.as_str()),
            (
                "https://git.example/org/driver.git",
                "https://git.example/org/driver.git"
            )
        );
        let (_, uri) = locate("git@github.com:org/driver.git").unwrap();
        assert_eq!(uri, "git@github.com:org/driver.git");
        let dir = tempfile::tempdir().unwrap();
        let (remote, uri) = locate(&dir.path().to_string_lossy()).unwrap();
        let absolute = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(remote, absolute.to_string_lossy());
        assert_eq!(uri, format!("file://{}", absolute.display()));
        assert!(locate("/no/such/dir/anywhere").is_err());
        assert!(locate("").is_err());
        assert!(locate("--upload-pack=x").is_err());
    }

    #[test]
    fn subdirectories_stay_inside_the_repository() {
        assert!(check_subdir(Path::new("")).is_ok());
        assert!(check_subdir(Path::new("driver/example-driver")).is_ok());
        assert!(check_subdir(Path::new("../x")).is_err());
        assert!(check_subdir(Path::new("/abs")).is_err());
        assert!(check_subdir(Path::new("a/../../b")).is_err());
    }
}
