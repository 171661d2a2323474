//! The object calls distribution to a bucket needs beyond AWSTOE's: small objects from memory,
//! streamed uploads of big files, existence checks, ranged reads and deletes.

use std::path::Path;

use crate::{S3Client, S3Error};

impl S3Error {
    /// True when S3 said the key does not exist (404, `NoSuchKey`, or a HEAD's bodiless 404);
    /// a missing bucket is an error, not an absent key.
    pub fn is_not_found(&self) -> bool {
        matches!(self, S3Error::Service { status: 404, code, .. } if code != "NoSuchBucket")
    }
}

impl S3Client {
    /// Uploads bytes as an object.
    pub async fn put_object(&self, bucket: &str, key: &str, data: Vec<u8>) -> Result<(), S3Error> {
        let (builder, url) = self.request(reqwest::Method::PUT, bucket, key, &[], None);
        let builder = builder
            .header("content-length", data.len().to_string())
            .body(data);
        self.send(builder, &url, "PUT", bucket, key).await?;
        Ok(())
    }

    /// Uploads a file as an object, streamed from disk (a disk pack can be hundreds of MiB).
    /// Returns the bytes sent.
    pub async fn put_object_streamed(
        &self,
        bucket: &str,
        key: &str,
        src: &Path,
    ) -> Result<u64, S3Error> {
        let io = |source| S3Error::Io {
            context: format!("reading {}", src.display()),
            source,
        };
        let file = tokio::fs::File::open(src).await.map_err(io)?;
        let size = file.metadata().await.map_err(io)?.len();
        let stream = tokio_util_stream(file);
        let (builder, url) = self.request(reqwest::Method::PUT, bucket, key, &[], None);
        let builder = builder
            .header("content-length", size.to_string())
            .body(reqwest::Body::wrap_stream(stream));
        self.send(builder, &url, "PUT", bucket, key).await?;
        Ok(size)
    }

    /// The size of an object, or `None` when there is none.
    pub async fn head_object(&self, bucket: &str, key: &str) -> Result<Option<u64>, S3Error> {
        let (builder, url) = self.request(reqwest::Method::HEAD, bucket, key, &[], None);
        match self.send(builder, &url, "HEAD", bucket, key).await {
            Ok(resp) => Ok(Some(
                resp.headers()
                    .get(reqwest::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// An object's bytes, or `None` when there is none.
    pub async fn get_object_opt(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, S3Error> {
        match self.get_object(bucket, key).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `length` bytes of an object from `offset` (a ranged GET).
    pub async fn get_object_range(
        &self,
        bucket: &str,
        key: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, S3Error> {
        if length == 0 {
            return Ok(Vec::new());
        }
        let (builder, url) = self.request(reqwest::Method::GET, bucket, key, &[], None);
        let builder = builder.header(
            reqwest::header::RANGE,
            format!("bytes={offset}-{}", offset + length - 1),
        );
        let resp = self.send(builder, &url, "GET", bucket, key).await?;
        let whole = resp.status() == reqwest::StatusCode::OK;
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| S3Error::Http { url, source })?;
        // A server that ignores Range sends the whole object: cut the range out of it.
        let bytes = if whole {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            let end = start.saturating_add(usize::try_from(length).unwrap_or(usize::MAX));
            bytes
                .get(start..end.min(bytes.len()))
                .unwrap_or_default()
                .to_vec()
        } else {
            bytes.to_vec()
        };
        if bytes.len() as u64 != length {
            return Err(S3Error::Protocol(format!(
                "asked for {length} bytes of s3://{bucket}/{key} at {offset}, got {}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// Deletes an object (deleting one that is not there succeeds, as in S3).
    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), S3Error> {
        let (builder, url) = self.request(reqwest::Method::DELETE, bucket, key, &[], None);
        match self.send(builder, &url, "DELETE", bucket, key).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A file as a stream of pieces, for a streamed request body.
fn tokio_util_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    use tokio::io::AsyncReadExt as _;
    futures_util::stream::try_unfold(file, |mut file| async move {
        let mut buf = bytes::BytesMut::with_capacity(1 << 20);
        let n = file.read_buf(&mut buf).await?;
        Ok((n > 0).then(|| (buf.freeze(), file)))
    })
}
