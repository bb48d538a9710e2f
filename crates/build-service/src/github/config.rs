//! Configuration of the GitHub backend: which repository and workflow, how to authenticate, where the
//! API lives (github.com or a GitHub Enterprise Server / simulator base URL), the release layout, and the
//! timing knobs of retries, run lookup and caches.
//!
//! The CLI builds a [`GitHubConfig`] and hands it to [`crate::github::GitHubBackend::new`], which validates
//! it (every refusal names the field and the rule).

use std::fmt;
use std::time::Duration;

use kernel_id::{DriverName, ReleaseLayout};

/// The public GitHub API.
pub const DEFAULT_API_BASE_URL: &str = "https://api.github.com";
/// The workflow the service dispatches (issue 6 defines its inputs and `run-name`).
pub const DEFAULT_WORKFLOW_FILE: &str = "driver-build.yml";
/// The branch the workflow is dispatched on.
pub const DEFAULT_GIT_REF: &str = "main";

/// Everything the GitHub backend needs. Construct with [`GitHubConfig::new`] and override fields.
///
/// CLI mapping suggested for the core: `--github-owner`, `--github-repo`, `--github-workflow`
/// (default `driver-build.yml`), `--github-ref` (default `main`), `--github-api-url` (default
/// `https://api.github.com`; GHES: `https://HOST/api/v3`), `--github-token-file` *or*
/// `--github-app-id` + `--github-app-key-file` + `--github-installation-id`, `--release-layout`,
/// `--driver-name`.
#[derive(Debug, Clone)]
pub struct GitHubConfig {
    /// Repository owner (user or organisation) holding the workflow and the releases.
    pub owner: String,
    /// Repository name.
    pub repo: String,
    /// Workflow file name under `.github/workflows/` (or its numeric id).
    pub workflow_file: String,
    /// Branch or tag the workflow is dispatched on.
    pub git_ref: String,
    /// How requests authenticate.
    pub auth: GitHubAuth,
    /// REST API base URL, without a trailing slash.
    pub api_base_url: String,
    /// Where releases live for an identity (must match what the workflow publishes).
    pub layout: ReleaseLayout,
    /// The driver this repository builds; requests for another driver are refused.
    pub driver: DriverName,
    /// Timeouts, lookup windows and cache sizes.
    pub tuning: GitHubTuning,
}

impl GitHubConfig {
    /// A configuration with the defaults for workflow, ref, API URL, layout and tuning.
    pub fn new(
        owner: impl Into<String>,
        repo: impl Into<String>,
        auth: GitHubAuth,
        driver: DriverName,
    ) -> Self {
        Self {
            owner: owner.into(),
            repo: repo.into(),
            workflow_file: DEFAULT_WORKFLOW_FILE.to_owned(),
            git_ref: DEFAULT_GIT_REF.to_owned(),
            auth,
            api_base_url: DEFAULT_API_BASE_URL.to_owned(),
            layout: ReleaseLayout::default(),
            driver,
            tuning: GitHubTuning::default(),
        }
    }

    /// Checks every field; the error names the field and the rule it breaks.
    pub fn validate(&self) -> Result<(), GitHubSetupError> {
        check_name("owner", &self.owner, 39)?;
        check_name("repo", &self.repo, 100)?;
        if self.workflow_file.is_empty() || self.workflow_file.len() > 255 {
            return Err(GitHubSetupError::field(
                "workflow_file",
                "must be 1 to 255 characters",
            ));
        }
        if self.workflow_file.contains(['/', '\\', '?', '#'])
            || self.workflow_file.chars().any(char::is_control)
        {
            return Err(GitHubSetupError::field(
                "workflow_file",
                "must be a file name under .github/workflows/ or a numeric id (no '/', '?', '#', control characters)",
            ));
        }
        if self.git_ref.is_empty()
            || self.git_ref.len() > 255
            || self.git_ref.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err(GitHubSetupError::field(
                "git_ref",
                "must be 1 to 255 characters without spaces or control characters",
            ));
        }
        let base = url::Url::parse(&self.api_base_url).map_err(|e| {
            GitHubSetupError::field("api_base_url", &format!("must be an absolute URL ({e})"))
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(GitHubSetupError::field(
                "api_base_url",
                "must be an http:// or https:// URL with a host",
            ));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(GitHubSetupError::field(
                "api_base_url",
                "must not carry a query or fragment",
            ));
        }
        match &self.auth {
            GitHubAuth::Token(token) => {
                if token.trim().is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
                    return Err(GitHubSetupError::field(
                        "token",
                        "must be non-empty without spaces or control characters",
                    ));
                }
            }
            GitHubAuth::App {
                app_id,
                private_key_pem,
                installation_id,
            } => {
                if *app_id == 0 {
                    return Err(GitHubSetupError::field(
                        "app_id",
                        "must be a positive integer",
                    ));
                }
                if *installation_id == 0 {
                    return Err(GitHubSetupError::field(
                        "installation_id",
                        "must be a positive integer",
                    ));
                }
                if !private_key_pem.contains("-----BEGIN") {
                    return Err(GitHubSetupError::field(
                        "app_private_key",
                        "must be a PEM-encoded RSA private key",
                    ));
                }
            }
        }
        self.tuning.validate()
    }
}

fn check_name(field: &'static str, value: &str, max: usize) -> Result<(), GitHubSetupError> {
    let valid = !value.is_empty()
        && value.len() <= max
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value != "."
        && value != "..";
    if valid {
        Ok(())
    } else {
        Err(GitHubSetupError::field(
            field,
            &format!("must be 1 to {max} characters of [A-Za-z0-9._-]"),
        ))
    }
}

/// How the backend authenticates to GitHub.
#[derive(Clone)]
pub enum GitHubAuth {
    /// A personal access token, fine-grained token or `GITHUB_TOKEN` (needs Actions: write and Contents:
    /// read on the repository).
    Token(String),
    /// A GitHub App installation: the app mints hour-long installation tokens itself (needs the
    /// `actions:write` and `contents:read` permissions).
    App {
        /// The App's numeric id.
        app_id: u64,
        /// The App's private key, PEM (as downloaded from the App settings).
        private_key_pem: String,
        /// The installation on the repository's owner (`GET /repos/{o}/{r}/installation` shows it).
        installation_id: u64,
    },
}

impl fmt::Debug for GitHubAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets never reach logs.
        match self {
            GitHubAuth::Token(_) => f.write_str("Token(<redacted>)"),
            GitHubAuth::App {
                app_id,
                installation_id,
                ..
            } => f
                .debug_struct("App")
                .field("app_id", app_id)
                .field("private_key_pem", &"<redacted>")
                .field("installation_id", installation_id)
                .finish(),
        }
    }
}

/// Timeouts, lookup windows and cache sizes. The defaults suit github.com; tests shorten them.
#[derive(Debug, Clone)]
pub struct GitHubTuning {
    /// Upper bound for one HTTP exchange, body included. Every call is one attempt (a 5xx, timeout,
    /// connection error or rate limit is returned as a `BackendError`; the tracker retries).
    pub request_timeout: Duration,
    /// Upper bound for a `workflow_dispatch` call. Longer than `request_timeout` on purpose: a
    /// dispatch whose answer never came is ambiguous (did GitHub create the run?) and costs the settle
    /// time and a run look-up, so a slow answer is worth waiting for — the tracker's lease heartbeat
    /// keeps the build ours meanwhile.
    pub dispatch_timeout: Duration,
    /// The settle time of a dispatch ([`crate::Backend::dispatch_settle`]): how long after a dispatch was
    /// sent its run surely shows in the run list if it was created (GitHub lists new runs with a delay
    /// of seconds). A dispatch whose outcome is unknown (answer lost, or its replica died) is looked up
    /// by build id only after this, and sent again only when no run carries the build id.
    pub ambiguous_settle: Duration,
    /// After a dispatch answered 204 (no run id), how long to look for the run by its build id before
    /// returning without a run id (polling continues the search).
    pub run_lookup_timeout: Duration,
    /// Pause between two run-list lookups.
    pub run_lookup_interval: Duration,
    /// Margin subtracted from our own clock in `created>=` filters, against clock skew with GitHub.
    pub clock_skew_margin: Duration,
    /// For a build id this process has never dispatched (e.g. after a restart), how far back to look for
    /// a run already carrying it before dispatching. Must exceed the service's build timeout: an older
    /// build is never dispatched again.
    pub idempotency_lookback: Duration,
    /// How long after a successful run completed its artifact may still be invisible (release being
    /// published) before the build counts as failed.
    pub publish_grace: Duration,
    /// Entries of the ETag cache (release and run answers).
    pub etag_cache_entries: usize,
    /// Entries of the positive artifact cache.
    pub found_cache_entries: usize,
    /// Build ids whose run is remembered (so polling a build dispatched without a run id, or a repeated
    /// dispatch, costs no run-list lookup).
    pub ledger_entries: usize,
}

impl Default for GitHubTuning {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            dispatch_timeout: Duration::from_secs(120),
            ambiguous_settle: Duration::from_secs(30),
            run_lookup_timeout: Duration::from_secs(60),
            run_lookup_interval: Duration::from_secs(3),
            clock_skew_margin: Duration::from_secs(300),
            idempotency_lookback: Duration::from_secs(3600),
            publish_grace: Duration::from_secs(300),
            etag_cache_entries: 4096,
            found_cache_entries: 100_000,
            ledger_entries: 10_000,
        }
    }
}

impl GitHubTuning {
    fn validate(&self) -> Result<(), GitHubSetupError> {
        if self.request_timeout.is_zero() {
            return Err(GitHubSetupError::field(
                "request_timeout",
                "must be positive",
            ));
        }
        if self.dispatch_timeout.is_zero() {
            return Err(GitHubSetupError::field(
                "dispatch_timeout",
                "must be positive",
            ));
        }
        if self.run_lookup_interval.is_zero() {
            return Err(GitHubSetupError::field(
                "run_lookup_interval",
                "must be positive",
            ));
        }
        Ok(())
    }
}

/// Why the backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum GitHubSetupError {
    /// A configuration field breaks a rule.
    #[error("github.{field}: {rule}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// The rule it breaks.
        rule: String,
    },
    /// octocrab refused to build the client (e.g. an unreadable App key).
    #[error("cannot build the GitHub client: {0}")]
    Client(String),
}

impl GitHubSetupError {
    fn field(field: &'static str, rule: &str) -> Self {
        Self::InvalidField {
            field,
            rule: rule.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GitHubConfig {
        GitHubConfig::new(
            "example-org",
            "example-driver",
            GitHubAuth::Token("ghp_test".into()),
            DriverName::parse("example-driver").expect("valid driver name"),
        )
    }

    #[test]
    fn defaults_are_valid() {
        config().validate().expect("defaults validate");
    }

    type Mutation = Box<dyn Fn(&mut GitHubConfig)>;

    #[test]
    fn refusals_name_the_field() {
        let cases: Vec<(&str, Mutation)> = vec![
            ("owner", Box::new(|c| c.owner = "bad/owner".into())),
            ("repo", Box::new(|c| c.repo = String::new())),
            ("repo", Box::new(|c| c.repo = "..".into())),
            (
                "workflow_file",
                Box::new(|c| c.workflow_file = "../x.yml".into()),
            ),
            ("git_ref", Box::new(|c| c.git_ref = "main\nx".into())),
            (
                "api_base_url",
                Box::new(|c| c.api_base_url = "ftp://example.com".into()),
            ),
            (
                "api_base_url",
                Box::new(|c| c.api_base_url = "not a url".into()),
            ),
            (
                "token",
                Box::new(|c| c.auth = GitHubAuth::Token(" ".into())),
            ),
            (
                "app_id",
                Box::new(|c| {
                    c.auth = GitHubAuth::App {
                        app_id: 0,
                        private_key_pem: "-----BEGIN".into(),
                        installation_id: 1,
                    }
                }),
            ),
            (
                "app_private_key",
                Box::new(|c| {
                    c.auth = GitHubAuth::App {
                        app_id: 1,
                        private_key_pem: "x".into(),
                        installation_id: 1,
                    }
                }),
            ),
            (
                "run_lookup_interval",
                Box::new(|c| c.tuning.run_lookup_interval = Duration::ZERO),
            ),
        ];
        for (field, mutate) in cases {
            let mut cfg = config();
            mutate(&mut cfg);
            let err = cfg.validate().expect_err(field);
            assert!(
                err.to_string().starts_with(&format!("github.{field}:")),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn debug_output_hides_secrets() {
        let token = format!("{:?}", GitHubAuth::Token("ghp_secret".into()));
        assert!(!token.contains("ghp_secret"));
        let app = format!(
            "{:?}",
            GitHubAuth::App {
                app_id: 7,
                private_key_pem: "-----BEGIN secret".into(),
                installation_id: 9
            }
        );
        assert!(!app.contains("secret") && app.contains('7') && app.contains('9'));
    }
}
