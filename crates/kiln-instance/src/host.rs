//! The host instance: runs steps on the local machine, as `awstoe run` does.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::process::Command;

use crate::fileops::{self, FileOp, FileOpOutput};
use crate::{process, ExecOutcome, ExecRequest, Instance, InstanceError, InstanceKind, OutputSink};

/// The local machine as an instance. Relative paths resolve against its working directory.
#[derive(Debug, Clone)]
pub struct HostInstance {
    id: String,
    cwd: PathBuf,
}

impl HostInstance {
    /// A host instance whose relative paths resolve against `cwd`.
    pub fn new(cwd: impl Into<PathBuf>) -> Self {
        HostInstance {
            id: "host".to_string(),
            cwd: cwd.into(),
        }
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.cwd.join(p)
        }
    }
}

#[async_trait]
impl Instance for HostInstance {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> InstanceKind {
        InstanceKind::Host
    }

    async fn exec(
        &self,
        req: &ExecRequest,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutcome, InstanceError> {
        let mut cmd = Command::new(&req.program);
        cmd.args(&req.args);
        cmd.envs(req.env.iter().map(|(k, v)| (k, v)));
        cmd.current_dir(match &req.cwd {
            Some(dir) => self.resolve(dir),
            None => self.cwd.clone(),
        });
        process::run(cmd, &req.program, req.timeout, sink).await
    }

    async fn file_op(&self, op: &FileOp) -> Result<FileOpOutput, InstanceError> {
        let op = op.clone();
        let cwd = self.cwd.clone();
        // File operations block (large copies); keep them off the async workers.
        tokio::task::spawn_blocking(move || fileops::apply(&op, &cwd))
            .await
            .map_err(|e| InstanceError::Op(format!("file operation did not finish: {e}")))?
    }

    async fn put_file(&self, host_src: &Path, dest: &str, mode: u32) -> Result<(), InstanceError> {
        let dest = self.resolve(dest);
        let src = host_src.to_path_buf();
        tokio::task::spawn_blocking(move || fileops::install_file(&src, &dest, mode))
            .await
            .map_err(|e| InstanceError::Op(format!("copy did not finish: {e}")))?
    }

    async fn get_file(&self, src: &str, host_dest: &Path) -> Result<(), InstanceError> {
        let src = self.resolve(src);
        let dest = host_dest.to_path_buf();
        tokio::task::spawn_blocking(move || fileops::install_file(&src, &dest, 0o644))
            .await
            .map_err(|e| InstanceError::Op(format!("copy did not finish: {e}")))?
    }

    fn scratch_dir(&self) -> String {
        std::env::temp_dir().display().to_string()
    }

    fn can_reboot(&self) -> bool {
        false
    }

    async fn reboot(&self) -> Result<(), InstanceError> {
        Err(InstanceError::Unsupported(
            "the host instance cannot reboot the machine kiln runs on; run this document in a \
             VM (`builder: vm`) to use Reboot or exit code 194"
                .to_string(),
        ))
    }

    async fn stop(&self) -> Result<(), InstanceError> {
        Ok(())
    }
}
