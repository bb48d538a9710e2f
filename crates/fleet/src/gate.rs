//! The start gate of nodes booted together. Their VMs start in the same instant, but under TCG on a
//! shared machine their boots end seconds apart, and an on-demand build with warm caches takes
//! seconds too: without the gate, "booted together" would not mean "asked together". Each gated
//! node's init, once its network is up, sends `GET /start/<node>` to the gate and blocks on the
//! answer; the gate answers every node at once when the last one has arrived, so the loaders start
//! within moments of each other.
//!
//! The node finds the gate on its kernel command line ([`KERNEL_PARAMETER`]); a node booted without
//! it starts its loader at once. A node that never arrives (it crashed while booting) holds the
//! others at most [`START_GATE_TIMEOUT`]; they are then released anyway, so the scenario's own
//! assertions report what happened instead of a hang.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::service::GUEST_HOST_ADDRESS;

/// The kernel command-line parameter holding the gate's URL (a dotted name, so the kernel leaves it
/// to user space without complaint).
pub const KERNEL_PARAMETER: &str = "fleet.start";
/// The node's console line after the gate: `FLEET-START open` when the gate answered, `failed`
/// when it did not (the loader then runs anyway).
pub const START_MARKER: &str = "FLEET-START";
/// Longest the gate holds the nodes that arrived for one that has not: well above the slowest boot
/// the scenarios have (an arm64 kernel under TCG), spent only when a node never comes.
pub const START_GATE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Longest a node may take to send its request line once connected.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Enough for busybox wget's request headers.
const MAX_REQUEST: usize = 4096;

/// A listening gate, before any node has arrived.
#[derive(Debug)]
pub struct StartGate {
    listener: TcpListener,
    port: u16,
}

/// Who came through the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The node names that arrived, in arrival order.
    pub arrived: Vec<String>,
    /// From the first arrival to the release: how far apart the boots ended.
    pub held: Duration,
    /// Why the gate stopped waiting before everyone came, if it did.
    pub error: Option<String>,
}

impl StartGate {
    /// Listens on a free loopback port (the nodes reach it as [`GUEST_HOST_ADDRESS`]).
    pub fn open() -> Result<StartGate> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the start gate")?;
        let port = listener.local_addr()?.port();
        listener
            .set_nonblocking(true)
            .context("making the start gate non-blocking")?;
        Ok(StartGate { listener, port })
    }

    /// The kernel command-line word that makes a node wait at this gate.
    pub fn kernel_argument(&self) -> String {
        format!(
            "{KERNEL_PARAMETER}=http://{GUEST_HOST_ADDRESS}:{}/start/",
            self.port
        )
    }

    /// Waits until `expected` nodes have arrived or `timeout` has passed, then answers every node
    /// that arrived in one go.
    pub fn release(self, expected: usize, timeout: Duration) -> Released {
        let deadline = Instant::now() + timeout;
        let mut waiting: Vec<(String, TcpStream)> = Vec::new();
        let mut first_arrival = None;
        let mut error = None;
        while waiting.len() < expected {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    // Anything that is not a node's gate request (a stray connection) is dropped
                    // rather than counted.
                    if let Some(name) = read_gate_request(&stream) {
                        first_arrival.get_or_insert_with(Instant::now);
                        waiting.push((name, stream));
                    }
                }
                Err(accept) if accept.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        error = Some(format!(
                            "{} of {expected} nodes arrived within {timeout:?}",
                            waiting.len()
                        ));
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(accept) => {
                    error = Some(format!("accepting at the start gate: {accept}"));
                    break;
                }
            }
        }
        let held = first_arrival.map(|at| at.elapsed()).unwrap_or_default();
        let mut arrived = Vec::with_capacity(waiting.len());
        for (name, mut stream) in waiting {
            // A node whose answer cannot be written has given up waiting; it reports `failed`.
            let _ = stream
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            arrived.push(name);
        }
        Released {
            arrived,
            held,
            error,
        }
    }
}

/// The node name of a `GET /start/<name>` request, read to the end of its headers (answering and
/// closing with unread request bytes would reset the connection under the answer).
fn read_gate_request(stream: &TcpStream) -> Option<String> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(REQUEST_READ_TIMEOUT)).ok()?;
    let mut request = Vec::new();
    let mut buffer = [0u8; 512];
    let mut reader = stream;
    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = reader.read(&mut buffer).ok()?;
        if read == 0 || request.len() + read > MAX_REQUEST {
            return None;
        }
        request.extend_from_slice(&buffer[..read]);
    }
    parse_gate_request(&String::from_utf8_lossy(&request))
}

/// `GET /start/<name> HTTP/1.x` -> `<name>`.
fn parse_gate_request(request: &str) -> Option<String> {
    let mut words = request.lines().next()?.split_whitespace();
    let (method, path) = (words.next()?, words.next()?);
    let name = path.strip_prefix("/start/")?;
    (method == "GET" && !name.is_empty()).then(|| name.to_owned())
}

/// `name` as the URL path segment a node sends (node names are short file-name words; anything
/// else is replaced so the request line stays one word).
pub fn path_segment(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The init command that waits at the gate named on the kernel command line (if any) before the
/// loader runs, announcing the result with [`START_MARKER`].
pub fn init_command(node_name: &str) -> String {
    format!(
        "gate=$(sed -n 's/.*{KERNEL_PARAMETER}=\\([^ ]*\\).*/\\1/p' /proc/cmdline); \
         if [ -n \"$gate\" ]; then \
         if wget -q -O /dev/null \"${{gate}}{segment}\"; then echo \"{START_MARKER} open\"; \
         else echo \"{START_MARKER} failed\"; fi; fi",
        segment = path_segment(node_name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_requests_name_their_node() {
        assert_eq!(
            parse_gate_request(
                "GET /start/herd-2 HTTP/1.1\r\nHost: 10.0.2.2:4000\r\nUser-Agent: Wget\r\n\r\n"
            ),
            Some("herd-2".to_owned())
        );
        assert_eq!(parse_gate_request("GET /start/ HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse_gate_request("GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse_gate_request("POST /start/x HTTP/1.1\r\n\r\n"), None);
        assert_eq!(path_segment("arm64 gets/amd64"), "arm64_gets_amd64");
    }

    #[test]
    fn the_gate_answers_everyone_only_when_the_last_arrives() {
        let gate = StartGate::open().expect("gate");
        let port = gate.port;
        let release = std::thread::spawn(move || gate.release(2, Duration::from_secs(30)));
        let ask = |name: &str| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            write!(stream, "GET /start/{name} HTTP/1.0\r\nHost: gate\r\n\r\n").expect("send");
            stream
        };
        let mut first = ask("one");
        first
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut answer = String::new();
        assert!(
            first.read_to_string(&mut answer).is_err() && answer.is_empty(),
            "the first node must be held while the second boots: {answer:?}"
        );
        let mut second = ask("two");
        first.set_read_timeout(None).expect("timeout");
        answer.clear();
        first.read_to_string(&mut answer).expect("answer");
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        answer.clear();
        second.read_to_string(&mut answer).expect("answer");
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        let released = release.join().expect("gate thread");
        assert_eq!(released.arrived, ["one", "two"]);
        assert_eq!(released.error, None);
    }

    #[test]
    fn the_gate_gives_up_on_a_node_that_never_comes() {
        let gate = StartGate::open().expect("gate");
        let released = gate.release(1, Duration::from_millis(100));
        assert!(released.arrived.is_empty());
        assert!(released.error.is_some());
    }
}
