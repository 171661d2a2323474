//! Supply-chain documents of a build: two SBOMs of its package inventory (SPDX 2.3 and
//! CycloneDX 1.6, JSON) and a SLSA provenance v1 in-toto statement of its inputs. Pure: they
//! are functions of the image record, the recipe and the digests of what was distributed, so
//! the same build always gives the same bytes (what lets a registry region be re-signed and
//! re-attached without growing).

pub mod provenance;
pub mod purl;
pub mod sbom;
pub mod verify;

use serde::Serialize;

/// What a document describes: one distributed artifact by name and manifest digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subject {
    /// Its name (`web`, `web/disk`, `web/containerdisk`).
    pub name: String,
    /// `sha256:HEX` of its manifest (or of the disk file for a folder region's disk).
    pub digest: String,
}

/// The kinds of document kiln attaches, with their OCI artifact types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DocumentKind {
    /// SPDX 2.3 JSON SBOM.
    Spdx,
    /// CycloneDX 1.6 JSON SBOM.
    Cyclonedx,
    /// SLSA provenance v1 in an in-toto statement.
    Provenance,
}

impl DocumentKind {
    /// Every kind, in the order they are attached.
    pub const ALL: [DocumentKind; 3] = [
        DocumentKind::Spdx,
        DocumentKind::Cyclonedx,
        DocumentKind::Provenance,
    ];

    /// The OCI `artifactType` (and the media type of its one layer).
    pub fn artifact_type(self) -> &'static str {
        match self {
            DocumentKind::Spdx => "application/spdx+json",
            DocumentKind::Cyclonedx => "application/vnd.cyclonedx+json",
            DocumentKind::Provenance => "application/vnd.in-toto+json",
        }
    }

    /// The kind an artifact type names.
    pub fn from_artifact_type(t: &str) -> Option<DocumentKind> {
        DocumentKind::ALL
            .into_iter()
            .find(|k| k.artifact_type() == t)
    }

    /// The file name suffix the documents are kept under (`STEM.spdx.json`).
    pub fn suffix(self) -> &'static str {
        match self {
            DocumentKind::Spdx => "spdx.json",
            DocumentKind::Cyclonedx => "cdx.json",
            DocumentKind::Provenance => "provenance.json",
        }
    }
}

/// The three documents of one build.
#[derive(Debug, Clone)]
pub struct Documents {
    /// Each kind and its bytes.
    pub docs: Vec<(DocumentKind, Vec<u8>)>,
}

/// The version of kiln that writes the documents (the builder's version in the provenance).
pub const KILN_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The documents of `rec`'s build (`recipe` as it was built), describing `subjects`,
/// finished at `finished`.
pub fn documents(
    rec: &crate::record::ImageRecord,
    recipe: &crate::recipe::Recipe,
    subjects: &[Subject],
    finished: chrono::DateTime<chrono::Utc>,
) -> Documents {
    let to_bytes = |v: serde_json::Value| serde_json::to_vec_pretty(&v).unwrap_or_default();
    Documents {
        docs: vec![
            (DocumentKind::Spdx, to_bytes(sbom::spdx(rec, subjects))),
            (
                DocumentKind::Cyclonedx,
                to_bytes(sbom::cyclonedx(rec, subjects)),
            ),
            (
                DocumentKind::Provenance,
                to_bytes(provenance::statement(rec, recipe, subjects, finished)),
            ),
        ],
    }
}

/// RFC 3339 with seconds, as the documents' schemas want their times.
pub(crate) fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The hex of a `sha256:HEX` digest.
pub(crate) fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Where a build's supply-chain documents are and what was attached, as its record keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupplyChainRecord {
    /// `sha256:` of the signing key's public key (DER), when registry regions were signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<String>,
    /// What the documents describe.
    #[serde(default)]
    pub subjects: Vec<SubjectRecord>,
    /// Each document file (in the build's log folder and beside each folder region's layout).
    #[serde(default)]
    pub documents: Vec<DocumentFile>,
    /// What each registry repository got: the signature tag and the referrers.
    #[serde(default)]
    pub attached: Vec<kiln_dist::attach::Attached>,
}

/// Removes a deleted image's documents from its folder regions (`REGION/supply-chain/`); the
/// copies in its log folder stay with its logs.
pub fn remove_from_regions(rec: &mut crate::record::ImageRecord) {
    let Some(sc) = rec.supply_chain.as_mut() else {
        return;
    };
    let logs = rec.logs.clone();
    sc.documents.retain(|d| {
        if d.path.starts_with(&logs) {
            return true;
        }
        match std::fs::remove_file(&d.path) {
            Ok(()) => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::warn!("cannot remove {}: {e}", d.path.display());
                true
            }
        }
    });
}

/// A subject as the record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SubjectRecord {
    /// Its name.
    pub name: String,
    /// Its digest.
    pub digest: String,
}

/// One document file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentFile {
    /// What it is.
    pub kind: DocumentKind,
    /// Where.
    pub path: std::path::PathBuf,
    /// `sha256:` of its bytes.
    pub digest: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{tests::record, ComponentRecord, Package, ParentRecord, State};
    use serde_json::Value;

    fn sample() -> (crate::record::ImageRecord, crate::recipe::Recipe) {
        let recipe = crate::recipe::parse(crate::recipe::RecipeSource {
            path: "/nonexistent/recipe.yml".into(),
            text: "name: web\nsemanticVersion: 1.2.3\nparentImage: bootstrap:debian/bookworm\n\
                   components:\n  - componentArn: arn:kiln:imagebuilder:local:000000000000:component/c/1.0.0\n"
                .into(),
        })
        .unwrap_or_else(|e| panic!("{e:?}"));
        let mut rec = record("web", "1.2.3", State::Distributing);
        rec.arn = "arn:kiln:imagebuilder:local:000000000000:image/web/1.2.3/4".into();
        rec.build = 4;
        rec.parent = Some(ParentRecord {
            reference: "bootstrap:debian/bookworm".into(),
            resolved: "bootstrap".into(),
            layers: vec!["sha256:aa".into()],
            cached: true,
            digest: None,
        });
        let component = |name: &str, sha: &str, params: Vec<(String, String)>| ComponentRecord {
            name: name.into(),
            source: format!("/c/{name}.yml"),
            document_sha256: sha.into(),
            parameters: params,
            arn: None,
            cache_key: String::new(),
            cache: crate::record::CacheUse::NotRun,
            layer: None,
            layer_size: 0,
            duration_ms: 0,
            steps: Vec::new(),
        };
        rec.components = vec![
            component(
                "one",
                &"1".repeat(64),
                vec![("greeting".into(), "hi".into())],
            ),
            component("two", &"2".repeat(64), vec![]),
        ];
        rec.packages = vec![
            Package {
                name: "libc6".into(),
                version: "2.36-9+deb12u4".into(),
                architecture: "amd64".into(),
            },
            Package {
                name: "libstdc++6".into(),
                version: "12.2.0-14".into(),
                architecture: "amd64".into(),
            },
        ];
        (rec, recipe)
    }

    fn doc(d: &Documents, kind: DocumentKind) -> Value {
        let bytes = d
            .docs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, b)| b.clone())
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    #[test]
    fn a_deleted_image_leaves_its_documents_in_its_logs_only() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (mut rec, _) = sample();
        rec.logs = tmp.path().join("logs");
        let in_logs = rec.logs.join("supply-chain/web.spdx.json");
        let beside = tmp.path().join("region/supply-chain/web.spdx.json");
        let mut documents = Vec::new();
        for p in [&in_logs, &beside] {
            std::fs::create_dir_all(p.parent().unwrap_or(tmp.path()))
                .unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(p, "{}").unwrap_or_else(|e| panic!("{e}"));
            documents.push(DocumentFile {
                kind: DocumentKind::Spdx,
                path: p.clone(),
                digest: String::new(),
            });
        }
        rec.supply_chain = Some(SupplyChainRecord {
            documents,
            ..Default::default()
        });
        remove_from_regions(&mut rec);
        assert!(in_logs.is_file() && !beside.exists());
        let left = rec.supply_chain.map(|s| s.documents.len());
        assert_eq!(left, Some(1));
    }

    #[test]
    fn documents_have_their_shapes_and_are_stable() {
        let (rec, recipe) = sample();
        let image = format!("sha256:{}", "e".repeat(64));
        let subjects = [
            Subject {
                name: "web".into(),
                digest: image.clone(),
            },
            Subject {
                name: "web/disk".into(),
                digest: format!("sha256:{}", "d".repeat(64)),
            },
        ];
        let t = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let d = documents(&rec, &recipe, &subjects, t);
        assert_eq!(
            d.docs,
            documents(&rec, &recipe, &subjects, t).docs,
            "the same build gives the same bytes"
        );

        let spdx = doc(&d, DocumentKind::Spdx);
        assert_eq!(spdx["spdxVersion"], "SPDX-2.3");
        assert_eq!(spdx["packages"].as_array().map(Vec::len), Some(3));
        assert_eq!(
            spdx["packages"][2]["SPDXID"],
            "SPDXRef-Package-2-libstdc--6"
        );
        assert_eq!(
            spdx["packages"][1]["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64"
        );
        assert_eq!(
            spdx["packages"][0]["checksums"][0]["checksumValue"],
            "e".repeat(64)
        );

        let cdx = doc(&d, DocumentKind::Cyclonedx);
        assert_eq!(cdx["bomFormat"], "CycloneDX");
        assert_eq!(cdx["specVersion"], "1.6");
        let serial = cdx["serialNumber"].as_str().unwrap_or_default();
        assert_eq!(serial.len(), "urn:uuid:".len() + 36, "{serial}");
        assert_eq!(&serial[23..24], "5");
        assert_eq!(
            cdx["components"][1]["purl"],
            "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14?arch=amd64"
        );

        let p = doc(&d, DocumentKind::Provenance);
        assert!(provenance::names_subject(&p, &image));
        assert!(!provenance::names_subject(
            &p,
            &format!("sha256:{}", "f".repeat(64))
        ));
        let pred = &p["predicate"];
        let deps = pred["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(deps[0]["digest"]["sha256"], "1".repeat(64));
        assert_eq!(deps[1]["digest"]["sha256"], "2".repeat(64));
        assert_eq!(deps[2]["name"], "parent");
        assert!(
            deps[2]["digest"]["sha256"].is_string(),
            "the parent's chain id"
        );
        assert_eq!(
            pred["buildDefinition"]["externalParameters"]["components"][0]["parameters"]
                ["greeting"],
            "hi"
        );
        assert_eq!(
            pred["buildDefinition"]["externalParameters"]["recipe"]["name"],
            "web"
        );
        assert_eq!(pred["runDetails"]["metadata"]["invocationId"], rec.arn);
        assert_eq!(
            pred["runDetails"]["builder"]["version"]["kiln"],
            KILN_VERSION
        );
        assert_eq!(
            pred["runDetails"]["metadata"]["finishedOn"],
            "2027-01-15T08:00:00Z"
        );
        for kind in DocumentKind::ALL {
            assert!(verify::check_document(kind, &doc(&d, kind), &image).is_ok());
        }
        assert!(
            verify::check_document(DocumentKind::Provenance, &p, "sha256:00").is_err(),
            "a provenance about another image is refused"
        );
    }
}
