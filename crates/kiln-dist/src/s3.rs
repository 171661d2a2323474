//! A region in an S3-compatible bucket: each repository is an OCI image layout under the
//! region's prefix (`s3://BUCKET/PREFIX/NAME/`: `oci-layout`, `index.json`, `blobs/sha256/`),
//! so that `aws s3 sync` of it gives a folder `skopeo` and `umoci` read. Tags are the
//! `org.opencontainers.image.ref.name` entries of `index.json`, which is replaced in one PUT:
//! a reader sees the old tags or the new ones.
//!
//! Two kilns writing the same repository at once could each replace `index.json` with its own
//! view (S3 has no lock); one kiln serializes its own writes per repository.

use std::path::Path;

use async_trait::async_trait;
use kiln_s3::S3Client;
use serde_json::{json, Value};

use crate::repo::{digest_of, Fetched, Moved, Removed, Repo, RepoError};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// One repository (an OCI layout) in a bucket.
pub struct BucketRepo {
    client: S3Client,
    bucket: String,
    /// The layout's key prefix, without a trailing `/`.
    prefix: String,
    /// `index.json` read-modify-writes of this process, one at a time.
    lock: tokio::sync::Mutex<()>,
}

impl BucketRepo {
    /// The layout at `s3://bucket/prefix`.
    pub fn new(client: S3Client, bucket: &str, prefix: &str) -> Self {
        BucketRepo {
            client,
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The layout named by `s3://BUCKET/PREFIX`.
    pub fn from_location(client: S3Client, location: &str) -> Result<Self, RepoError> {
        let (bucket, key) = kiln_s3::parse_url(location)?;
        Ok(BucketRepo::new(client, &bucket, &key))
    }

    fn key(&self, rel: &str) -> String {
        kiln_s3::key_under(&self.prefix, rel)
    }

    fn blob_key(&self, digest: &str) -> Result<String, RepoError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| RepoError::Protocol(format!("`{digest}` is not a sha256 digest")))?;
        Ok(self.key(&format!("blobs/sha256/{hex}")))
    }

    async fn index(&self) -> Result<Value, RepoError> {
        match self
            .client
            .get_object_opt(&self.bucket, &self.key("index.json"))
            .await?
        {
            None => Ok(json!({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []})),
            Some(b) => serde_json::from_slice(&b).map_err(|e| {
                RepoError::Protocol(format!("{}/index.json is not JSON: {e}", self.location()))
            }),
        }
    }

    async fn write_index(&self, index: &Value) -> Result<(), RepoError> {
        let bytes = serde_json::to_vec(index).map_err(|e| RepoError::Protocol(e.to_string()))?;
        self.client
            .put_object(&self.bucket, &self.key("index.json"), bytes)
            .await?;
        Ok(())
    }

    async fn ensure_layout_file(&self) -> Result<(), RepoError> {
        let key = self.key("oci-layout");
        if self.client.head_object(&self.bucket, &key).await?.is_none() {
            self.client
                .put_object(
                    &self.bucket,
                    &key,
                    br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
                )
                .await?;
        }
        Ok(())
    }
}

fn entries(index: &Value) -> Vec<Value> {
    index
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn tag_of(entry: &Value) -> Option<&str> {
    entry.get("annotations")?.get(REF_NAME)?.as_str()
}

#[async_trait]
impl Repo for BucketRepo {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    async fn put_blob(
        &self,
        digest: &str,
        size: u64,
        path: &Path,
        _mount_from: &[String],
    ) -> Result<Moved, RepoError> {
        let key = self.blob_key(digest)?;
        if self.client.head_object(&self.bucket, &key).await? == Some(size) {
            return Ok(Moved::Present);
        }
        let sent = self
            .client
            .put_object_streamed(&self.bucket, &key, path)
            .await?;
        Ok(Moved::Uploaded(sent))
    }

    async fn put_blob_bytes(&self, digest: &str, bytes: &[u8]) -> Result<Moved, RepoError> {
        let key = self.blob_key(digest)?;
        if self.client.head_object(&self.bucket, &key).await? == Some(bytes.len() as u64) {
            return Ok(Moved::Present);
        }
        self.client
            .put_object(&self.bucket, &key, bytes.to_vec())
            .await?;
        Ok(Moved::Uploaded(bytes.len() as u64))
    }

    async fn read_range(
        &self,
        digest: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, RepoError> {
        let key = self.blob_key(digest)?;
        Ok(self
            .client
            .get_object_range(&self.bucket, &key, offset, length)
            .await?)
    }

    async fn put_manifest(
        &self,
        tag: Option<&str>,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<String, RepoError> {
        let digest = digest_of(bytes);
        self.put_blob_bytes(&digest, bytes).await?;
        let Some(tag) = tag else {
            return Ok(digest);
        };
        self.ensure_layout_file().await?;
        let artifact_type = serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| v.get("artifactType").cloned());
        let _guard = self.lock.lock().await;
        let index = self.index().await?;
        let mut manifests: Vec<Value> = entries(&index)
            .into_iter()
            .filter(|e| tag_of(e) != Some(tag))
            .collect();
        let mut entry = json!({
            "mediaType": media_type,
            "digest": digest,
            "size": bytes.len(),
            "annotations": {REF_NAME: tag},
        });
        if let (Some(t), Some(o)) = (artifact_type, entry.as_object_mut()) {
            o.insert("artifactType".into(), t);
        }
        manifests.push(entry);
        let mut index = index;
        index["manifests"] = Value::Array(manifests);
        self.write_index(&index).await?;
        Ok(digest)
    }

    async fn manifest(&self, reference: &str) -> Result<Option<Fetched>, RepoError> {
        let (digest, media_type) = if reference.starts_with("sha256:") {
            (reference.to_string(), None)
        } else {
            let index = self.index().await?;
            let Some(e) = entries(&index)
                .into_iter()
                .find(|e| tag_of(e) == Some(reference))
            else {
                return Ok(None);
            };
            let d = e.get("digest").and_then(Value::as_str).map(String::from);
            let mt = e.get("mediaType").and_then(Value::as_str).map(String::from);
            match d {
                Some(d) => (d, mt),
                None => return Ok(None),
            }
        };
        let Some(bytes) = self
            .client
            .get_object_opt(&self.bucket, &self.blob_key(&digest)?)
            .await?
        else {
            return Ok(None);
        };
        if digest_of(&bytes) != digest {
            return Err(RepoError::Protocol(format!(
                "{}: the manifest blob {digest} does not have that digest",
                self.location()
            )));
        }
        let media_type = media_type
            .or_else(|| {
                serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("mediaType")?.as_str().map(String::from))
            })
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
        Ok(Some(Fetched {
            bytes,
            media_type,
            digest,
        }))
    }

    async fn delete_manifest(&self, digest: &str) -> Result<Removed, RepoError> {
        let _guard = self.lock.lock().await;
        let index = self.index().await?;
        let all = entries(&index);
        let kept: Vec<Value> = all
            .iter()
            .filter(|e| e.get("digest").and_then(Value::as_str) != Some(digest))
            .cloned()
            .collect();
        let had_tags = kept.len() != all.len();
        if had_tags {
            let mut index = index;
            index["manifests"] = Value::Array(kept);
            self.write_index(&index).await?;
        }
        // The manifest blob goes; layers and packs stay, as other manifests may use them.
        let key = self.blob_key(digest)?;
        let existed = self.client.head_object(&self.bucket, &key).await?.is_some();
        self.client.delete_object(&self.bucket, &key).await?;
        Ok(if had_tags || existed {
            Removed::Removed
        } else {
            Removed::NotFound
        })
    }
}

/// A bucket region: `s3://BUCKET/PREFIX`, each image's repositories below it.
pub struct BucketPlace {
    client: S3Client,
    bucket: String,
    prefix: String,
}

impl BucketPlace {
    /// The bucket `bucket`, under `prefix`.
    pub fn new(client: S3Client, bucket: &str, prefix: &str) -> Self {
        BucketPlace {
            client,
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        }
    }
}

impl crate::remote::Place for BucketPlace {
    fn repo(&self, path: &str) -> Result<std::sync::Arc<dyn Repo>, RepoError> {
        Ok(std::sync::Arc::new(BucketRepo::new(
            self.client.clone(),
            &self.bucket,
            &kiln_s3::key_under(&self.prefix, path),
        )))
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn is_registry(&self) -> bool {
        false
    }
}
