//! A loopback TCP proxy in front of a server, to make the network fail on purpose: it can cut
//! a connection in the middle of a PATCH's body (once), and it can refuse connections for a
//! while before it forwards.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::registry::free_port;

/// A proxy on a loopback port forwarding to `127.0.0.1:TARGET`, stopped when dropped.
pub struct CutProxy {
    /// Its port on 127.0.0.1.
    pub port: u16,
    state: Arc<State>,
}

struct State {
    target: u16,
    /// Cut the PATCH with this number (1 for the first one the proxy sees) ...
    cut_patch: usize,
    /// ... after forwarding this many bytes of its body.
    cut_after: usize,
    patches: AtomicUsize,
    cuts: AtomicUsize,
    connections: AtomicUsize,
    stop: AtomicBool,
}

impl CutProxy {
    /// Forwards everything; with `Some((n, bytes))`, the `n`-th PATCH request (counted from 1)
    /// has its connection cut, both ways, after `bytes` bytes of its body were forwarded. Only
    /// that one: later PATCHes go through.
    pub fn start(target: u16, cut: Option<(usize, usize)>) -> CutProxy {
        CutProxy::spawn(target, cut, Duration::ZERO)
    }

    /// Refuses connections (nothing listens on its port) for `down`, then forwards.
    pub fn start_down_for(target: u16, down: Duration) -> CutProxy {
        CutProxy::spawn(target, None, down)
    }

    fn spawn(target: u16, cut: Option<(usize, usize)>, down: Duration) -> CutProxy {
        let (cut_patch, cut_after) = cut.unwrap_or((0, 0));
        let state = Arc::new(State {
            target,
            cut_patch,
            cut_after,
            patches: AtomicUsize::new(0),
            cuts: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let port = free_port();
        let listener = if down.is_zero() {
            Some(TcpListener::bind(("127.0.0.1", port)).unwrap())
        } else {
            None
        };
        let shared = state.clone();
        thread::spawn(move || {
            let listener = listener.unwrap_or_else(|| {
                thread::sleep(down);
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    match TcpListener::bind(("127.0.0.1", port)) {
                        Ok(l) => break l,
                        Err(_) if Instant::now() < deadline => {
                            thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => panic!("proxy cannot bind 127.0.0.1:{port}: {e}"),
                    }
                }
            });
            for client in listener.incoming() {
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let shared = shared.clone();
                thread::spawn(move || {
                    let _ = forward(client, &shared);
                });
            }
        });
        CutProxy { port, state }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Connections cut so far (0 or 1).
    pub fn cuts(&self) -> usize {
        self.state.cuts.load(Ordering::SeqCst)
    }

    /// PATCH requests seen so far (the cut one included).
    pub fn patches(&self) -> usize {
        self.state.patches.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Forwards one client connection: answers straight back, requests parsed enough (head and
/// `Content-Length` body) to count PATCHes and cut the chosen one.
fn forward(client: TcpStream, state: &State) -> io::Result<()> {
    let server = TcpStream::connect(("127.0.0.1", state.target))?;
    {
        let (mut from, mut to) = (server.try_clone()?, client.try_clone()?);
        thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    }
    let mut reader = BufReader::new(client.try_clone()?);
    let mut upstream = server.try_clone()?;
    loop {
        let mut head = Vec::new();
        loop {
            let n = reader.read_until(b'\n', &mut head)?;
            if n == 0 {
                let _ = server.shutdown(Shutdown::Write);
                return Ok(());
            }
            if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
                break;
            }
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let method = text.split(' ').next().unwrap_or_default().to_string();
        let header = |name: &str| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        upstream.write_all(&head)?;
        if header("transfer-encoding").is_some() {
            // Not parsed: the rest of the connection goes through as it is.
            io::copy(&mut reader, &mut upstream)?;
            return Ok(());
        }
        let length: u64 = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if method == "PATCH" {
            let number = state.patches.fetch_add(1, Ordering::SeqCst) + 1;
            if number == state.cut_patch {
                let keep = (state.cut_after as u64).min(length);
                io::copy(&mut (&mut reader).take(keep), &mut upstream)?;
                upstream.flush()?;
                // Let the server read what it got before the connection goes.
                thread::sleep(Duration::from_millis(100));
                state.cuts.fetch_add(1, Ordering::SeqCst);
                let _ = server.shutdown(Shutdown::Both);
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
        }
        io::copy(&mut (&mut reader).take(length), &mut upstream)?;
    }
}
