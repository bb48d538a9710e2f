//! A package mirror on loopback for the repository watcher's tests: an HTTP/1.1 server on
//! `127.0.0.1` serving files from memory, with the caching behaviour of real mirrors (an `ETag` and
//! a `Last-Modified` per file, `304 Not Modified` for a matching `If-None-Match`), and a log of
//! every request (path, status, body bytes, whether it was conditional) for tests to assert on.
//! [`apt_suite`] writes an apt suite's files (a `Packages.xz` compressed with the real `xz`, an
//! unsigned `InRelease` listing its real size and SHA-256); rpm-md repositories are made by the
//! tests with the real `createrepo_c` and loaded with [`Mirror::put_dir`].
//!
//! The server thread answers one connection at a time (every answer closes its connection) and
//! stops when the [`Mirror`] is dropped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// One request the mirror answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The request path, e.g. `/debian/dists/bookworm/InRelease`.
    pub path: String,
    /// The status sent.
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    /// Whether it carried `If-None-Match` or `If-Modified-Since`.
    pub conditional: bool,
}

#[derive(Debug, Default)]
struct Files {
    /// Path (without the leading `/`) -> (content, version counter for the ETag).
    content: BTreeMap<String, (Vec<u8>, u64)>,
    generation: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Mirror {
    address: SocketAddr,
    files: Arc<Mutex<Files>>,
    log: Arc<Mutex<Vec<Served>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Mirror {
    /// Starts an empty mirror on a free loopback port.
    pub fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let files: Arc<Mutex<Files>> = Arc::default();
        let log: Arc<Mutex<Vec<Served>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (files, log, stop) = (Arc::clone(&files), Arc::clone(&log), Arc::clone(&stop));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let _ = answer(stream, &files, &log);
                    }
                }
            })
        };
        Ok(Self {
            address,
            files,
            log,
            stop,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Serves `content` at `path` (relative, e.g. `debian/dists/bookworm/InRelease`); a changed
    /// content gets a new ETag.
    pub fn put(&self, path: &str, content: Vec<u8>) {
        let mut files = self.files.lock().expect("mirror files");
        files.generation += 1;
        let generation = files.generation;
        let path = path.trim_start_matches('/').to_owned();
        match files.content.get(&path) {
            Some((old, _)) if *old == content => {}
            _ => {
                files.content.insert(path, (content, generation));
            }
        }
    }

    /// Serves every file of `files` under `prefix`.
    pub fn put_all(&self, prefix: &str, files: BTreeMap<String, Vec<u8>>) {
        for (path, content) in files {
            self.put(&format!("{}/{path}", prefix.trim_end_matches('/')), content);
        }
    }

    /// Serves every file under `dir` at `<prefix>/<relative path>`.
    pub fn put_dir(&self, prefix: &str, dir: &Path) -> std::io::Result<()> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    walk(root, &path, out)?;
                } else {
                    let relative = path.strip_prefix(root).unwrap_or(&path);
                    out.push((
                        relative.to_string_lossy().into_owned(),
                        std::fs::read(&path)?,
                    ));
                }
            }
            Ok(())
        }
        let mut found = Vec::new();
        walk(dir, dir, &mut found)?;
        for (path, content) in found {
            self.put(&format!("{}/{path}", prefix.trim_end_matches('/')), content);
        }
        Ok(())
    }

    /// Stops serving `path` (404 from now on).
    pub fn remove(&self, path: &str) {
        self.files
            .lock()
            .expect("mirror files")
            .content
            .remove(path.trim_start_matches('/'));
    }

    /// Every request answered so far, in order.
    pub fn log(&self) -> Vec<Served> {
        self.log.lock().expect("mirror log").clone()
    }

    /// Returns the log and starts a new one.
    pub fn take_log(&self) -> Vec<Served> {
        std::mem::take(&mut *self.log.lock().expect("mirror log"))
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request; every answer closes the connection.
fn answer(
    stream: TcpStream,
    files: &Mutex<Files>,
    log: &Mutex<Vec<Served>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?.take(64 * 1024));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let mut if_none_match = None;
    let mut conditional = false;
    // Headers, bounded by the 64 KiB read limit above.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            if name == "if-none-match" {
                if_none_match = Some(value.trim().to_owned());
                conditional = true;
            } else if name == "if-modified-since" {
                conditional = true;
            }
        }
    }
    let path = target.split('?').next().unwrap_or("/").to_owned();
    let found = files
        .lock()
        .expect("mirror files")
        .content
        .get(path.trim_start_matches('/'))
        .cloned();
    let mut stream = stream;
    let (status, body): (u16, Vec<u8>) = match (method, found) {
        ("GET" | "HEAD", Some((content, generation))) => {
            let etag = format!(
                "\"{}-{generation}\"",
                &hex::encode(Sha256::digest(&content))[..16]
            );
            // A fixed date: If-Modified-Since alone never decides here, the ETag does.
            let headers =
                format!("ETag: {etag}\r\nLast-Modified: Thu, 01 Jan 2026 00:00:00 GMT\r\n");
            if if_none_match.as_deref() == Some(etag.as_str()) {
                write!(
                    stream,
                    "HTTP/1.1 304 Not Modified\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
                )?;
                (304, Vec::new())
            } else {
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    content.len()
                )?;
                if method == "GET" {
                    stream.write_all(&content)?;
                }
                (200, content)
            }
        }
        ("GET" | "HEAD", None) => {
            write!(
                stream,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            (404, Vec::new())
        }
        _ => {
            write!(
                stream,
                "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            (405, Vec::new())
        }
    };
    stream.flush()?;
    log.lock().expect("mirror log").push(Served {
        path,
        status,
        bytes: body.len() as u64,
        conditional,
    });
    Ok(())
}

/// One binary package stanza of a `Packages` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza {
    /// `Package`.
    pub package: String,
    /// `Version`.
    pub version: String,
    /// `Architecture` (Debian's name, `amd64`).
    pub architecture: String,
}

impl Stanza {
    /// A stanza.
    pub fn new(package: &str, version: &str, architecture: &str) -> Self {
        Self {
            package: package.to_owned(),
            version: version.to_owned(),
            architecture: architecture.to_owned(),
        }
    }
}

/// The files of one apt suite with one component and architecture: `dists/<suite>/<component>/
/// binary-<arch>/Packages.xz` (compressed by the real `xz`; `.gz` by flate2 when `gzip_only`) and
/// an unsigned `dists/<suite>/InRelease` listing its size and SHA-256 (and `Valid-Until` when
/// given). Paths are relative to the mirror's base.
pub fn apt_suite(
    suite: &str,
    component: &str,
    arch: &str,
    stanzas: &[Stanza],
    valid_until: Option<&str>,
    gzip_only: bool,
) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    let mut text = String::new();
    for stanza in stanzas {
        text.push_str(&format!(
            "Package: {}\nSource: linux\nVersion: {}\nInstalled-Size: 1\nMaintainer: Debian Kernel Team <debian-kernel@lists.debian.org>\nArchitecture: {}\nDescription: {}\n a fixture package\n\n",
            stanza.package, stanza.version, stanza.architecture, stanza.package
        ));
    }
    let (name, compressed) = if gzip_only {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(text.as_bytes())?;
        ("Packages.gz", encoder.finish()?)
    } else {
        let mut child = Command::new("xz")
            .args(["-c", "-6"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("running xz (apt-get install xz-utils): {e}"),
                )
            })?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let input = text.clone().into_bytes();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let output = child.wait_with_output()?;
        writer.join().expect("xz writer thread")?;
        if !output.status.success() {
            return Err(std::io::Error::other("xz failed"));
        }
        ("Packages.xz", output.stdout)
    };
    let packages_path = format!("{component}/binary-{arch}/{name}");
    let mut release = format!(
        "Origin: Fixture\nLabel: Fixture\nSuite: {suite}\nCodename: {suite}\nDate: Thu, 01 Jan 2026 00:00:00 UTC\n"
    );
    if let Some(until) = valid_until {
        release.push_str(&format!("Valid-Until: {until}\n"));
    }
    release.push_str(&format!(
        "Architectures: {arch}\nComponents: {component}\nSHA256:\n {} {:>8} {packages_path}\n",
        hex::encode(Sha256::digest(&compressed)),
        compressed.len()
    ));
    let mut files = BTreeMap::new();
    files.insert(format!("dists/{suite}/InRelease"), release.into_bytes());
    files.insert(format!("dists/{suite}/{packages_path}"), compressed);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(url: &str, etag: Option<&str>) -> (u16, String, Option<String>) {
        let address = url.trim_start_matches("http://");
        let (host, path) = address.split_once('/').unwrap();
        let mut stream = TcpStream::connect(host).unwrap();
        let condition = etag
            .map(|e| format!("If-None-Match: {e}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\n{condition}\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response[9..12].parse().unwrap();
        let etag = response
            .lines()
            .find_map(|l| l.strip_prefix("ETag: "))
            .map(str::to_owned);
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (status, body, etag)
    }

    #[test]
    fn serves_files_with_etags_and_logs_requests() {
        let mirror = Mirror::start().unwrap();
        mirror.put("a/b.txt", b"hello".to_vec());
        let (status, body, etag) = get(&format!("{}/a/b.txt", mirror.url()), None);
        assert_eq!((status, body.as_str()), (200, "hello"));
        let (status, _, _) = get(&format!("{}/a/b.txt", mirror.url()), etag.as_deref());
        assert_eq!(status, 304);
        mirror.put("a/b.txt", b"changed".to_vec());
        let (status, body, _) = get(&format!("{}/a/b.txt", mirror.url()), etag.as_deref());
        assert_eq!((status, body.as_str()), (200, "changed"));
        assert_eq!(get(&format!("{}/nope", mirror.url()), None).0, 404);
        let log = mirror.log();
        assert_eq!(
            log.iter().map(|s| s.status).collect::<Vec<_>>(),
            [200, 304, 200, 404]
        );
        assert!(log[1].conditional && !log[0].conditional);
        assert_eq!(log[0].bytes, 5);
    }

    #[test]
    fn apt_suites_list_their_packages_digest() {
        let files = apt_suite(
            "bookworm",
            "main",
            "amd64",
            &[Stanza::new(
                "linux-image-6.1.0-47-amd64",
                "6.1.158-1",
                "amd64",
            )],
            None,
            false,
        )
        .unwrap();
        let packages = &files["dists/bookworm/main/binary-amd64/Packages.xz"];
        let release = String::from_utf8(files["dists/bookworm/InRelease"].clone()).unwrap();
        assert!(
            release.contains(&hex::encode(Sha256::digest(packages))),
            "{release}"
        );
        assert!(packages.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]));
    }
}
