//! Shipping a build's logs where its infrastructure configuration says (`logging.localPath`,
//! `logging.s3Logs`), under `NAME/VERSION/BUILD/`.

use std::path::{Path, PathBuf};

use kiln_s3::{S3Client, S3Config};

use crate::DistError;

/// Where logs go.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LogDestination {
    /// A folder (`logging.localPath`).
    Folder(PathBuf),
    /// A bucket and key prefix (`logging.s3Logs`).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix (may be empty).
        prefix: String,
    },
}

impl std::fmt::Display for LogDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogDestination::Folder(p) => write!(f, "{}", p.display()),
            LogDestination::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// What shipping did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipped {
    /// Where the files went (the folder they were copied to, or `s3://BUCKET/PREFIX`).
    pub to: String,
    /// How many files.
    pub files: usize,
    /// True for an upload, false for a copy.
    pub uploaded: bool,
}

/// Copies or uploads every file under `logs` to `dest`, under `sub` (`NAME/VERSION/BUILD`).
/// Uploads need `s3` (kiln's S3 settings).
pub async fn ship(
    logs: &Path,
    sub: &str,
    dest: &LogDestination,
    s3: Option<&S3Config>,
) -> Result<Shipped, DistError> {
    match dest {
        LogDestination::Folder(dir) => {
            let to = dir.join(sub);
            let (from, to2) = (logs.to_path_buf(), to.clone());
            let n = tokio::task::spawn_blocking(move || copy_tree(&from, &to2))
                .await
                .map_err(|e| DistError::Logs(e.to_string()))?
                .map_err(|e| {
                    DistError::Logs(format!("the logs were not copied to {}: {e}", to.display()))
                })?;
            Ok(Shipped {
                to: to.display().to_string(),
                files: n,
                uploaded: false,
            })
        }
        LogDestination::S3 { bucket, prefix } => {
            let Some(s3) = s3 else {
                return Err(DistError::Logs(format!(
                    "the logs were not uploaded to s3://{bucket}: no S3 endpoint is configured (config.yaml `s3:` or AWS_ENDPOINT_URL)"
                )));
            };
            let client = S3Client::new(s3.clone());
            let mut n = 0;
            for f in files_under(logs) {
                let rel = f.strip_prefix(logs).unwrap_or(&f);
                let key = kiln_s3::key_under(prefix, &format!("{sub}/{}", rel.display()));
                client
                    .put_object_from_file(bucket, &key, &f, None)
                    .await
                    .map_err(|e| {
                        DistError::Logs(format!(
                            "uploading {} to s3://{bucket}/{key}: {e}",
                            f.display()
                        ))
                    })?;
                n += 1;
            }
            Ok(Shipped {
                to: format!("s3://{bucket}/{prefix}"),
                files: n,
                uploaded: true,
            })
        }
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<usize> {
    let files = files_under(from);
    for f in &files {
        let rel = f.strip_prefix(from).unwrap_or(f);
        let dest = to.join(rel);
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::copy(f, &dest)?;
    }
    Ok(files.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn logs_are_copied_under_the_build_and_s3_needs_settings() {
        let d = tempfile::tempdir().unwrap();
        let logs = d.path().join("logs");
        std::fs::create_dir_all(logs.join("build-01-a")).unwrap();
        std::fs::write(logs.join("parent.log"), b"p").unwrap();
        std::fs::write(logs.join("build-01-a/console.log"), b"c").unwrap();
        let to = d.path().join("shipped");
        let s = ship(
            &logs,
            "web/1.0.0/2",
            &LogDestination::Folder(to.clone()),
            None,
        )
        .await
        .unwrap();
        assert_eq!(s.files, 2);
        assert_eq!(
            std::fs::read(to.join("web/1.0.0/2/build-01-a/console.log")).unwrap(),
            b"c"
        );
        let e = ship(
            &logs,
            "web/1.0.0/2",
            &LogDestination::S3 {
                bucket: "b".into(),
                prefix: "p".into(),
            },
            None,
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string().contains("no S3 endpoint is configured"),
            "{e}"
        );
    }
}
