//! Build logs kept in the store: every line a queued build writes, and its other log files when
//! it ends, so that any server shows a build's log whichever host ran it.
//!
//! A worker writes under its lease, and the store numbers the lines: a reader resumes at a line
//! number and sees each line once, across attempts on different hosts. Only the attempt's own
//! worker writes, and only while the attempt was not taken from it (a finished attempt may
//! still add its last lines, written as the build ended).

use std::fmt;

use crate::{Lease, StoreError};

/// Most bytes of one stored log file: a longer file keeps its end, where a build's failure is.
pub const MAX_LOG_FILE: usize = 1 << 20;

/// One line of a build's log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    /// Its number, from 0, across the build's attempts.
    pub number: u64,
    /// The attempt that wrote it.
    pub attempt: u32,
    /// The line, without its newline.
    pub text: String,
}

/// A build's log lines and files.
#[async_trait::async_trait]
pub trait BuildLogs: Send + Sync + fmt::Debug {
    /// Appends `lines` to the log of the image `lease` builds, numbered on from its last line;
    /// the number the next line will have. `Err(LeaseLost)` when the attempt is not the
    /// worker's any more.
    async fn append_log(&self, lease: &Lease, lines: &[String]) -> Result<u64, StoreError>;

    /// Stores one of the build's log files as `name` (such as `build-01-hello/console.log`),
    /// replacing what an earlier attempt stored under it, cut to its last [`MAX_LOG_FILE`]
    /// bytes. Refused as [`BuildLogs::append_log`] is.
    async fn put_log_file(&self, lease: &Lease, name: &str, text: &str) -> Result<(), StoreError>;

    /// The image's log lines from number `from` on, at most `limit`, in order.
    async fn log_lines(
        &self,
        image: &str,
        from: u64,
        limit: u32,
    ) -> Result<Vec<LogLine>, StoreError>;

    /// The names of the image's stored log files, sorted.
    async fn log_files(&self, image: &str) -> Result<Vec<String>, StoreError>;

    /// One stored log file.
    async fn log_file(&self, image: &str, name: &str) -> Result<Option<String>, StoreError>;
}

/// `text` cut to its last [`MAX_LOG_FILE`] bytes (at a character boundary), saying so.
pub(crate) fn bounded(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_LOG_FILE {
        return text.into();
    }
    let mut start = text.len() - MAX_LOG_FILE;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!(
        "[kiln: the first {start} bytes of this log were left out; the worker's data directory has them]\n{}",
        &text[start..]
    )
    .into()
}

/// The refusal of a write by an attempt that is not the worker's any more.
pub(crate) fn refused(lease: &Lease) -> StoreError {
    StoreError::LeaseLost {
        job: lease.job.clone(),
        worker: lease.worker.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_file_keeps_its_end() {
        let short = "a\nb\n";
        assert_eq!(bounded(short), short);
        let long = format!("{}é{}", "x".repeat(MAX_LOG_FILE), "the failure\n");
        let kept = bounded(&long);
        assert!(kept.starts_with("[kiln: the first "));
        assert!(kept.ends_with("the failure\n"));
        assert!(kept.len() < MAX_LOG_FILE + 200);
    }
}
