//! Getting the one verified package for an identity: from the cache when a verified copy is there, else
//! from the artifact store (GitHub Releases layout, or the build service's local artifact route), and when
//! the store has nothing, by asking the build service to build it and waiting until it is done.
//!
//! Nothing reaches the cache's final name unverified: downloads land in a temporary file next to it and
//! are renamed only after the digest and the signature check out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use build_api::{BuildAccepted, BuildDone, BuildRequest, BuildState, BuildStatus, status_path};
use kernel_id::{DriverName, KernelIdentity, ReleaseLayout, percent_encode_segment};
use minisign_verify::PublicKey;
use tracing::{info, warn};

use crate::error::{LoaderError, Result};
use crate::http::{Deadline, Fetched, HttpClient, JsonMethod};
use crate::verify::{self, MAX_SIDECAR_BYTES, SignatureInfo};

/// Where artifacts come from.
#[derive(Debug, Clone)]
pub struct ArtifactSource {
    /// Base URL the download path is appended to, e.g. `https://github.com/o/r/releases/download` or
    /// `http://127.0.0.1:8080/releases/download`.
    pub base_url: String,
    pub layout: ReleaseLayout,
    /// Bearer token for artifact downloads (private repositories).
    pub token: Option<String>,
    /// Largest package accepted.
    pub max_package_bytes: u64,
}

/// The build service asked on a miss.
#[derive(Debug, Clone)]
pub struct BuildService {
    /// Service root, e.g. `http://build-service:8080`.
    pub url: String,
    pub token: Option<String>,
    /// Long-poll duration of one `GET /status/{id}?wait=`.
    pub wait: Duration,
}

/// What makes a package trusted.
#[derive(Debug, Clone)]
pub struct TrustPolicy {
    pub public_key: Option<PublicKey>,
    /// Accept packages without a valid signature (the digest is still checked). Never the default.
    pub insecure_skip_signature: bool,
}

/// A package whose digest (and signature, unless skipped) verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPackage {
    pub path: PathBuf,
    pub file_name: String,
    /// `None` when signature checking was skipped.
    pub signature: Option<SignatureInfo>,
    /// True when the cached copy was reused and nothing was downloaded.
    pub from_cache: bool,
    /// Whether a build was requested to obtain it.
    pub built_on_demand: bool,
}

/// The URLs of one identity's artifact files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactUrls {
    pub package: String,
    pub digest: String,
    pub signature: String,
}

impl ArtifactUrls {
    /// `{base}/{ReleaseLayout::download_path}` for the package and its two sidecar files.
    pub fn new(
        source: &ArtifactSource,
        driver: &DriverName,
        identity: &KernelIdentity,
    ) -> ArtifactUrls {
        let base = source.base_url.trim_end_matches('/');
        ArtifactUrls {
            package: format!("{base}/{}", source.layout.package_path(driver, identity)),
            digest: format!(
                "{base}/{}",
                source
                    .layout
                    .download_path(driver, identity, &identity.digest_file_name(driver))
            ),
            signature: format!(
                "{base}/{}",
                source.layout.download_path(
                    driver,
                    identity,
                    &identity.signature_file_name(driver)
                )
            ),
        }
    }

    /// The same files at the package URL the build service announced. It must name this identity's
    /// package file; the sidecars sit next to it (`.sha256`/`.minisig` appended, which percent-encoding
    /// leaves unchanged).
    fn at_announced(url: &str, file_name: &str) -> Result<ArtifactUrls> {
        let expected_tail = format!("/{}", percent_encode_segment(file_name));
        if !url.ends_with(&expected_tail)
            || !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(LoaderError::BuildService(format!(
                "announced download_url {url:?} is not an http(s) URL of {file_name:?}"
            )));
        }
        Ok(ArtifactUrls {
            package: url.to_owned(),
            digest: format!("{url}.sha256"),
            signature: format!("{url}.minisig"),
        })
    }
}

/// Everything fetching needs.
#[derive(Debug)]
pub struct Fetcher<'a> {
    pub client: &'a HttpClient,
    pub source: &'a ArtifactSource,
    pub build_service: Option<&'a BuildService>,
    pub trust: &'a TrustPolicy,
    /// Root of the package cache; one directory per identity cache key below it.
    pub cache_root: &'a Path,
}

impl Fetcher<'_> {
    /// The cache directory of an identity (its kernel-id cache key as a relative path).
    pub fn cache_dir(&self, identity: &KernelIdentity) -> PathBuf {
        self.cache_root.join(identity.cache_key())
    }

    /// Returns a verified package for the identity: cached, downloaded, or built then downloaded.
    pub fn fetch(
        &self,
        driver: &DriverName,
        identity: &KernelIdentity,
        deadline: &Deadline,
    ) -> Result<VerifiedPackage> {
        let file_name = identity.package_file_name(driver);
        let dir = self.cache_dir(identity);
        std::fs::create_dir_all(&dir)
            .map_err(|e| LoaderError::io(format!("creating cache {}", dir.display()), e))?;
        let final_path = dir.join(&file_name);
        let digest_path = dir.join(identity.digest_file_name(driver));
        let sig_path = dir.join(identity.signature_file_name(driver));

        if final_path.exists() {
            match self.verify_cached(&final_path, &file_name, &digest_path, &sig_path) {
                Ok(signature) => {
                    info!(path = %final_path.display(), "using verified package from the cache");
                    return Ok(VerifiedPackage {
                        path: final_path,
                        file_name,
                        signature,
                        from_cache: true,
                        built_on_demand: false,
                    });
                }
                Err(e) => {
                    warn!(path = %final_path.display(), error = %e, "cached package does not verify; downloading again");
                    for stale in [&final_path, &digest_path, &sig_path] {
                        let _ = std::fs::remove_file(stale);
                    }
                }
            }
        }

        let mut urls = ArtifactUrls::new(self.source, driver, identity);
        let partial = dir.join(format!(".{file_name}.partial-{}", std::process::id()));
        let mut built_on_demand = false;
        let downloaded = self.download_package(&urls.package, &partial, deadline);
        let downloaded = match downloaded {
            Ok(Fetched::Found(bytes)) => bytes,
            Ok(Fetched::NotFound) => {
                let Some(service) = self.build_service else {
                    return Err(LoaderError::NotFound { url: urls.package });
                };
                info!(url = %urls.package, "artifact not published; requesting a build");
                if let Some(announced) = request_build(self.client, service, identity, deadline)? {
                    urls = ArtifactUrls::at_announced(&announced, &file_name)?;
                }
                built_on_demand = true;
                match self.download_package(&urls.package, &partial, deadline)? {
                    Fetched::Found(bytes) => bytes,
                    Fetched::NotFound => {
                        return Err(LoaderError::BuildService(format!(
                            "the build was reported done but {} is still 404",
                            urls.package
                        )));
                    }
                }
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        info!(url = %urls.package, bytes = downloaded, "package downloaded");

        let outcome = self.verify_download(&urls, &partial, &file_name, deadline);
        let (digest_text, signature_text, signature) = match outcome {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        write_file(&digest_path, digest_text.as_bytes())?;
        if let Some(text) = &signature_text {
            write_file(&sig_path, text.as_bytes())?;
        } else {
            let _ = std::fs::remove_file(&sig_path);
        }
        std::fs::rename(&partial, &final_path).map_err(|e| {
            LoaderError::io(
                format!("moving the package into {}", final_path.display()),
                e,
            )
        })?;
        Ok(VerifiedPackage {
            path: final_path,
            file_name,
            signature,
            from_cache: false,
            built_on_demand,
        })
    }

    fn download_package(
        &self,
        url: &str,
        partial: &Path,
        deadline: &Deadline,
    ) -> Result<Fetched<u64>> {
        let result = self.client.download_to_file(
            url,
            self.source.token.as_deref(),
            partial,
            self.source.max_package_bytes,
            deadline,
        );
        if !matches!(result, Ok(Fetched::Found(_))) {
            let _ = std::fs::remove_file(partial);
        }
        result
    }

    /// Downloads the digest and signature and checks the package against them.
    fn verify_download(
        &self,
        urls: &ArtifactUrls,
        package: &Path,
        file_name: &str,
        deadline: &Deadline,
    ) -> Result<(String, Option<String>, Option<SignatureInfo>)> {
        let token = self.source.token.as_deref();
        let digest_text = match self.client.get_text(
            &urls.digest,
            token,
            MAX_SIDECAR_BYTES,
            deadline,
        )? {
            Fetched::Found(text) => text,
            Fetched::NotFound => {
                return Err(LoaderError::verify(
                    file_name,
                    format!(
                        "no digest file published at {} (404); refusing an unverifiable package",
                        urls.digest
                    ),
                ));
            }
        };
        verify::verify_digest(package, file_name, &digest_text)?;
        let signature_text =
            match self
                .client
                .get_text(&urls.signature, token, MAX_SIDECAR_BYTES, deadline)?
            {
                Fetched::Found(text) => Some(text),
                Fetched::NotFound => None,
            };
        let signature = self.check_signature(package, file_name, signature_text.as_deref())?;
        Ok((digest_text, signature_text, signature))
    }

    fn verify_cached(
        &self,
        package: &Path,
        file_name: &str,
        digest: &Path,
        sig: &Path,
    ) -> Result<Option<SignatureInfo>> {
        let digest_text = crate::host::read_small(digest, MAX_SIDECAR_BYTES).map_err(|e| {
            LoaderError::verify(file_name, format!("cached digest unreadable: {e}"))
        })?;
        verify::verify_digest(package, file_name, &digest_text)?;
        let sig_text = if sig.exists() {
            Some(
                crate::host::read_small(sig, MAX_SIDECAR_BYTES).map_err(|e| {
                    LoaderError::verify(file_name, format!("cached signature unreadable: {e}"))
                })?,
            )
        } else {
            None
        };
        self.check_signature(package, file_name, sig_text.as_deref())
    }

    /// Applies the trust policy to a package and its (possibly absent) signature.
    fn check_signature(
        &self,
        package: &Path,
        file_name: &str,
        signature_text: Option<&str>,
    ) -> Result<Option<SignatureInfo>> {
        if self.trust.insecure_skip_signature {
            warn!(
                package = file_name,
                "--insecure-skip-signature: NOT checking the package signature; only the digest protects \
                 against corruption, nothing protects against a substituted package"
            );
            return Ok(None);
        }
        let key = self.trust.public_key.as_ref().ok_or_else(|| {
            LoaderError::Config(
                "public_key: no minisign public key configured; set --public-key/--public-key-file, or \
                 --insecure-skip-signature to knowingly load unsigned code"
                    .to_owned(),
            )
        })?;
        let text = signature_text.ok_or_else(|| {
            LoaderError::verify(
                file_name,
                "the package is unsigned (no .minisig published); refusing it (--insecure-skip-signature overrides)",
            )
        })?;
        let info = verify::verify_signature(package, file_name, text, key)?;
        verify::check_trusted_comment(&info, file_name)?;
        Ok(Some(info))
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .map_err(|e| LoaderError::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| LoaderError::io(format!("writing {}", path.display()), e))
}

/// Shortest time between two status requests, whatever the service does with `wait`.
const MIN_STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Reads a `POST /build` answer as the type its HTTP status promises.
fn build_answer<T: serde::de::DeserializeOwned>(
    build_url: &str,
    status: u16,
    answer: serde_json::Value,
) -> Result<T> {
    T::deserialize(&answer).map_err(|e| {
        LoaderError::BuildService(format!(
            "POST {build_url} answered {status} with an unexpected body ({e}): {answer}"
        ))
    })
}

/// `POST /build`, then long-poll `GET /status/{id}?wait=` until a final state. Returns the announced
/// download URL when the service gave one.
pub fn request_build(
    client: &HttpClient,
    service: &BuildService,
    identity: &KernelIdentity,
    deadline: &Deadline,
) -> Result<Option<String>> {
    let root = service.url.trim_end_matches('/');
    let build_url = format!("{root}/build");
    let body = BuildRequest::from(identity);
    let (status, answer): (u16, serde_json::Value) = client
        .json(
            JsonMethod::Post(&body),
            &build_url,
            service.token.as_deref(),
            Duration::from_secs(60),
            deadline,
        )
        .map_err(|e| match e {
            LoaderError::Fetch { reason, .. } => {
                LoaderError::BuildService(format!("POST {build_url}: {reason}"))
            }
            other => other,
        })?;
    if status == 200 {
        let done: BuildDone = build_answer(&build_url, status, answer)?;
        info!("build service: artifact already exists");
        return Ok(Some(done.download_url));
    }
    let accepted: BuildAccepted = build_answer(&build_url, status, answer)?;
    let build_id = accepted.build_id;
    if build_id.is_empty() {
        return Err(LoaderError::BuildService(format!(
            "POST {build_url} answered {status} with an empty build_id (message: {:?})",
            accepted.message
        )));
    }
    info!(build_id, message = ?accepted.message, "build requested; waiting for it");
    loop {
        let remaining = deadline.remaining();
        if remaining.is_zero() {
            return Err(deadline.exceeded(&format!("waiting for build {build_id}")));
        }
        let wait = service.wait.min(remaining).as_secs().max(1);
        let status_url = format!(
            "{root}{}?wait={wait}",
            status_path(&percent_encode_segment(&build_id))
        );
        let asked = std::time::Instant::now();
        let (_, answer): (u16, BuildStatus) = client
            .json::<(), _>(
                JsonMethod::Get,
                &status_url,
                service.token.as_deref(),
                Duration::from_secs(wait + 30),
                deadline,
            )
            .map_err(|e| match e {
                LoaderError::Fetch { reason, .. } => {
                    LoaderError::BuildService(format!("GET {status_url}: {reason}"))
                }
                other => other,
            })?;
        match answer.status {
            BuildState::Done => {
                info!(build_id, "build done");
                return Ok(answer.download_url);
            }
            BuildState::Queued | BuildState::InProgress => {
                info!(build_id, status = %answer.status, "build still running");
                // A service that ignores `wait` must not turn this loop into a busy poll.
                let floor = MIN_STATUS_INTERVAL.min(deadline.remaining());
                if let Some(rest) = floor.checked_sub(asked.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            BuildState::Error | BuildState::TimedOut => {
                return Err(LoaderError::BuildFailed {
                    build_id,
                    status: answer.status.to_string(),
                    reason: answer.error.unwrap_or_else(|| "no reason given".to_owned()),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel_id::{Arch, Distribution, DistroVersion, DriverVersion, KernelRelease};

    fn identity(release: &str) -> KernelIdentity {
        KernelIdentity::new(
            KernelRelease::parse(release).expect("valid"),
            Arch::X86_64,
            DistroVersion::supported(Distribution::parse("debian").expect("valid"), "12")
                .expect("valid"),
            DriverVersion::parse("v0.1.2").expect("valid"),
        )
        .expect("valid")
    }

    #[test]
    fn urls_follow_the_release_layout_and_encode_plus() {
        let driver = DriverName::parse("example-driver").expect("valid");
        let source = ArtifactSource {
            base_url: "http://127.0.0.1:9/releases/download/".to_owned(),
            layout: ReleaseLayout::PerArtifact,
            token: None,
            max_package_bytes: 1,
        };
        let id = identity("6.1.0-47-amd64");
        let urls = ArtifactUrls::new(&source, &driver, &id);
        assert_eq!(
            urls.package,
            format!(
                "http://127.0.0.1:9/releases/download/{}",
                ReleaseLayout::PerArtifact.package_path(&driver, &id)
            )
        );
        assert_eq!(urls.digest, format!("{}.sha256", urls.package));
        assert_eq!(urls.signature, format!("{}.minisig", urls.package));
        let plus = identity("6.12.43+deb12-amd64");
        let urls = ArtifactUrls::new(&source, &driver, &plus);
        assert!(urls.package.contains("%2Bdeb12"), "{}", urls.package);
    }

    #[test]
    fn announced_url_must_name_the_expected_package() {
        let name = "example-driver-debian-12-6.12.43+deb12-amd64_v0.1.2_amd64.deb";
        let good = format!(
            "http://h/releases/download/t/{}",
            percent_encode_segment(name)
        );
        let urls = ArtifactUrls::at_announced(&good, name).expect("matches");
        assert_eq!(urls.signature, format!("{good}.minisig"));
        assert!(
            ArtifactUrls::at_announced("http://h/releases/download/t/other.deb", name).is_err()
        );
        assert!(
            ArtifactUrls::at_announced(&format!("file:///{}", percent_encode_segment(name)), name)
                .is_err()
        );
    }
}
