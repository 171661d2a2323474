//! moto's S3-compatible server for tests (installed by `scripts/setup --test`), on a free port
//! of 127.0.0.1, stopped when dropped. Shared by kiln's and kiln-toe's tests (`#[path]`).

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let tools = std::env::var("KILN_TEST_TOOLS").unwrap_or_else(|_| "/opt/kiln-test".into());
    let p = PathBuf::from(tools).join("venv/bin/moto_server");
    assert!(
        p.exists(),
        "moto's S3 server is not installed at {}: run `scripts/setup --test` first",
        p.display()
    );
    p
}

impl Moto {
    /// Starts moto and waits until it listens.
    pub fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
        }
    }

    /// One unsigned request (moto takes them for buckets and uploads, not for reads); returns
    /// the status and body.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        let head_end = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP answer");
        let head = String::from_utf8_lossy(&answer[..head_end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status code");
        (status, answer[head_end + 4..].to_vec())
    }

    /// kiln's S3 settings for this server (moto takes any credentials).
    pub fn config(&self) -> kiln_s3::S3Config {
        kiln_s3::S3Config {
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".into(),
            credentials: Some(kiln_s3::Credentials {
                access_key_id: "testing".into(),
                secret_access_key: "testing".into(),
                session_token: None,
            }),
            path_style: true,
        }
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, name: &str) {
        let (status, body) = self.request("PUT", &format!("/{name}"), b"");
        assert!(
            (200..300).contains(&status),
            "creating bucket {name}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
}
