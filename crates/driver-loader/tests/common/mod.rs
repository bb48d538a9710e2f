//! Shared pieces of the loader's integration tests: a loopback HTTP/1.1 server whose answers each test
//! scripts (artifact store and build-service peer), minisign keys and signatures made by the real
//! `minisign` CLI, real packages written by the packaging crate, a fake host description (os-release and
//! kernel release files), and running the real `driver-loader` binary with a hard timeout.

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

use kernel_id::{
    Arch, Distribution, DistroVersion, DriverName, DriverVersion, KernelIdentity, KernelRelease,
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

/// A minisign key pair made by the real CLI (passwordless, `-W`).
pub struct Keys {
    pub dir: tempfile::TempDir,
    pub public_key_file: PathBuf,
    pub secret_key_file: PathBuf,
}

impl Keys {
    pub fn generate() -> Keys {
        let dir = tempfile::tempdir().expect("tempdir");
        let public_key_file = dir.path().join("test.pub");
        let secret_key_file = dir.path().join("test.key");
        let status = Command::new("minisign")
            .args(["-G", "-W", "-p"])
            .arg(&public_key_file)
            .arg("-s")
            .arg(&secret_key_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("the minisign CLI must be installed (apt-get install minisign)");
        assert!(status.success(), "minisign -G failed");
        Keys {
            dir,
            public_key_file,
            secret_key_file,
        }
    }

    /// Signs `file` into `<file>.minisig` and returns the signature text.
    pub fn sign(&self, file: &Path) -> String {
        let status = Command::new("minisign")
            .arg("-S")
            .arg("-s")
            .arg(&self.secret_key_file)
            .arg("-m")
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("minisign -S");
        assert!(status.success(), "minisign -S failed");
        std::fs::read_to_string(format!("{}.minisig", file.display())).expect("signature written")
    }

    pub fn public_key_line(&self) -> String {
        std::fs::read_to_string(&self.public_key_file)
            .expect("pub key")
            .lines()
            .nth(1)
            .expect("key line")
            .to_owned()
    }
}

/// sha256sum-format digest text of `bytes` named `file_name`.
pub fn digest_text(bytes: &[u8], file_name: &str) -> String {
    use sha2::Digest;
    format!(
        "{}  {file_name}\n",
        hex::encode(sha2::Sha256::digest(bytes))
    )
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

/// The artifact files of one identity as served: package bytes, digest text, signature text.
#[derive(Clone)]
pub struct Artifact {
    pub file_name: String,
    pub package_path: String,
    pub package: Vec<u8>,
    pub digest: String,
    pub signature: Option<String>,
}

impl Artifact {
    /// Builds, digests and signs a real package for `identity` with one module of the given vermagic.
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
        let signature = keys.sign(&path);
        let package = std::fs::read(&path).expect("read package");
        let file_name = identity.package_file_name(&driver());
        Artifact {
            digest: digest_text(&package, &file_name),
            package_path: kernel_id::ReleaseLayout::PerArtifact.package_path(&driver(), identity),
            file_name,
            package,
            signature: Some(signature),
        }
    }

    /// Answers GETs for the package and its sidecars under `/releases/download/`; 404 otherwise.
    pub fn answer(&self, request: &Request) -> Option<Response> {
        let prefix = format!("/releases/download/{}", self.package_path);
        let path = request.path();
        if path == prefix {
            Some(Response::bytes(200, self.package.clone()))
        } else if path == format!("{prefix}.sha256") {
            Some(Response::bytes(200, self.digest.clone()))
        } else if path == format!("{prefix}.minisig") {
            Some(match &self.signature {
                Some(s) => Response::bytes(200, s.clone()),
                None => Response::not_found(),
            })
        } else {
            None
        }
    }
}
pub mod sample;
