//! What a registry region gets beside each manifest kiln distributes: a signature in cosign's
//! format and the build's documents (SBOMs, provenance) as OCI 1.1 referrers.
//!
//! - **Signature**: the tag `sha256-HEX.sig` names an OCI manifest whose layers are
//!   simple-signing payloads (`application/vnd.dev.cosign.simplesigning.v1+json`), each with
//!   its base64 DER ECDSA signature in the annotation `dev.cosignproject.cosign/signature`:
//!   what `cosign verify --key` and containers/image's `sigstoreSigned` policy (skopeo, podman,
//!   with `use-sigstore-attachments: true`) read. Signatures already there (another key's) are
//!   kept: kiln's layer is added beside them.
//! - **Referrers**: one artifact manifest per document, `subject` the manifest, `artifactType`
//!   the document's type, its one layer the document. A registry with the referrers API
//!   indexes them itself; for one without (CNCF distribution 2.8), the tag-schema fallback of
//!   the distribution specification 1.1: the tag `sha256-HEX` names an OCI index of the
//!   referrers, read, extended and written back.
//!
//! Everything here is written by digest or under digest-named tags while the build is staged,
//! so no reader of the version's tags sees it before promotion; [`detach`] removes it when a
//! build is taken back or retired.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::pieces::MANIFEST_MEDIA_TYPE;
use crate::repo::{digest_of, Removed, Repo, RepoError};

/// The media type of a simple-signing payload.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding a payload's base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The `critical.type` of a cosign signature payload.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";
/// An OCI image index.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The empty config of artifacts.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY: &[u8] = b"{}";

/// Signs payloads with an account's key: ASN.1 DER ECDSA P-256 over SHA-256 of the payload.
pub trait Signer: Send + Sync {
    /// The DER signature of `payload`.
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, String>;
}

/// One document to attach as a referrer.
#[derive(Debug, Clone)]
pub struct Document {
    /// Its `artifactType` (and the media type of its layer).
    pub artifact_type: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// What every registry manifest of a build gets beside it.
#[derive(Clone)]
pub struct Attachments {
    /// Who signs.
    pub signer: Arc<dyn Signer>,
    /// The documents.
    pub documents: Vec<Document>,
    /// The build's start, as the referrers' `org.opencontainers.image.created` (the same build
    /// gives the same manifests).
    pub created: String,
    /// The creator named in each signature payload's `optional` part.
    pub creator: String,
}

/// What was attached to one manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attached {
    /// The repository (`docker://HOST/REPO`).
    pub location: String,
    /// The manifest signed and referred to.
    pub subject: String,
    /// The signature's tag (`sha256-HEX.sig`).
    pub signature_tag: String,
    /// Each referrer: its artifact type and manifest digest.
    pub referrers: Vec<(String, String)>,
    /// True when the registry's referrers API indexes them; false when kiln keeps the
    /// `sha256-HEX` index tag.
    pub referrers_api: bool,
}

/// `sha256-HEX.sig`: the tag of the signatures of `digest`.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", referrers_tag(digest))
}

/// `sha256-HEX`: the tag-schema fallback's tag of the referrers of `digest`.
pub fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// The simple-signing payload for `digest` in `docker_reference` (`HOST/REPO`, no tag).
pub fn payload(docker_reference: &str, digest: &str, creator: &str) -> Vec<u8> {
    let v = json!({
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest},
            "type": SIGNATURE_TYPE,
        },
        "optional": {"creator": creator},
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": digest_of(bytes), "size": bytes.len()})
}

fn parse(bytes: &[u8], what: &str) -> Result<Value, RepoError> {
    serde_json::from_slice(bytes).map_err(|e| RepoError::Protocol(format!("{what}: {e}")))
}

/// The signature manifest with `layers` (cosign's shape: an OCI image config whose diff ids
/// are the payloads'), and its config's bytes.
fn signature_manifest(layers: &[Value]) -> (Vec<u8>, Vec<u8>) {
    let diff_ids: Vec<&Value> = layers.iter().map(|l| &l["digest"]).collect();
    let config = json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {},
    });
    let config = serde_json::to_vec(&config).unwrap_or_default();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": layers,
    });
    (config, serde_json::to_vec(&manifest).unwrap_or_default())
}

/// The referrer manifest of `doc` about the manifest `subject` (`subject_size` bytes).
pub fn referrer_manifest(
    doc: &Document,
    subject: &str,
    subject_size: usize,
    created: &str,
) -> Vec<u8> {
    let m = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": doc.artifact_type,
        "config": descriptor(EMPTY_MEDIA_TYPE, EMPTY),
        "layers": [descriptor(&doc.artifact_type, &doc.bytes)],
        "subject": {"mediaType": MANIFEST_MEDIA_TYPE, "digest": subject, "size": subject_size},
        "annotations": {"org.opencontainers.image.created": created},
    });
    serde_json::to_vec(&m).unwrap_or_default()
}

/// `HOST/REPO` of a registry repository's location.
pub fn docker_reference(location: &str) -> &str {
    location.strip_prefix("docker://").unwrap_or(location)
}

/// Signs the manifest `subject` (its bytes `manifest`) in `repo` and attaches the documents.
pub async fn attach(
    repo: &dyn Repo,
    subject: &str,
    manifest: &[u8],
    att: &Attachments,
) -> Result<Attached, RepoError> {
    let location = repo.location();
    let signature_tag = sign(repo, subject, att).await?;
    let mut referrers = Vec::new();
    let mut descriptors = Vec::new();
    if !att.documents.is_empty() {
        repo.put_blob_bytes(&digest_of(EMPTY), EMPTY).await?;
    }
    for doc in &att.documents {
        repo.put_blob_bytes(&digest_of(&doc.bytes), &doc.bytes)
            .await?;
        let m = referrer_manifest(doc, subject, manifest.len(), &att.created);
        let digest = repo.put_manifest(None, &m, MANIFEST_MEDIA_TYPE).await?;
        let mut d = descriptor(MANIFEST_MEDIA_TYPE, &m);
        d["artifactType"] = json!(doc.artifact_type);
        d["annotations"] = json!({"org.opencontainers.image.created": att.created});
        descriptors.push(d);
        referrers.push((doc.artifact_type.clone(), digest));
    }
    let referrers_api = repo.referrers(subject).await?.is_some();
    if !referrers_api && !descriptors.is_empty() {
        let tag = referrers_tag(subject);
        let mut manifests: Vec<Value> = match repo.manifest(&tag).await? {
            Some(f) => parse(&f.bytes, &format!("{location}:{tag}"))?["manifests"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            None => Vec::new(),
        };
        for d in descriptors {
            if !manifests.iter().any(|m| m["digest"] == d["digest"]) {
                manifests.push(d);
            }
        }
        let index =
            json!({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": manifests});
        let bytes = serde_json::to_vec(&index).unwrap_or_default();
        repo.put_manifest(Some(&tag), &bytes, INDEX_MEDIA_TYPE)
            .await?;
    }
    Ok(Attached {
        location,
        subject: subject.to_string(),
        signature_tag,
        referrers,
        referrers_api,
    })
}

/// Adds kiln's signature of `subject` to its signature tag (the signatures there are kept).
async fn sign(repo: &dyn Repo, subject: &str, att: &Attachments) -> Result<String, RepoError> {
    let location = repo.location();
    let payload = payload(docker_reference(&location), subject, &att.creator);
    let der = att
        .signer
        .sign(&payload)
        .map_err(|e| RepoError::Local(format!("signing {location}@{subject}: {e}")))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut layer = descriptor(SIMPLE_SIGNING, &payload);
    layer["annotations"] = json!({ SIGNATURE_ANNOTATION: b64 });
    let tag = signature_tag(subject);
    let mut layers: Vec<Value> = match repo.manifest(&tag).await? {
        Some(f) => parse(&f.bytes, &format!("{location}:{tag}"))?["layers"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        None => Vec::new(),
    };
    if layers.contains(&layer) {
        return Ok(tag);
    }
    layers.push(layer);
    repo.put_blob_bytes(&digest_of(&payload), &payload).await?;
    let (config, manifest) = signature_manifest(&layers);
    repo.put_blob_bytes(&digest_of(&config), &config).await?;
    repo.put_manifest(Some(&tag), &manifest, MANIFEST_MEDIA_TYPE)
        .await?;
    Ok(tag)
}

/// Removes what [`attach`] wrote for `subject` (its signatures and referrers, with the fallback
/// index tag), when its manifest is removed. Says what it removed.
pub async fn detach(repo: &dyn Repo, subject: &str) -> Result<Vec<String>, RepoError> {
    let location = repo.location();
    let mut removed = Vec::new();
    let mut doomed: Vec<(String, String)> = Vec::new();
    if let Some(f) = repo.manifest(&signature_tag(subject)).await? {
        doomed.push((f.digest, signature_tag(subject)));
    }
    let index = match repo.referrers(subject).await? {
        Some(bytes) => Some(bytes),
        None => repo.manifest(&referrers_tag(subject)).await?.map(|f| {
            doomed.push((f.digest.clone(), referrers_tag(subject)));
            f.bytes
        }),
    };
    if let Some(bytes) = index {
        let index = parse(&bytes, &format!("{location} referrers of {subject}"))?;
        for m in index["manifests"].as_array().into_iter().flatten() {
            if let Some(d) = m["digest"].as_str() {
                doomed.push((d.to_string(), format!("referrer {d}")));
            }
        }
    }
    for (digest, what) in doomed {
        if repo.delete_manifest(&digest).await? == Removed::Removed {
            removed.push(format!("{location}:{what}"));
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_payload() {
        let d = "sha256:0123abcd";
        assert_eq!(signature_tag(d), "sha256-0123abcd.sig");
        assert_eq!(referrers_tag(d), "sha256-0123abcd");
        let p: Value =
            serde_json::from_slice(&payload("127.0.0.1:5000/golden/web", d, "kiln 0.1.0"))
                .unwrap_or_default();
        assert_eq!(p["critical"]["type"], SIGNATURE_TYPE);
        assert_eq!(p["critical"]["image"]["docker-manifest-digest"], d);
        assert_eq!(
            p["critical"]["identity"]["docker-reference"],
            "127.0.0.1:5000/golden/web"
        );
        // containers/image accepts exactly these three critical fields.
        assert_eq!(p["critical"].as_object().map(|o| o.len()), Some(3));
    }

    /// A repository in memory whose registry serves the referrers API (none here does).
    #[derive(Default)]
    struct WithApi {
        blobs: std::sync::Mutex<std::collections::BTreeMap<String, Vec<u8>>>,
        manifests: std::sync::Mutex<Vec<(Option<String>, crate::repo::Fetched)>>,
    }

    #[async_trait::async_trait]
    impl Repo for WithApi {
        fn location(&self) -> String {
            "docker://registry.example/golden/web".into()
        }
        async fn put_blob(
            &self,
            _: &str,
            _: u64,
            _: &std::path::Path,
            _: &[String],
        ) -> Result<crate::Moved, RepoError> {
            Ok(crate::Moved::Present)
        }
        async fn put_blob_bytes(&self, d: &str, b: &[u8]) -> Result<crate::Moved, RepoError> {
            if let Ok(mut m) = self.blobs.lock() {
                m.insert(d.to_string(), b.to_vec());
            }
            Ok(crate::Moved::Uploaded(b.len() as u64))
        }
        async fn read_range(&self, d: &str, _: u64, _: u64) -> Result<Vec<u8>, RepoError> {
            let m = self
                .blobs
                .lock()
                .map_err(|e| RepoError::Local(e.to_string()))?;
            m.get(d).cloned().ok_or(RepoError::Local("no blob".into()))
        }
        async fn put_manifest(
            &self,
            tag: Option<&str>,
            bytes: &[u8],
            media_type: &str,
        ) -> Result<String, RepoError> {
            let f = crate::repo::Fetched {
                bytes: bytes.to_vec(),
                media_type: media_type.into(),
                digest: digest_of(bytes),
            };
            let mut m = self
                .manifests
                .lock()
                .map_err(|e| RepoError::Local(e.to_string()))?;
            m.retain(|(t, _)| t.is_none() || t.as_deref() != tag);
            m.push((tag.map(str::to_string), f.clone()));
            Ok(f.digest)
        }
        async fn manifest(&self, r: &str) -> Result<Option<crate::repo::Fetched>, RepoError> {
            let m = self
                .manifests
                .lock()
                .map_err(|e| RepoError::Local(e.to_string()))?;
            Ok(m.iter()
                .find(|(t, f)| t.as_deref() == Some(r) || f.digest == r)
                .map(|(_, f)| f.clone()))
        }
        async fn delete_manifest(&self, d: &str) -> Result<Removed, RepoError> {
            let mut m = self
                .manifests
                .lock()
                .map_err(|e| RepoError::Local(e.to_string()))?;
            let before = m.len();
            m.retain(|(_, f)| f.digest != d);
            Ok(if m.len() < before {
                Removed::Removed
            } else {
                Removed::NotFound
            })
        }
        async fn referrers(&self, d: &str) -> Result<Option<Vec<u8>>, RepoError> {
            let m = self
                .manifests
                .lock()
                .map_err(|e| RepoError::Local(e.to_string()))?;
            let list: Vec<Value> = m
                .iter()
                .filter_map(|(_, f)| {
                    let v: Value = serde_json::from_slice(&f.bytes).ok()?;
                    (v["subject"]["digest"] == d).then(|| {
                        json!({"mediaType": MANIFEST_MEDIA_TYPE, "digest": f.digest,
                               "size": f.bytes.len(), "artifactType": v["artifactType"]})
                    })
                })
                .collect();
            Ok(Some(
                serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": list}))
                    .unwrap_or_default(),
            ))
        }
    }

    struct Der;
    impl Signer for Der {
        fn sign(&self, _: &[u8]) -> Result<Vec<u8>, String> {
            Ok(vec![0x30, 0x00])
        }
    }

    #[tokio::test]
    async fn a_registry_with_the_referrers_api_gets_no_index_tag() {
        let repo = WithApi::default();
        let image = br#"{"schemaVersion":2}"#;
        let subject = repo
            .put_manifest(None, image, MANIFEST_MEDIA_TYPE)
            .await
            .unwrap_or_default();
        let att = Attachments {
            signer: Arc::new(Der),
            documents: vec![Document {
                artifact_type: "application/spdx+json".into(),
                bytes: b"{}".to_vec(),
            }],
            created: "t".into(),
            creator: "kiln".into(),
        };
        let done = attach(&repo, &subject, image, &att)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(done.referrers_api);
        assert_eq!(done.referrers.len(), 1);
        let tag = referrers_tag(&subject);
        assert!(
            repo.manifest(&tag).await.ok().flatten().is_none(),
            "no fallback tag"
        );
        assert!(repo
            .manifest(&signature_tag(&subject))
            .await
            .ok()
            .flatten()
            .is_some());
        let removed = detach(&repo, &subject).await.unwrap_or_default();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(repo
            .referrers(&subject)
            .await
            .ok()
            .flatten()
            .is_some_and(|b| {
                serde_json::from_slice::<Value>(&b).unwrap_or_default()["manifests"]
                    .as_array()
                    .is_some_and(Vec::is_empty)
            }));
    }

    #[test]
    fn referrer_shape() {
        let doc = Document {
            artifact_type: "application/spdx+json".into(),
            bytes: b"{\"spdxVersion\":\"SPDX-2.3\"}".to_vec(),
        };
        let m: Value = serde_json::from_slice(&referrer_manifest(&doc, "sha256:ab", 42, "t"))
            .unwrap_or_default();
        assert_eq!(m["artifactType"], "application/spdx+json");
        assert_eq!(m["subject"]["digest"], "sha256:ab");
        assert_eq!(m["subject"]["size"], 42);
        assert_eq!(m["config"]["mediaType"], EMPTY_MEDIA_TYPE);
        assert_eq!(m["config"]["digest"], digest_of(b"{}"));
        assert_eq!(m["layers"][0]["digest"], digest_of(&doc.bytes));
        let (_, sig) = signature_manifest(&[json!({"digest": "sha256:cd"})]);
        let sig: Value = serde_json::from_slice(&sig).unwrap_or_default();
        assert_eq!(sig["mediaType"], MANIFEST_MEDIA_TYPE);
    }
}
