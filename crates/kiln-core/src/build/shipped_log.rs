//! A queued build's log sent to the store as it is written, so that any server shows it
//! (`kiln image logs`, the API's log stream, the console's live log) whichever host runs the
//! build: its lines every [`SHIP_EVERY`], its other log files (each component's, the
//! parent's, the tests') when the attempt ends.
//!
//! Every write names the worker's lease: once the attempt was taken from the worker, the store
//! refuses its lines and the outbox stops. A store that cannot be reached for a while (a
//! database restart) delays lines, never loses them: they wait for the next try.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_store::{BuildLogs, Lease, StoreError};

use super::log::BUILD_LOG;

/// How often a worker sends the lines written since the last time.
pub const SHIP_EVERY: Duration = Duration::from_millis(500);

/// Most lines that wait while the store cannot be reached; older ones are dropped, saying so.
const MOST_WAITING: usize = 50_000;

/// Most log files an attempt sends, and how deep in its log folder they are looked for.
const MOST_FILES: usize = 200;

/// The lines of a build's log not yet in the store.
#[derive(Default)]
pub struct LogOutbox {
    waiting: Mutex<Vec<String>>,
    dropped: Mutex<u64>,
    refused: AtomicBool,
}

impl LogOutbox {
    /// Holds a line until the next [`LogOutbox::flush`].
    pub fn push(&self, line: String) {
        if self.refused.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(mut w) = self.waiting.lock() {
            if w.len() >= MOST_WAITING {
                w.remove(0);
                if let Ok(mut d) = self.dropped.lock() {
                    *d += 1;
                }
            }
            w.push(line);
        }
    }

    /// Sends the waiting lines under `lease`; false once the store refused them (the attempt
    /// is not this worker's any more), after which lines are dropped. A line sent fails
    /// together with its batch and is tried again next time, so none is lost or repeated.
    pub async fn flush(&self, logs: &dyn BuildLogs, lease: &Lease) -> bool {
        if self.refused.load(Ordering::Relaxed) {
            return false;
        }
        let mut batch = self
            .waiting
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        let dropped = self
            .dropped
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or(0);
        if dropped > 0 {
            batch.insert(
                0,
                format!("[kiln: {dropped} line(s) dropped while the store could not be reached]"),
            );
        }
        if batch.is_empty() {
            return true;
        }
        match logs.append_log(lease, &batch).await {
            Ok(_) => true,
            Err(StoreError::LeaseLost { .. }) => {
                self.refused.store(true, Ordering::Relaxed);
                false
            }
            Err(e) => {
                tracing::debug!(job = %lease.job, error = %e, "cannot send the build log yet");
                if let Ok(mut w) = self.waiting.lock() {
                    batch.append(&mut w);
                    *w = batch;
                }
                true
            }
        }
    }

    /// Sends the waiting lines every [`SHIP_EVERY`] until dropped (the caller stops it).
    pub async fn run(self: Arc<Self>, logs: crate::state::Store, lease: Lease) {
        loop {
            tokio::time::sleep(SHIP_EVERY).await;
            if !self.flush(logs.logs(), &lease).await {
                return;
            }
        }
    }

    /// Sends what is left at the end of an attempt, trying for up to `patience` while the
    /// store cannot be reached.
    pub async fn finish(&self, logs: &dyn BuildLogs, lease: &Lease, patience: Duration) {
        let until = tokio::time::Instant::now() + patience;
        loop {
            if !self.flush(logs, lease).await {
                return;
            }
            let empty = self.waiting.lock().map(|w| w.is_empty()).unwrap_or(true);
            if empty || tokio::time::Instant::now() >= until {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Sends the log files of the folder `dir` (all but the build log, whose lines went already)
/// under `lease`, each named by its path in the folder; how many went.
pub async fn ship_files(logs: &dyn BuildLogs, lease: &Lease, dir: &Path) -> usize {
    let mut sent = 0;
    for (name, path) in log_files(dir) {
        let text = match std::fs::read(&path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(_) => continue,
        };
        match logs.put_log_file(lease, &name, &text).await {
            Ok(()) => sent += 1,
            Err(StoreError::LeaseLost { .. }) => break,
            Err(e) => {
                tracing::warn!(job = %lease.job, file = %name, error = %e, "cannot send a log file");
            }
        }
    }
    sent
}

/// The files of a build's log folder and one level below, by their path in it, sorted.
fn log_files(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    let entries = |d: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(d)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    for p in entries(dir) {
        let Some(top) = name(&p) else { continue };
        if p.is_dir() {
            for q in entries(&p) {
                if let (true, Some(n)) = (q.is_file(), name(&q)) {
                    out.push((format!("{top}/{n}"), q));
                }
            }
        } else if p.is_file() && top != BUILD_LOG {
            out.push((top, p));
        }
    }
    out.sort();
    out.truncate(MOST_FILES);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_folder_is_sent_but_its_build_log() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(BUILD_LOG), "lines").unwrap();
        std::fs::write(d.path().join("parent.log"), "p").unwrap();
        std::fs::create_dir(d.path().join("build-01-hello")).unwrap();
        std::fs::write(d.path().join("build-01-hello/console.log"), "c").unwrap();
        let names: Vec<String> = log_files(d.path()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["build-01-hello/console.log", "parent.log"]);
    }
}
