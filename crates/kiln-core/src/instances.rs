//! Instances kept after a failure (`terminateInstanceOnFailure: false`), for debugging.
//!
//! A kept instance lives in `$KILN_HOME/instances/ID/` with an `instance.json` that says how to
//! reach it. A VM is the very VM that failed: its keeper is told to outlive kiln and its folder
//! (overlay, sockets, console) moves here. A sandbox keeps the failed filesystem exactly (its
//! writable layer moves here, over the same read-only layers) in a new set of namespaces whose
//! PID 1 waits; the processes of the failed step are gone.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use kiln_instance::BuilderKind;

use crate::record::State;
use crate::store::{read_json, write_json, Home};

/// A kept instance, as `instance.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeptInstance {
    /// Short id (`kiln instance shell ID`).
    pub id: String,
    /// Sandbox or VM.
    pub kind: BuilderKind,
    /// The build it belongs to (`NAME/VERSION/BUILD`).
    pub build: String,
    /// BUILDING or TESTING.
    pub stage: State,
    /// When it was kept.
    pub kept_at: DateTime<Utc>,
    /// The process that holds it: the namespaces' PID 1 (sandbox) or the keeper (VM).
    pub pid: u32,
    /// Its folder.
    pub dir: PathBuf,
    /// For a VM: the QEMU guest agent's socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qga_socket: Option<PathBuf>,
    /// For a VM: the serial console log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<PathBuf>,
}

impl KeptInstance {
    /// True while its process runs (a killed keeper can linger as a zombie: that is not alive).
    pub fn alive(&self) -> bool {
        kiln_instance::process::is_alive(self.pid as i32)
    }

    /// How a person gets a shell in it.
    pub fn shell_hint(&self) -> String {
        match self.kind {
            BuilderKind::Sandbox => format!(
                "kiln instance shell {} (or: nsenter --target {} --all /bin/sh)",
                self.id, self.pid
            ),
            BuilderKind::Vm => format!(
                "kiln instance shell {} (commands through the guest agent; console log: {})",
                self.id,
                self.console
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        }
    }
}

/// Errors of kept instances.
#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    /// A file operation failed.
    #[error("{0}")]
    Io(String),
    /// No such instance.
    #[error("no kept instance `{0}` (`kiln instance list` shows them)")]
    NotFound(String),
}

/// The registry of kept instances of a data directory.
pub struct Instances {
    root: PathBuf,
}

impl Instances {
    /// The registry of `home`.
    pub fn new(home: &Home) -> Self {
        Instances {
            root: home.root.join("instances"),
        }
    }

    /// The folder a new kept instance gets.
    pub fn dir_of(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Records a kept instance.
    pub fn add(&self, k: &KeptInstance) -> Result<(), KeepError> {
        write_json(&self.dir_of(&k.id).join("instance.json"), k)
            .map_err(|e| KeepError::Io(e.to_string()))
    }

    /// Every kept instance, oldest first.
    pub fn list(&self) -> Vec<KeptInstance> {
        let mut out: Vec<KeptInstance> = std::fs::read_dir(&self.root)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| read_json(&e.path().join("instance.json")).ok().flatten())
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|k| k.kept_at);
        out
    }

    /// One kept instance.
    pub fn get(&self, id: &str) -> Result<KeptInstance, KeepError> {
        read_json(&self.dir_of(id).join("instance.json"))
            .ok()
            .flatten()
            .ok_or_else(|| KeepError::NotFound(id.to_string()))
    }

    /// Stops a kept instance and removes everything it had.
    pub fn stop(&self, id: &str) -> Result<(), KeepError> {
        let k = self.get(id)?;
        if k.alive() {
            match k.kind {
                // PID 1 of the namespace: the kernel kills everything in it.
                BuilderKind::Sandbox => kiln_instance::process::kill_now(k.pid, false),
                // The keeper leads QEMU's process group.
                BuilderKind::Vm => kiln_instance::process::kill_now(k.pid, true),
            }
            for _ in 0..100 {
                if !k.alive() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        kiln_instance::vm::remove_sockets_under(&k.dir);
        crate::store::remove_tree(&k.dir);
        if k.dir.exists() {
            return Err(KeepError::Io(format!(
                "{} could not be removed completely",
                k.dir.display()
            )));
        }
        Ok(())
    }
}
