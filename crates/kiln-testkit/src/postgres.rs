//! A real PostgreSQL for tests: a throwaway cluster (Debian's `postgresql` package, `initdb`
//! and `pg_ctl` from `/usr/lib/postgresql/N/bin`) listening on a free loopback port, its data,
//! socket and log in a temporary folder, stopped and removed when dropped.
//!
//! PostgreSQL refuses to run as root: when the tests run as root, the server's programs run as
//! the `postgres` user (which the package creates), and the folder is handed to it. Local
//! connections are trusted (no password), so [`Cluster::url`] has none. The cluster trades
//! durability against a crash of the machine for speed (`fsync=off`, `full_page_writes=off`):
//! what it committed survives a crash of the server ([`Cluster::restart_immediate`]), as
//! commits wait for their WAL to be written (`synchronous_commit` stays on), not for a crash
//! of the machine.
//!
//! A cluster kept in a `static` is never dropped; a watchdog process (a shell waiting on a pipe
//! from the test process) stops the server and removes the folder when the test process ends,
//! however it ends.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use crate::registry::free_port;

/// The watchdog: waits for its standard input to close (the test process ended, or dropped
/// the cluster), then stops the server in `$1/data` at once (SIGQUIT is PostgreSQL's immediate
/// shutdown) and removes `$1`.
const WATCHDOG: &str = r#"
cat >/dev/null
pid=$(head -n 1 "$1/data/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ] && kill -QUIT "$pid" 2>/dev/null; then
  i=0
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
fi
rm -rf "$1"
"#;

/// A running PostgreSQL cluster on 127.0.0.1, stopped and removed when dropped.
pub struct Cluster {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The folder of `data/` (the cluster), `sock/` (its Unix socket) and `log`.
    dir: Option<tempfile::TempDir>,
    /// The server's programs.
    bin: PathBuf,
    /// The user and group the server's programs run as, when this process is root.
    owner: Option<(u32, u32)>,
    /// The watchdog, and the pipe whose closing wakes it.
    watchdog: Option<(Child, ChildStdin)>,
}

impl Cluster {
    /// Makes and starts a new cluster (a few seconds); panics, saying why, when it cannot.
    pub fn start() -> Cluster {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("kiln-pg-")
            .tempdir()
            .unwrap();
        // Who this process is: the owner of what it just made.
        let me = fs::metadata(dir.path()).unwrap().uid();
        let owner = (me == 0).then(postgres_user);
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut cluster = Cluster {
            port: 0,
            dir: Some(dir),
            bin,
            owner,
            watchdog: None,
        };
        cluster.watchdog = Some(cluster.spawn_watchdog());
        fs::create_dir(cluster.dir().join("sock")).unwrap();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(cluster.dir().join("sock"), Some(uid), Some(gid)).unwrap();
        }
        let data = cluster.dir().join("data");
        cluster.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "--no-locale".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-sync".as_ref(),
                "--no-instructions".as_ref(),
            ],
        );
        // A free port can be taken by someone else before the server binds it: try another.
        for attempt in 1..=5 {
            cluster.port = free_port();
            if cluster.try_start() {
                return cluster;
            }
            let log = cluster.log();
            assert!(
                attempt < 5 && log.contains("could not bind"),
                "PostgreSQL did not start on 127.0.0.1:{}:\n{log}",
                cluster.port
            );
        }
        unreachable!("the loop returns or panics")
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB` (trusted: no password).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates an empty database `name` (owned by `postgres`).
    pub fn create_database(&self, name: &str) {
        let port = self.port.to_string();
        self.run(
            "createdb",
            &[
                "-h".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                name.as_ref(),
            ],
        );
    }

    /// Runs `sql` in database `db` with `psql` (stopping at the first error) and returns what
    /// it printed: unaligned, tuples only, one row a line.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let port = self.port.to_string();
        self.run(
            "psql",
            &[
                "-X".as_ref(),
                "-q".as_ref(),
                "-A".as_ref(),
                "-t".as_ref(),
                "-v".as_ref(),
                "ON_ERROR_STOP=1".as_ref(),
                "-h".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-d".as_ref(),
                db.as_ref(),
                "-c".as_ref(),
                sql.as_ref(),
            ],
        )
    }

    /// Stops the server as a crash would (`pg_ctl -m immediate`: no checkpoint, every
    /// connection cut) and starts it again on the same port; it recovers from its log.
    pub fn restart_immediate(&self) {
        let data = self.dir().join("data");
        let log = self.dir().join("log");
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "restart".as_ref(),
            ],
        );
    }

    /// Gives `path` to the user the server runs as (when it is not this process's), so that
    /// the server can write there: a tablespace's folder, say.
    pub fn hand_over(&self, path: &Path) {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir().join("log")).unwrap_or_default()
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("the cluster's folder").path()
    }

    /// `pg_ctl start` on `self.port`; false when the server did not come up.
    fn try_start(&self) -> bool {
        let data = self.dir().join("data");
        let log = self.dir().join("log");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c full_page_writes=off \
             -c max_connections=200",
            self.port,
            self.dir().join("sock").display()
        );
        let (ok, _) = self.try_run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-o".as_ref(),
                options.as_ref(),
                "start".as_ref(),
            ],
        );
        ok
    }

    /// Runs one of the server's programs and returns its standard output; panics with its
    /// output when it fails.
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> String {
        let (ok, output) = self.try_run(program, args);
        assert!(ok, "{program} {args:?} failed:\n{output}");
        output
    }

    /// Runs a program of the server as its user, in the cluster's folder, with a clean
    /// environment; whether it succeeded, and its output (standard error after standard output).
    fn try_run(&self, program: &str, args: &[&std::ffi::OsStr]) -> (bool, String) {
        // Output goes through files: `pg_ctl start` leaves a server running that must not hold
        // a pipe of this process open.
        let out = tempfile::NamedTempFile::new_in(self.dir()).unwrap();
        let err = tempfile::NamedTempFile::new_in(self.dir()).unwrap();
        let mut command = Command::new(self.bin.join(program));
        command
            .args(args)
            .current_dir(self.dir())
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", self.bin.display()))
            .env("LC_ALL", "C")
            .env("HOME", self.dir())
            .stdin(Stdio::null())
            .stdout(out.reopen().unwrap())
            .stderr(err.reopen().unwrap());
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        let status = command
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.join(program).display()));
        let mut output = String::new();
        for file in [&out, &err] {
            let mut text = String::new();
            let _ = file.reopen().unwrap().read_to_string(&mut text);
            output.push_str(&text);
        }
        (status.success(), output)
    }

    fn spawn_watchdog(&self) -> (Child, ChildStdin) {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("kiln-pg-watchdog")
            .arg(self.dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that a Ctrl-C of the tests does not stop it too.
            .process_group(0)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        (child, stdin)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir().join("data");
        let (stopped, output) = self.try_run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-w".as_ref(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "stop".as_ref(),
            ],
        );
        if !stopped {
            eprintln!("pg_ctl stop failed (the watchdog stops the server):\n{output}");
        }
        // Closing its pipe wakes the watchdog, which removes whatever is left.
        if let Some((mut child, mut stdin)) = self.watchdog.take() {
            let _ = stdin.flush();
            drop(stdin);
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// The newest installed PostgreSQL's programs, such as `/usr/lib/postgresql/15/bin`.
fn bin_dir() -> PathBuf {
    let installed = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max();
    match installed {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); run \
             `scripts/setup --test` as root to install the test tools (Debian's postgresql)"
        ),
    }
}

/// The uid and gid of the `postgres` user, which Debian's `postgresql` package creates.
fn postgres_user() -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields[..] {
                ["postgres", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
                _ => None,
            }
        })
        .unwrap_or_else(|| {
            panic!(
                "the tests run as root and PostgreSQL refuses to, but there is no `postgres` \
                 user to run it as; run `scripts/setup --test` as root (Debian's postgresql \
                 package creates it)"
            )
        })
}
