//! Shared test support: a loopback HTTP server (static files + an XML-RPC handler), identities,
//! a command runner that executes inside build-root's fresh roots, and a runner that installs RPMs
//! into a directory with the host's real `rpm --root`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use driver_builder::system::{CommandLine, CommandOutput, CommandRunner, RunError};
use kernel_id::{IdentityInput, KernelIdentity};

pub const DRIVER_VERSION: &str = "v0.1.2";
/// The source commit test builds record.
pub const SOURCE_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
/// The repository test builds name.
pub const SOURCE_REPOSITORY: &str = "https://example.com/kernel-driver-delivery.git";

pub fn identity(release: &str, arch: &str, distribution: &str, version: &str) -> KernelIdentity {
    KernelIdentity::from_input(&IdentityInput {
        kernel_version: release.to_owned(),
        architecture: arch.to_owned(),
        distribution: distribution.to_owned(),
        distro_version: Some(version.to_owned()),
        driver_version: DRIVER_VERSION.to_owned(),
    })
    .expect("test identities are valid")
}

pub fn sample_driver() -> PathBuf {
    testkit::workspace_root().join("driver/example-driver")
}

type PostHandler = Box<dyn Fn(&str, &str) -> (u16, String) + Send + Sync>;

#[derive(Default)]
struct Routes {
    files: BTreeMap<String, Vec<u8>>,
    post: Option<PostHandler>,
    requests: Vec<String>,
}

/// A small HTTP/1.0 server on 127.0.0.1: GET serves registered bodies (404 otherwise), POST goes
/// to the handler. It stops when dropped and after ten minutes at most.
pub struct LoopbackServer {
    pub port: u16,
    routes: Arc<Mutex<Routes>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LoopbackServer {
    pub fn start() -> LoopbackServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let routes = Arc::new(Mutex::new(Routes::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_routes, thread_stop) = (Arc::clone(&routes), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let give_up = Instant::now() + Duration::from_secs(600);
            while !thread_stop.load(Ordering::Relaxed) && Instant::now() < give_up {
                match listener.accept() {
                    Ok((stream, _)) => serve(stream, &thread_routes),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        LoopbackServer {
            port,
            routes,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn file(&self, path: &str, body: Vec<u8>) {
        let mut routes = self.routes.lock().expect("routes");
        routes.files.insert(path.to_owned(), body);
    }

    pub fn on_post(&self, handler: impl Fn(&str, &str) -> (u16, String) + Send + Sync + 'static) {
        self.routes.lock().expect("routes").post = Some(Box::new(handler));
    }

    /// `METHOD path` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.routes.lock().expect("routes").requests.clone()
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(stream: TcpStream, routes: &Mutex<Routes>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; content_length.min(1 << 20)];
    let _ = reader.read_exact(&mut body);
    let mut parts = request_line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    );
    let (status, payload, content_type) = {
        let mut routes = routes.lock().expect("routes");
        routes.requests.push(format!("{method} {path}"));
        match method.as_str() {
            "GET" => match routes.files.get(&path) {
                Some(bytes) => (200, bytes.clone(), "application/octet-stream"),
                None => (404, b"not found".to_vec(), "text/plain"),
            },
            "POST" => match &routes.post {
                Some(handler) => {
                    let (status, text) = handler(&path, &String::from_utf8_lossy(&body));
                    (status, text.into_bytes(), "text/xml")
                }
                None => (405, b"no POST here".to_vec(), "text/plain"),
            },
            _ => (405, Vec::new(), "text/plain"),
        }
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Error",
    };
    let mut stream = &stream;
    let _ = write!(
        stream,
        "HTTP/1.0 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    );
    let _ = stream.write_all(&payload);
}

/// Runs commands inside a build-root [`WorkRoot`](build_root::work::WorkRoot) exactly as the local
/// executor runs the builder (private mount/pid namespaces, /dev, /proc, /sys, chroot). Output
/// goes to the log; the part a command appended is returned as its stderr.
#[derive(Debug)]
pub struct WorkRootRunner {
    pub work: Arc<build_root::work::WorkRoot>,
    pub log: PathBuf,
}

impl CommandRunner for WorkRootRunner {
    fn run(&self, command: &CommandLine) -> Result<CommandOutput, RunError> {
        let before = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let mut argv = Vec::new();
        if !command.env.is_empty() {
            argv.push("/usr/bin/env".to_owned());
            argv.extend(command.env.iter().map(|(k, v)| format!("{k}={v}")));
        }
        argv.push(command.program.clone());
        argv.extend(command.args.iter().cloned());
        let result = self.work.run(&argv, &self.log, Duration::from_secs(1200));
        let text = std::fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes[before as usize..]).into_owned())
            .unwrap_or_default();
        let code = match result {
            Ok(_) => Some(0),
            Err(build_root::BuildRootError::CommandFailed { status, .. }) => Some(
                status
                    .rsplit(|c: char| !c.is_ascii_digit())
                    .find(|s| !s.is_empty())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(1),
            ),
            Err(other) => {
                return Err(RunError::Spawn {
                    command: command.to_string(),
                    source: std::io::Error::other(other.to_string()),
                });
            }
        };
        Ok(CommandOutput {
            code,
            stdout: String::new(),
            stderr: text,
        })
    }
}

/// A fresh root of `identity`'s suite from build-root's cached base images (made on first use).
pub fn fresh_root(identity: &KernelIdentity) -> build_root::work::WorkRoot {
    let cache_dir = testkit::cache_dir().join("build-root");
    let mut config = build_root::executor::ExecutorConfig::new(cache_dir.clone());
    config.work_dir = cache_dir.join("work-driver-builder");
    let executor = build_root::executor::LocalExecutor::new(config);
    let key = build_root::root::RootKey::for_identity(identity);
    let (_, work) = executor
        .fresh_root(&key)
        .unwrap_or_else(|error| panic!("fresh {} root: {error}", key.slug()));
    work
}

/// For RPM-distribution chains on this Debian host: `rpm` installs into `root` with the host's real
/// rpm (`--root`, guest paths mapped to the directory); every other program (dnf) is reported
/// missing, as on a host without it, so nothing touches the host's package database.
#[derive(Debug)]
pub struct RpmRootRunner {
    pub root: PathBuf,
}

impl CommandRunner for RpmRootRunner {
    fn run(&self, command: &CommandLine) -> Result<CommandOutput, RunError> {
        if command.program != "rpm" {
            return Ok(CommandOutput {
                code: Some(127),
                stdout: String::new(),
                stderr: format!("{}: command not found in this test root", command.program),
            });
        }
        let mut process = std::process::Command::new("rpm");
        process
            .arg("--root")
            .arg(&self.root)
            .args(["--dbpath", "/var/lib/rpm"]);
        for arg in &command.args {
            if arg.starts_with('/') {
                process.arg(self.root.join(arg.trim_start_matches('/')));
            } else {
                process.arg(arg);
            }
        }
        let output = process.output().map_err(|source| RunError::Spawn {
            command: command.to_string(),
            source,
        })?;
        Ok(CommandOutput {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// The last lines of a log, for failure messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
