//! What `kiln image verify` checks of an image in a registry: its cosign signature by a key,
//! and its referrers (SBOMs and provenance) about exactly that manifest.

use base64::Engine as _;
use serde_json::Value;

use kiln_dist::attach::{self, SIGNATURE_ANNOTATION, SIMPLE_SIGNING};
use kiln_dist::Repo;

use super::DocumentKind;
use crate::signing::PublicKey;

/// Why an image did not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The repository has no such tag or digest.
    #[error("{0} has no such manifest")]
    NoImage(String),
    /// No signature (tag) for the manifest.
    #[error("{location}@{digest} is not signed: the repository has no {tag} (was it copied without its signatures, or changed after kiln signed it?)")]
    Unsigned {
        /// The repository.
        location: String,
        /// The manifest.
        digest: String,
        /// The signature tag looked for.
        tag: String,
    },
    /// Signatures are there, none good for this key and image.
    #[error("{location}@{digest}: no signature verifies with the key: {}", reasons.join("; "))]
    BadSignature {
        /// The repository.
        location: String,
        /// The manifest.
        digest: String,
        /// Why each signature was refused.
        reasons: Vec<String>,
    },
    /// A document is missing or wrong.
    #[error("{location}@{digest}: {what}")]
    Document {
        /// The repository.
        location: String,
        /// The manifest.
        digest: String,
        /// What is wrong.
        what: String,
    },
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] kiln_dist::RepoError),
}

/// What was checked, line by line, for the user.
#[derive(Debug, Clone, Default)]
pub struct Verified {
    /// The manifest digest the reference named.
    pub digest: String,
    /// One line per check that passed.
    pub checks: Vec<String>,
}

async fn blob(repo: &dyn Repo, desc: &Value) -> Result<Vec<u8>, String> {
    let digest = desc["digest"]
        .as_str()
        .ok_or("a descriptor without a digest")?;
    let size = desc["size"].as_u64().ok_or("a descriptor without a size")?;
    if size > 64 << 20 {
        return Err(format!("{digest} is {size} bytes: too big for a document"));
    }
    let bytes = repo
        .read_range(digest, 0, size)
        .await
        .map_err(|e| e.to_string())?;
    if kiln_dist::repo::digest_of(&bytes) != digest {
        return Err(format!("blob {digest} does not have that digest"));
    }
    Ok(bytes)
}

/// Checks `reference` (a tag or digest) of `repo` against `key`.
pub async fn verify(
    repo: &dyn Repo,
    reference: &str,
    key: &PublicKey,
) -> Result<Verified, VerifyError> {
    let location = repo.location();
    let image = repo
        .manifest(reference)
        .await?
        .ok_or_else(|| VerifyError::NoImage(format!("{location}:{reference}")))?;
    let digest = image.digest.clone();
    let mut out = Verified {
        digest: digest.clone(),
        checks: vec![format!("{location}:{reference} is {digest}")],
    };
    let tag = attach::signature_tag(&digest);
    let sig = repo
        .manifest(&tag)
        .await?
        .ok_or_else(|| VerifyError::Unsigned {
            location: location.clone(),
            digest: digest.clone(),
            tag: tag.clone(),
        })?;
    let sig: Value = serde_json::from_slice(&sig.bytes).unwrap_or_default();
    let mut reasons = Vec::new();
    let mut good = false;
    for layer in sig["layers"].as_array().into_iter().flatten() {
        if layer["mediaType"] != SIMPLE_SIGNING {
            continue;
        }
        match check_signature(repo, layer, &digest, &location, key).await {
            Ok(()) => {
                good = true;
                break;
            }
            Err(e) => reasons.push(e),
        }
    }
    if !good {
        if reasons.is_empty() {
            reasons.push(format!("{tag} holds no simple-signing payload"));
        }
        return Err(VerifyError::BadSignature {
            location,
            digest,
            reasons,
        });
    }
    out.checks.push(format!(
        "signature {tag}: verifies with the key, names {} and {digest}",
        attach::docker_reference(&location)
    ));
    let doc_err = |what: String| VerifyError::Document {
        location: location.clone(),
        digest: digest.clone(),
        what,
    };
    let (index, via) = match repo.referrers(&digest).await? {
        Some(b) => (b, "the referrers API".to_string()),
        None => {
            let t = attach::referrers_tag(&digest);
            let f = repo.manifest(&t).await?.ok_or_else(|| {
                doc_err(format!(
                    "no referrers: the registry has no referrers API and no {t} index tag"
                ))
            })?;
            (f.bytes, format!("the tag {t}"))
        }
    };
    let index: Value = serde_json::from_slice(&index)
        .map_err(|e| doc_err(format!("the referrers index from {via} is not JSON: {e}")))?;
    let mut found: Vec<DocumentKind> = Vec::new();
    for m in index["manifests"].as_array().into_iter().flatten() {
        let Some(kind) = m["artifactType"]
            .as_str()
            .and_then(DocumentKind::from_artifact_type)
        else {
            continue;
        };
        let Some(mdigest) = m["digest"].as_str() else {
            continue;
        };
        let Some(rm) = repo.manifest(mdigest).await? else {
            return Err(doc_err(format!("referrer {mdigest} is listed but missing")));
        };
        let rm: Value = serde_json::from_slice(&rm.bytes).unwrap_or_default();
        if rm["subject"]["digest"] != digest.as_str() {
            return Err(doc_err(format!(
                "referrer {mdigest} is about another manifest"
            )));
        }
        let bytes = blob(repo, &rm["layers"][0])
            .await
            .map_err(|e| doc_err(format!("referrer {mdigest}: {e}")))?;
        let doc: Value = serde_json::from_slice(&bytes).map_err(|e| {
            doc_err(format!(
                "{} {mdigest} is not JSON: {e}",
                kind.artifact_type()
            ))
        })?;
        let line = check_document(kind, &doc, &digest).map_err(doc_err)?;
        out.checks
            .push(format!("{line} (referrer {mdigest}, via {via})"));
        found.push(kind);
    }
    for kind in DocumentKind::ALL {
        if !found.contains(&kind) {
            return Err(doc_err(format!(
                "no {} referrer (via {via})",
                kind.artifact_type()
            )));
        }
    }
    Ok(out)
}

async fn check_signature(
    repo: &dyn Repo,
    layer: &Value,
    digest: &str,
    location: &str,
    key: &PublicKey,
) -> Result<(), String> {
    let b64 = layer["annotations"][SIGNATURE_ANNOTATION]
        .as_str()
        .ok_or("a payload without a signature annotation")?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the signature is not base64: {e}"))?;
    let payload = blob(repo, layer).await?;
    if !key.verifies(&payload, &der) {
        return Err("the signature is not this key's over its payload".into());
    }
    let p: Value = serde_json::from_slice(&payload).map_err(|e| format!("payload: {e}"))?;
    let c = &p["critical"];
    if c["type"] != attach::SIGNATURE_TYPE {
        return Err(format!(
            "payload type {} is not a cosign signature",
            c["type"]
        ));
    }
    if c["image"]["docker-manifest-digest"] != digest {
        return Err(format!(
            "the payload signs {}, not {digest}",
            c["image"]["docker-manifest-digest"]
        ));
    }
    let want = attach::docker_reference(location);
    if c["identity"]["docker-reference"] != want {
        return Err(format!(
            "the payload names {}, not {want}",
            c["identity"]["docker-reference"]
        ));
    }
    Ok(())
}

/// Checks one document's shape; says what it checked.
pub fn check_document(kind: DocumentKind, doc: &Value, digest: &str) -> Result<String, String> {
    match kind {
        DocumentKind::Provenance => {
            if super::provenance::names_subject(doc, digest) {
                Ok(format!(
                    "provenance: a SLSA v1 statement whose subject is {digest}, built by {}",
                    doc["predicate"]["runDetails"]["metadata"]["invocationId"]
                ))
            } else {
                Err(format!(
                    "the provenance does not name {digest} among its subjects (or is not an \
                     in-toto v1 SLSA v1 statement)"
                ))
            }
        }
        DocumentKind::Spdx => {
            let packages = doc["packages"].as_array().map(Vec::len);
            match (doc["spdxVersion"].as_str(), packages) {
                (Some("SPDX-2.3"), Some(n)) => Ok(format!("SPDX 2.3 SBOM: {n} packages")),
                _ => Err("the SPDX SBOM is not an SPDX-2.3 document with packages".into()),
            }
        }
        DocumentKind::Cyclonedx => {
            let components = doc["components"].as_array().map(Vec::len);
            match (
                doc["bomFormat"].as_str(),
                doc["specVersion"].as_str(),
                components,
            ) {
                (Some("CycloneDX"), Some("1.6"), Some(n)) => {
                    Ok(format!("CycloneDX 1.6 SBOM: {n} components"))
                }
                _ => Err("the CycloneDX SBOM is not a CycloneDX 1.6 BOM with components".into()),
            }
        }
    }
}
