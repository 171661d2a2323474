//! The shared step cache: what one host built is reused on every other. The index is in the
//! state store (a `step-cache-entry` row per account and step key, naming the layer); the
//! layer blobs are in the configured cache region (`cache.region`: a registry or a bucket),
//! in repository `kiln-step-cache`, each under a manifest tagged with its key so that the
//! registry keeps it. A host whose own step cache lacks a key looks in the index, fetches the
//! blob, checks its digest and stores it as its own; a host that built a step publishes it.
//! Entries are per account: a layer one account built is never handed to another.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use kiln_dist::repo::Repo;
use kiln_store::Kind;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::regions::RegionPlace;
use crate::state::Store;
use crate::store::{LayerStore, StoredLayer};

/// The repository of the cache region the blobs go to.
pub const REPOSITORY: &str = "kiln-step-cache";

/// How much of a blob is read at once.
const CHUNK: u64 = 8 << 20;

/// One entry of the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedEntry {
    /// The step key (`StepKey::digest`).
    pub key: String,
    /// The layer's `sha256:` diff id.
    pub diff_id: String,
    /// Its blob's `sha256:` digest.
    pub digest: String,
    /// The blob's size.
    pub size: u64,
    /// The blob's media type.
    pub media_type: String,
    /// What made it (`component hardening`).
    pub description: String,
    /// The cache region it is in.
    pub region: String,
    /// Where its blob is (`docker://HOST/NS/kiln-step-cache`).
    pub location: String,
    /// When it was published.
    pub created: DateTime<Utc>,
}

/// The shared step cache of one account's builds.
pub struct SharedCache {
    store: Store,
    repo: Arc<dyn Repo>,
    region: String,
    account: String,
}

impl SharedCache {
    /// The cache of `account`'s builds in `region` (a configured registry or bucket), over
    /// `store`'s index. An unknown region is an error naming it.
    pub fn new(
        store: Store,
        region: &str,
        regions: &crate::regions::RegionMap,
        access: &kiln_dist::RegistryAccess,
        account: &str,
    ) -> Result<SharedCache, String> {
        use kiln_dist::remote::Place;
        let place: Box<dyn Place> = match regions.get(region) {
            Some(RegionPlace::Registry {
                host, namespace, ..
            }) => Box::new(kiln_dist::registry::RegistryPlace::new(
                host,
                namespace.as_deref(),
                access.options_for(host),
            )),
            Some(RegionPlace::Bucket { bucket, prefix }) => Box::new(
                kiln_dist::s3::BucketPlace::new(access.s3_client(), bucket, prefix),
            ),
            None => {
                return Err(format!(
                    "`cache.region: {region}` names no region of kiln's configuration (`regions:`): add it there, as a registry or a bucket"
                ))
            }
        };
        let repo = place.repo(REPOSITORY).map_err(|e| e.to_string())?;
        Ok(SharedCache {
            store,
            repo,
            region: region.to_owned(),
            account: account.to_owned(),
        })
    }

    /// Where the blobs are, for messages.
    pub fn location(&self) -> String {
        self.repo.location()
    }

    fn arn(&self, key: &str) -> String {
        format!(
            "arn:kiln:imagebuilder:{}:{}:{}/{key}",
            crate::record::LOCAL_REGION,
            self.account,
            Kind::StepCacheEntry
        )
    }

    /// The index's entry for `key`.
    pub async fn entry(&self, key: &str) -> Result<Option<SharedEntry>, String> {
        let Some(row) = self
            .store
            .db()
            .get(&self.arn(key))
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        serde_json::from_str(&row.body)
            .map(Some)
            .map_err(|e| format!("the shared step cache's entry {key} cannot be read: {e}"))
    }

    /// The layer of `key`, fetched into `layers` when the index has it (its blob downloaded
    /// to `scratch` and checked against its digest first). `None` when no host published it.
    pub async fn fetch(
        &self,
        key: &str,
        layers: &LayerStore,
        scratch: &Path,
    ) -> Result<Option<StoredLayer>, String> {
        let Some(entry) = self.entry(key).await? else {
            return Ok(None);
        };
        if let Some(layer) = layers.get(&entry.diff_id) {
            return Ok(Some(layer));
        }
        std::fs::create_dir_all(scratch).map_err(|e| e.to_string())?;
        let path = scratch.join(format!("shared-{}.blob", &key[..key.len().min(16)]));
        let written = self.download(&entry, &path).await;
        let stored = written.and_then(|()| {
            let blob = kiln_image::LayerBlob {
                digest: entry.digest.clone(),
                diff_id: entry.diff_id.clone(),
                size: entry.size,
                media_type: entry.media_type.clone(),
                path: path.clone(),
            };
            layers
                .import(&blob, &entry.description)
                .map_err(|e| e.to_string())
        });
        let _ = std::fs::remove_file(&path);
        stored.map(Some)
    }

    async fn download(&self, entry: &SharedEntry, path: &Path) -> Result<(), String> {
        let mut file = std::fs::File::create(path).map_err(|e| e.to_string())?;
        let mut hash = Sha256::new();
        let mut offset = 0;
        while offset < entry.size {
            let length = CHUNK.min(entry.size - offset);
            let bytes = self
                .repo
                .read_range(&entry.digest, offset, length)
                .await
                .map_err(|e| format!("fetching {} from {}: {e}", entry.digest, entry.location))?;
            if bytes.is_empty() {
                return Err(format!(
                    "{} ended early in {}",
                    entry.digest, entry.location
                ));
            }
            hash.update(&bytes);
            file.write_all(&bytes).map_err(|e| e.to_string())?;
            offset += bytes.len() as u64;
        }
        let got = format!("sha256:{}", hex::encode(hash.finalize()));
        if got != entry.digest {
            return Err(format!(
                "the blob {} from {} has digest {got}: it is not the layer the index names",
                entry.digest, entry.location
            ));
        }
        Ok(())
    }

    /// Publishes the layer `key` made: its blob to the cache region under a manifest tagged
    /// with the key, then the index entry. A key published before is left as it is.
    pub async fn publish(
        &self,
        key: &str,
        layer: &StoredLayer,
        description: &str,
    ) -> Result<(), String> {
        if self.entry(key).await?.is_some() {
            return Ok(());
        }
        let info = &layer.info;
        let fail = |e: kiln_dist::repo::RepoError| format!("{}: {e}", self.repo.location());
        self.repo
            .put_blob(&info.digest, info.size, &layer.blob, &[])
            .await
            .map_err(fail)?;
        let config = kiln_dist::pieces::EMPTY_CONFIG;
        let config_digest = kiln_dist::repo::digest_of(config);
        self.repo
            .put_blob_bytes(&config_digest, config)
            .await
            .map_err(fail)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": kiln_dist::pieces::MANIFEST_MEDIA_TYPE,
            "artifactType": "application/vnd.kiln.step-cache.v1",
            "config": {"mediaType": kiln_dist::pieces::EMPTY_MEDIA_TYPE,
                       "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": info.media_type, "digest": info.digest, "size": info.size}],
            "annotations": {"dev.kiln.step-cache.key": key,
                            "dev.kiln.step-cache.diff-id": info.diff_id},
        });
        let bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
        self.repo
            .put_manifest(Some(key), &bytes, kiln_dist::pieces::MANIFEST_MEDIA_TYPE)
            .await
            .map_err(fail)?;
        let entry = SharedEntry {
            key: key.to_owned(),
            diff_id: info.diff_id.clone(),
            digest: info.digest.clone(),
            size: info.size,
            media_type: info.media_type.clone(),
            description: description.to_owned(),
            region: self.region.clone(),
            location: self.repo.location(),
            created: Utc::now(),
        };
        let body = serde_json::to_string(&entry).map_err(|e| e.to_string())?;
        let mut row = crate::state::row(Kind::StepCacheEntry, self.arn(key), key.to_owned());
        row.owner = self.account.clone();
        row.digest = info.diff_id.clone();
        row.summary = body.clone();
        row.body = body;
        match self.store.db().create(row, Vec::new(), None).await {
            Ok(_) | Err(kiln_store::StoreError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}
