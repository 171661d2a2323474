//! A real OCI registry for tests: Debian's `docker-registry` (CNCF distribution) on a free
//! loopback port, its storage and log in a temporary folder, killed when dropped.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::require_tool;

/// A `docker-registry serve` on a free loopback port, killed when dropped.
pub struct Registry {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    /// An anonymous registry that deletes manifests when asked.
    pub fn start() -> Registry {
        Registry::start_with(None)
    }

    /// With `Some((user, password))`, the registry wants HTTP basic auth (htpasswd, bcrypt).
    pub fn start_with(user: Option<(&str, &str)>) -> Registry {
        Registry::spawn(user, true, "")
    }

    /// A registry as the CNCF server comes by default: it refuses to delete manifests.
    pub fn start_without_delete() -> Registry {
        Registry::spawn(None, false, "")
    }

    /// A registry that wants bearer tokens from the token service at `realm` (docker-registry's
    /// `auth: token`), signed by a key of the certificates in `rootcertbundle` for `issuer`;
    /// its `service` is its own `127.0.0.1:PORT`.
    pub fn start_token_auth(
        realm: &str,
        issuer: &str,
        rootcertbundle: &std::path::Path,
    ) -> Registry {
        let port = free_port();
        let auth = format!(
            "auth:\n  token:\n    realm: {realm}\n    service: 127.0.0.1:{port}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
            rootcertbundle.display()
        );
        Registry::spawn_on(port, None, true, &auth)
    }

    /// `extra` is appended to the config (an `auth:` section, say).
    pub fn spawn(user: Option<(&str, &str)>, delete: bool, extra: &str) -> Registry {
        Registry::spawn_on(free_port(), user, delete, extra)
    }

    /// [`Registry::spawn`] on a port chosen by the caller.
    pub fn spawn_on(port: u16, user: Option<(&str, &str)>, delete: bool, extra: &str) -> Registry {
        require_tool("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: {delete}\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: kiln-test\n",
            dir.path().join("data").display()
        );
        config.push_str(extra);
        if let Some((name, password)) = user {
            let hash = bcrypt::hash(password, 4).unwrap();
            fs::write(dir.path().join("htpasswd"), format!("{name}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config).unwrap();
        let child = serve(dir.path());
        let mut registry = Registry { child, port, dir };
        registry.wait_ready();
        registry
    }

    /// Kills the registry (as a crash would: no shutdown); its storage stays for [`Self::restart`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Serves the same storage on the same port again after [`Self::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.child = serve(self.dir.path());
        self.wait_ready();
    }

    /// Waits until it answers `/v2/` (or says why it did not).
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "docker-registry exited ({status}) before serving:\n{}",
                    self.log()
                );
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = write!(
                    s,
                    "GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                );
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 401") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on 127.0.0.1:{} within 30 s:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Everything it logged so far (its access log among it).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Requests in the access log whose request line starts with `start` (like
    /// `POST /v2/kiln/app/blobs/uploads/`).
    pub fn requests(&self, start: &str) -> usize {
        let needle = format!("\"{start}");
        self.log().lines().filter(|l| l.contains(&needle)).count()
    }

    /// The HTTP statuses of the requests [`Registry::requests`] counts, in order.
    pub fn statuses(&self, start: &str) -> Vec<u16> {
        let needle = format!("\"{start}");
        self.log()
            .lines()
            .filter_map(|l| {
                let (_, after) = l.split_once(&needle)?;
                let (_, after) = after.split_once("\" ")?;
                after.split(' ').next()?.parse().ok()
            })
            .collect()
    }

    /// kiln's requests of any method for the blobs of `repository` (checks, uploads,
    /// downloads); skopeo's, which a test makes to look, are left out.
    pub fn blob_requests(&self, repository: &str) -> usize {
        let path = format!(" /v2/{repository}/blobs/");
        let agent = format!("\"kiln/{}\"", env!("CARGO_PKG_VERSION"));
        self.log()
            .lines()
            .filter(|l| l.contains(&path) && l.ends_with(&agent))
            .count()
    }

    /// Blobs in the registry's storage.
    pub fn blob_count(&self) -> usize {
        let root = self.dir.path().join("data/docker/registry/v2/blobs/sha256");
        let Ok(prefixes) = fs::read_dir(&root) else {
            return 0;
        };
        prefixes
            .map(|p| fs::read_dir(p.unwrap().path()).unwrap().count())
            .sum()
    }

    /// The file where the registry keeps a blob.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `docker-registry serve` of the config in `dir`, logging (appending) to `dir/log`.
fn serve(dir: &std::path::Path) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .unwrap();
    Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
