//! Shared pieces of the loader's integration tests: a loopback HTTP/1.1 server whose answers each test
//! scripts (artifact store and build-service peer), minisign keys, package signatures and signed build
//! provenance made by the `integrity` crate exactly as the builder and the service make them, real
//! packages written by the packaging crate, a fake host description (os-release and kernel release
//! files), and running the real `driver-loader` binary with a hard timeout.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use integrity::facts::{BuildFacts, CompilerFacts, HeaderPackage, RootImage};
use integrity::provenance::{BuildProvenance, Statement};
use integrity::{Envelope, KeyId, SecretKey};
use kernel_id::{
    Arch, Distribution, DistroVersion, DriverName, DriverVersion, KernelIdentity, KernelRelease,
    SourceCommit,
};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path with query, percent-encoded as sent.
    pub target: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// An answer; `truncate_to` sends a full Content-Length but closes after that many body bytes.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub content_type: &'static str,
    pub truncate_to: Option<usize>,
}

impl Response {
    pub fn bytes(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            body: body.into(),
            content_type: "application/octet-stream",
            truncate_to: None,
        }
    }

    pub fn json(status: u16, value: serde_json::Value) -> Response {
        Response {
            status,
            body: value.to_string().into_bytes(),
            content_type: "application/json",
            truncate_to: None,
        }
    }

    pub fn not_found() -> Response {
        Response::bytes(404, b"Not Found".to_vec())
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// A loopback HTTP/1.1 server (one thread per connection, `Connection: close`). Stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub log: Arc<Mutex<Vec<Request>>>,
}

impl TestServer {
    pub fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        TestServer::start_on(listener, handler)
    }

    /// Starts on a specific loopback port (for "down, then up").
    pub fn start_at(
        addr: SocketAddr,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> TestServer {
        let listener = TcpListener::bind(addr).expect("bind the reserved loopback port");
        TestServer::start_on(listener, handler)
    }

    fn start_on(
        listener: TcpListener,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> TestServer {
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let thread = {
            let stop = stop.clone();
            let log = log.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let handler = handler.clone();
                    let log = log.clone();
                    std::thread::spawn(move || serve(stream, &*handler, &log));
                }
            })
        };
        TestServer {
            addr,
            stop,
            thread: Some(thread),
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().expect("log lock").clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, handler: &Handler, log: &Mutex<Vec<Request>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len.min(1 << 20)];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let request = Request {
        method,
        target,
        headers,
        body,
    };
    let response = handler(&request);
    log.lock().expect("log lock").push(request);
    let mut stream = stream;
    let head = format!(
        "HTTP/1.1 {} X\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let body = match response.truncate_to {
        Some(n) => &response.body[..n.min(response.body.len())],
        None => &response.body[..],
    };
    let _ = stream.write_all(body);
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// A minisign key pair made by the integrity crate (unencrypted, the secret key 0600), as the build
/// service makes its signing key.
pub struct Keys {
    pub dir: tempfile::TempDir,
    pub public_key_file: PathBuf,
    pub secret_key_file: PathBuf,
    pub secret: SecretKey,
}

impl Keys {
    pub fn generate() -> Keys {
        let dir = tempfile::tempdir().expect("tempdir");
        let public_key_file = dir.path().join("test.pub");
        let secret_key_file = dir.path().join("test.key");
        let secret = SecretKey::generate(&secret_key_file, &public_key_file).expect("key pair");
        Keys {
            dir,
            public_key_file,
            secret_key_file,
            secret,
        }
    }

    /// The key id, as minisign and the loader's messages show it.
    pub fn id(&self) -> KeyId {
        self.secret.id()
    }

    /// Signs `file` bound to its own file name and returns the `.minisig` text.
    pub fn sign(&self, file: &Path) -> String {
        let name = file
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        self.sign_as(file, &name)
    }

    /// Signs `file` bound to `file_name` (the trusted comment `file:<file_name>`).
    pub fn sign_as(&self, file: &Path, file_name: &str) -> String {
        integrity::signature::sign_package(&self.secret, file, file_name).expect("sign")
    }

    /// A valid signature of `bytes` whose trusted comment names no file, as a bare `minisign -S -t`
    /// would make it: integrity's signer never makes one.
    pub fn sign_unbound(&self, bytes: &[u8]) -> String {
        let text = std::fs::read_to_string(&self.secret_key_file).expect("secret key");
        let secret = minisign::SecretKeyBox::from_string(&text)
            .and_then(|b| b.into_unencrypted_secret_key())
            .expect("the crate reads its own unencrypted key");
        minisign::sign(
            None,
            &secret,
            std::io::Cursor::new(bytes),
            Some("timestamp:1700000000"),
            None,
        )
        .expect("sign")
        .into_string()
    }

    pub fn public_key_line(&self) -> String {
        self.secret.public().to_base64()
    }
}

/// sha256sum-format digest text of `bytes` named `file_name`.
pub fn digest_text(bytes: &[u8], file_name: &str) -> String {
    integrity::DigestFile::new(integrity::sha256_bytes(bytes), file_name).render()
}

/// The provenance policy every test configures, and what [`provenance_for`] writes by default.
pub const SOURCE_REPOSITORY: &str = "https://github.com/example/example-driver";
pub const BUILDER_ID: &str =
    "https://github.com/example/example-driver/.github/workflows/driver-build.yml@refs/heads/main";
pub const SOURCE_COMMIT: &str = "5e2d7c9a41f08b3e6d1c0a9f8e7d6c5b4a392817";

/// The trust options of a loader command: the key file and the provenance policy.
pub fn trust_args(cmd: &mut Command, public_key_file: &Path) {
    cmd.arg("--public-key-file")
        .arg(public_key_file)
        .args(["--expected-source-repository", SOURCE_REPOSITORY])
        .args(["--allowed-builder", BUILDER_ID]);
}

/// What a build of `package` for `identity` would say about itself, with minimal but realistic facts
/// (the Debian header packages a bookworm build installs, the root, the compiler).
pub fn provenance_for(identity: &KernelIdentity, package: &[u8]) -> BuildProvenance {
    let release = identity.kernel_release().as_str();
    // As Debian ships them for 6.1.0-47 (6.1.170-3): the common headers for all architectures.
    let header = |name: String, arch: &str| {
        let file_name = format!("{name}_6.1.170-3_{arch}.deb");
        HeaderPackage {
            uri: Some(format!(
                "http://deb.debian.org/debian/pool/main/l/linux/{file_name}"
            )),
            sha256: integrity::sha256_bytes(file_name.as_bytes()).to_hex(),
            file_name,
            version: "6.1.170-3".to_owned(),
            name,
        }
    };
    let common = release
        .rsplit_once('-')
        .map(|(base, _)| format!("linux-headers-{base}-common"))
        .unwrap_or_else(|| format!("linux-headers-{release}-common"));
    BuildProvenance {
        driver: driver(),
        identity: identity.clone(),
        package_sha256: integrity::sha256_bytes(package),
        source_repository: SOURCE_REPOSITORY.to_owned(),
        source_commit: SourceCommit::parse(SOURCE_COMMIT).expect("commit"),
        facts: BuildFacts {
            headers: vec![
                header(common, "all"),
                header(format!("linux-headers-{release}"), "amd64"),
            ],
            compiler: CompilerFacts {
                name: "gcc-12".to_owned(),
                kernel_cc_version_text: "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0".to_owned(),
                root_version_report: "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0".to_owned(),
            },
        },
        root: RootImage {
            uri: "mmdebstrap:debian/bookworm/amd64".to_owned(),
            sha256: integrity::sha256_bytes(b"bookworm root").to_hex(),
        },
        builder_id: BUILDER_ID.to_owned(),
        invocation_id: "b-42".to_owned(),
        started_on: "2026-12-03T10:00:00Z".to_owned(),
        finished_on: "2026-12-03T10:02:07Z".to_owned(),
    }
}

pub const DRIVER: &str = "example-driver";
pub const VERSION: &str = "v0.1.2";
pub const RELEASE: &str = "6.1.0-47-amd64";
pub const VERMAGIC_47: &str = "6.1.0-47-amd64 SMP preempt mod_unload modversions ";

pub fn driver() -> DriverName {
    DriverName::parse(DRIVER).expect("valid")
}

pub fn identity(release: &str) -> KernelIdentity {
    KernelIdentity::new(
        KernelRelease::parse(release).expect("valid release"),
        Arch::X86_64,
        DistroVersion::supported(Distribution::parse("debian").expect("debian"), "12").expect("12"),
        DriverVersion::parse(VERSION).expect("version"),
    )
    .expect("identity")
}

/// A minimal relocatable ELF64 object whose only content is a `.modinfo` section, which is all the
/// loader reads before handing an image to the kernel.
pub fn tiny_module(modinfo: &[&str]) -> Vec<u8> {
    let mut info = Vec::new();
    for entry in modinfo {
        info.extend_from_slice(entry.as_bytes());
        info.push(0);
    }
    let shstrtab = b"\0.modinfo\0.shstrtab\0";
    let modinfo_off = 64usize;
    let shstrtab_off = modinfo_off + info.len();
    let sh_off = (shstrtab_off + shstrtab.len()).div_ceil(8) * 8;
    let mut out = Vec::new();
    out.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&1u16.to_le_bytes()); // ET_REL
    out.extend_from_slice(&62u16.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&[0; 16]); // entry, phoff
    out.extend_from_slice(&(sh_off as u64).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 0, 0, 64, 3, 2] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&info);
    out.extend_from_slice(shstrtab);
    out.resize(sh_off, 0);
    for (name, kind, off, size) in [
        (0u32, 0u32, 0usize, 0usize),
        (1, 1, modinfo_off, info.len()),
        (10, 3, shstrtab_off, shstrtab.len()),
    ] {
        out.extend_from_slice(&name.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&(off as u64).to_le_bytes());
        out.extend_from_slice(&(size as u64).to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&1u64.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
    }
    out
}

/// A real .deb (written by the packaging crate) for `identity` carrying `modules` (file name, image).
pub fn make_deb(dir: &Path, identity: &KernelIdentity, modules: Vec<(String, Vec<u8>)>) -> PathBuf {
    let spec = driver_package::PackageSpec::for_driver(
        &driver(),
        identity,
        modules
            .into_iter()
            .map(|(n, b)| (n, driver_package::FileContent::Bytes(b))),
    )
    .expect("spec");
    driver_package::write_package_file(
        &spec,
        driver_package::WriteOptions::default_for(spec.format),
        dir,
        &identity.package_file_name(&driver()),
    )
    .expect("write package")
}

/// A host description: os-release of Debian 12 and a proc root announcing `release`.
pub struct FakeHost {
    pub dir: tempfile::TempDir,
}

impl FakeHost {
    pub fn new(release: &str) -> FakeHost {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("os-release"),
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nID=debian\n",
        )
        .expect("write os-release");
        std::fs::create_dir_all(dir.path().join("proc/sys/kernel")).expect("mkdir");
        std::fs::write(
            dir.path().join("proc/sys/kernel/osrelease"),
            format!("{release}\n"),
        )
        .expect("write");
        std::fs::create_dir_all(dir.path().join("sys/module")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join(format!("lib/modules/{release}"))).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("cache")).expect("mkdir");
        FakeHost { dir }
    }

    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// The loader command with this host's paths and fast retries.
    pub fn loader(&self, artifact_base: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_driver-loader"));
        let root = self.dir.path();
        cmd.env_clear()
            .env("DRIVER_LOADER_LOG", "info")
            .arg("--driver-name")
            .arg(DRIVER)
            .arg("--driver-version")
            .arg(VERSION)
            .arg("--artifact-base-url")
            .arg(artifact_base)
            .arg("--os-release")
            .arg(root.join("os-release"))
            .arg("--proc-root")
            .arg(root.join("proc"))
            .arg("--sys-root")
            .arg(root.join("sys"))
            .arg("--modules-root")
            .arg(root.join("lib/modules"))
            .arg("--cache-dir")
            .arg(self.cache())
            .args(["--attempts", "8", "--backoff-ms", "100"]);
        cmd
    }
}

/// Runs a command to completion, killing it after `limit`.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn driver-loader");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "driver-loader did not finish within {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A provenance file whose statement was edited after signing (the signatures kept): what an attacker
/// who can write the artifact store but holds no key can do.
pub fn tampered_provenance(text: &str, edit: impl FnOnce(&mut Statement)) -> String {
    let original = Envelope::parse(text.trim()).expect("an envelope");
    let mut statement: Statement =
        serde_json::from_slice(&original.payload_unverified().expect("payload"))
            .expect("statement");
    edit(&mut statement);
    let payload = serde_json::to_vec(&statement).expect("serializes");
    // Any key encodes the edited payload; only the original signatures are kept.
    let scratch = Keys::generate();
    let mut forged = Envelope::sign(&scratch.secret, &original.payload_type, &payload);
    forged.signatures = original.signatures;
    format!("{}\n", forged.to_line())
}

/// The artifact files of one identity as served: package bytes, digest text, signature text and
/// provenance file text.
#[derive(Clone)]
pub struct Artifact {
    pub file_name: String,
    pub package_path: String,
    pub package: Vec<u8>,
    pub digest: String,
    pub signature: Option<String>,
    pub provenance: Option<String>,
}

impl Artifact {
    /// Builds, digests and signs a real package for `identity` with one module of the given vermagic,
    /// with its provenance signed by the same key.
    pub fn signed(keys: &Keys, identity: &KernelIdentity, vermagic: &str) -> Artifact {
        let dir = tempfile::tempdir().expect("tempdir");
        let module = tiny_module(&[
            "version=v0.1.2",
            "license=GPL",
            "srcversion=0123456789ABCDEF0123456",
            "depends=",
            "name=example_driver",
            &format!("vermagic={vermagic}"),
        ]);
        let path = make_deb(
            dir.path(),
            identity,
            vec![("example_driver.ko".to_owned(), module)],
        );
        let package = std::fs::read(&path).expect("read package");
        Artifact::from_package(keys, identity, package)
    }

    /// Serves `package` under `identity`'s name: digest, a signature bound to that name and a
    /// provenance ([`provenance_for`]) made from the bytes' real digest, all by `keys`.
    pub fn from_package(keys: &Keys, identity: &KernelIdentity, package: Vec<u8>) -> Artifact {
        let file_name = identity.package_file_name(&driver());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(&file_name);
        std::fs::write(&path, &package).expect("write package");
        let signature = keys.sign(&path);
        Artifact {
            digest: digest_text(&package, &file_name),
            package_path: kernel_id::ReleaseLayout::PerArtifact.package_path(&driver(), identity),
            provenance: Some(provenance_for(identity, &package).signed_file(&keys.secret)),
            file_name,
            package,
            signature: Some(signature),
        }
    }

    /// Replaces the provenance with `edit` applied to the default one, signed by `keys`.
    pub fn with_provenance(
        mut self,
        keys: &Keys,
        identity: &KernelIdentity,
        edit: impl FnOnce(&mut BuildProvenance),
    ) -> Artifact {
        let mut provenance = provenance_for(identity, &self.package);
        edit(&mut provenance);
        self.provenance = Some(provenance.signed_file(&keys.secret));
        self
    }

    /// Replaces the package signature with one by `keys` (bound to the package's name).
    pub fn resigned(mut self, keys: &Keys) -> Artifact {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(&self.file_name);
        std::fs::write(&path, &self.package).expect("write package");
        self.signature = Some(keys.sign(&path));
        self
    }

    /// The package's own SHA-256.
    pub fn sha256(&self) -> integrity::Sha256Digest {
        integrity::sha256_bytes(&self.package)
    }

    /// Answers GETs for the package and its sidecars under `/releases/download/`; 404 otherwise.
    pub fn answer(&self, request: &Request) -> Option<Response> {
        let prefix = format!("/releases/download/{}", self.package_path);
        let path = request.path();
        let optional = |text: &Option<String>| match text {
            Some(s) => Response::bytes(200, s.clone()),
            None => Response::not_found(),
        };
        if path == prefix {
            Some(Response::bytes(200, self.package.clone()))
        } else if path == format!("{prefix}.sha256") {
            Some(Response::bytes(200, self.digest.clone()))
        } else if path == format!("{prefix}.minisig") {
            Some(optional(&self.signature))
        } else if path == format!("{prefix}.intoto.jsonl") {
            Some(optional(&self.provenance))
        } else {
            None
        }
    }
}

/// Serves `artifact` (and nothing else) from a loopback server.
pub fn serve_artifact(artifact: Artifact) -> TestServer {
    TestServer::start(move |r| artifact.answer(r).unwrap_or_else(Response::not_found))
}

pub mod sample;
