//! Media types, and what a manifest is: the kinds of manifest and index kiln tells apart, the
//! Docker schema 2 to OCI conversion a pull stores, and the media type a retag puts a manifest
//! under.

use serde_json::Value;

use crate::digest;
use crate::oci;

pub(super) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// What a pull accepts; Docker schema 1 is left out on purpose (registries then convert).
pub(super) const ACCEPT: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// What a manifest or index is, from its `mediaType` (or, when absent, its shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    Manifest,
    Index,
    SchemaV1,
    Unknown(String),
}

pub(super) fn kind_of(raw: &[u8]) -> Kind {
    let Ok(value) = serde_json::from_slice::<Value>(raw) else {
        return Kind::Unknown("(none: it is not JSON)".into());
    };
    if value.get("schemaVersion").and_then(Value::as_u64) == Some(1) {
        return Kind::SchemaV1;
    }
    match value.get("mediaType").and_then(Value::as_str) {
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => Kind::Manifest,
        Some(OCI_INDEX | DOCKER_LIST) => Kind::Index,
        Some(other) if other.starts_with("application/vnd.docker.distribution.manifest.v1") => {
            Kind::SchemaV1
        }
        Some(other) => Kind::Unknown(other.to_string()),
        None if value.get("manifests").is_some() => Kind::Index,
        None if value.get("layers").is_some() => Kind::Manifest,
        None => Kind::Unknown("(none)".into()),
    }
}

/// The media type to put a manifest under: its `mediaType`, or for an OCI manifest or index
/// that leaves it out (OCI allows that), the one its shape says.
pub(super) fn manifest_media_type(raw: &[u8]) -> Result<String, String> {
    let value: Value =
        serde_json::from_slice(raw).map_err(|e| format!("its manifest is not valid JSON: {e}"))?;
    match (kind_of(raw), value.get("mediaType").and_then(Value::as_str)) {
        (Kind::SchemaV1, _) => Err(
            "it has a Docker schema 1 manifest, which is deprecated and unsupported; push it \
             again with a current Docker or skopeo (they write schema 2)"
                .into(),
        ),
        (_, Some(media_type)) => Ok(media_type.to_string()),
        (Kind::Index, None) => Ok(OCI_INDEX.to_string()),
        (Kind::Manifest, None) => Ok(OCI_MANIFEST.to_string()),
        (Kind::Unknown(_), None) => Err(
            "its manifest has no mediaType and is neither an image manifest nor an index".into(),
        ),
    }
}

/// A blob a manifest names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Blob {
    pub(super) media_type: String,
    pub(super) digest: String,
    pub(super) size: u64,
}

/// A manifest as the layout will hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Converted {
    /// The manifest's new bytes when media types had to change; `None` keeps the registry's.
    pub(super) rewritten: Option<Vec<u8>>,
    pub(super) config: Blob,
    pub(super) layers: Vec<Blob>,
}

/// Checks a manifest (OCI or Docker schema 2) and maps its media types to OCI ones.
pub(super) fn to_oci_manifest(raw: &[u8]) -> Result<Converted, String> {
    let mut value: Value =
        serde_json::from_slice(raw).map_err(|e| format!("its manifest is not valid JSON: {e}"))?;
    let mut changed = false;
    // OCI lets a manifest leave out its mediaType; only a Docker one needs rewriting.
    if value.get("mediaType").and_then(Value::as_str) == Some(DOCKER_MANIFEST) {
        value["mediaType"] = Value::String(OCI_MANIFEST.into());
        changed = true;
    }
    let config = value
        .get_mut("config")
        .ok_or("its manifest has no config")?;
    let config_type = descriptor(config, "config")?.media_type;
    match config_type.as_str() {
        OCI_CONFIG => {}
        DOCKER_CONFIG => {
            config["mediaType"] = Value::String(OCI_CONFIG.into());
            changed = true;
        }
        other => {
            return Err(format!(
                "its config has media type {other}: it is an artifact (a chart, a signature, \
                 ...), not a container image"
            ))
        }
    }
    let config = descriptor(config, "config")?;
    let mut layers = Vec::new();
    if let Some(list) = value.get_mut("layers") {
        let list = list
            .as_array_mut()
            .ok_or("its manifest's `layers` is not a list")?;
        for layer in list {
            let d = descriptor(layer, "layer")?;
            let oci = oci_layer_type(&d.media_type).ok_or_else(|| {
                if d.media_type.contains("foreign") || d.media_type.contains("nondistributable") {
                    format!(
                        "layer {} is a non-distributable layer ({}), which the registry does not \
                         hold; kiln pulls images whose layers are all in the registry",
                        d.digest, d.media_type
                    )
                } else {
                    format!(
                        "layer {} has media type {}, not a filesystem layer kiln can use (tar, \
                         tar+gzip or tar+zstd)",
                        d.digest, d.media_type
                    )
                }
            })?;
            if oci != d.media_type {
                layer["mediaType"] = Value::String(oci.into());
                changed = true;
            }
            layers.push(Blob {
                media_type: oci.to_string(),
                ..d
            });
        }
    }
    let rewritten = if changed {
        Some(oci::canonical_json(&value).map_err(|e| e.to_string())?)
    } else {
        None
    };
    Ok(Converted {
        rewritten,
        config: Blob {
            media_type: OCI_CONFIG.into(),
            ..config
        },
        layers,
    })
}

fn descriptor(value: &Value, what: &str) -> Result<Blob, String> {
    let media_type = value
        .get("mediaType")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("a {what} descriptor in its manifest has no mediaType"))?;
    let digest = value
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("a {what} descriptor in its manifest has no digest"))?;
    let size = value
        .get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("the {what} {digest} in its manifest has no valid size"))?;
    match digest::split(digest) {
        Some(("sha256", _)) => {}
        Some((algorithm, _)) => {
            return Err(format!(
                "the {what} {digest} uses digest algorithm {algorithm}; kiln verifies sha256 only"
            ))
        }
        None => {
            return Err(format!(
                "the {what} digest `{digest}` is not a valid digest"
            ))
        }
    }
    Ok(Blob {
        media_type: media_type.to_string(),
        digest: digest.to_string(),
        size,
    })
}

/// The OCI media type of a layer, for the OCI and Docker types of filesystem layers.
fn oci_layer_type(media_type: &str) -> Option<&'static str> {
    use crate::layer::{MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP, MEDIA_TYPE_TAR_ZSTD};
    match media_type {
        MEDIA_TYPE_TAR | "application/vnd.docker.image.rootfs.diff.tar" => Some(MEDIA_TYPE_TAR),
        MEDIA_TYPE_TAR_GZIP | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            Some(MEDIA_TYPE_TAR_GZIP)
        }
        MEDIA_TYPE_TAR_ZSTD | "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
            Some(MEDIA_TYPE_TAR_ZSTD)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(b: &str) -> String {
        digest::sha256_bytes(b.as_bytes())
    }

    #[test]
    fn docker_manifest_becomes_oci() {
        let (c, l1, l2) = (digest_of("c"), digest_of("1"), digest_of("2"));
        let raw = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": 10, "digest": c},
            "layers": [
                {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 5, "digest": l1},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "size": 6, "digest": l2},
            ],
        });
        let converted = to_oci_manifest(&serde_json::to_vec(&raw).unwrap()).unwrap();
        let bytes = converted.rewritten.unwrap();
        let m: oci_spec::image::ImageManifest = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(m.media_type().as_ref().unwrap().to_string(), OCI_MANIFEST);
        assert_eq!(m.config().media_type().to_string(), OCI_CONFIG);
        assert_eq!(m.config().digest().to_string(), c);
        assert_eq!(
            m.layers()[0].media_type().to_string(),
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(converted.layers[1].size, 6);
        assert_eq!(converted.layers[0].digest, l1);
    }

    #[test]
    fn oci_manifest_kept_as_is() {
        let raw = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "size": 10, "digest": digest_of("c")},
            "layers": [],
        });
        let converted = to_oci_manifest(&serde_json::to_vec(&raw).unwrap()).unwrap();
        assert_eq!(converted.rewritten, None);
        assert!(converted.layers.is_empty());
        // Without a mediaType (OCI allows that) it is kept too.
        let bare = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": OCI_CONFIG, "size": 10, "digest": digest_of("c")},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 3, "digest": digest_of("l")}],
        });
        let converted = to_oci_manifest(&serde_json::to_vec(&bare).unwrap()).unwrap();
        assert_eq!(converted.rewritten, None);
        assert_eq!(converted.layers.len(), 1);
    }

    #[test]
    fn artifacts_and_bad_descriptors_refused() {
        let helm = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "size": 1, "digest": digest_of("c")},
            "layers": [],
        });
        let e = to_oci_manifest(&serde_json::to_vec(&helm).unwrap()).unwrap_err();
        assert!(e.contains("not a container image"), "{e}");
        let traversal = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "size": 1, "digest": "sha256:../../etc/passwd"},
            "layers": [],
        });
        let e = to_oci_manifest(&serde_json::to_vec(&traversal).unwrap()).unwrap_err();
        assert!(e.contains("not a valid digest"), "{e}");
        let foreign = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": 1, "digest": digest_of("c")},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "size": 1, "digest": digest_of("l")}],
        });
        let e = to_oci_manifest(&serde_json::to_vec(&foreign).unwrap()).unwrap_err();
        assert!(e.contains("non-distributable"), "{e}");
    }

    #[test]
    fn kinds() {
        assert_eq!(
            kind_of(br#"{"schemaVersion":1,"name":"x"}"#),
            Kind::SchemaV1
        );
        assert_eq!(
            kind_of(br#"{"schemaVersion":2,"manifests":[]}"#),
            Kind::Index
        );
        assert_eq!(
            kind_of(format!(r#"{{"mediaType":"{DOCKER_LIST}"}}"#).as_bytes()),
            Kind::Index
        );
        assert_eq!(
            kind_of(br#"{"schemaVersion":2,"layers":[]}"#),
            Kind::Manifest
        );
    }

    #[test]
    fn media_types_for_retag() {
        let typed = format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","layers":[]}}"#);
        assert_eq!(
            manifest_media_type(typed.as_bytes()).unwrap(),
            DOCKER_MANIFEST
        );
        // OCI lets both leave mediaType out; the shape tells which it is.
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).unwrap(),
            OCI_INDEX
        );
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"config":{},"layers":[]}"#).unwrap(),
            OCI_MANIFEST
        );
        // Other types (artifacts) are copied as they are.
        let artifact = br#"{"schemaVersion":2,"mediaType":"application/vnd.example+json"}"#;
        assert_eq!(
            manifest_media_type(artifact).unwrap(),
            "application/vnd.example+json"
        );
        let e = manifest_media_type(br#"{"schemaVersion":1,"name":"x"}"#).unwrap_err();
        assert!(e.contains("schema 1"), "{e}");
        let e = manifest_media_type(br#"{"schemaVersion":2}"#).unwrap_err();
        assert!(e.contains("no mediaType"), "{e}");
        assert!(manifest_media_type(b"not json").is_err());
    }
}
