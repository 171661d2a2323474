//! Whether the tag the last image's parent came by names another manifest now.

use std::path::Path;

use crate::build::BuildOptions;
use crate::recipe::{parse_parent, ParentImage};
use crate::record::{ImageRecord, ParentRecord};

use super::{ParentMoved, UpdateError};

/// Asks the parent's registry (a `docker://` parent) or layout (`oci:DIR:TAG`) which manifest
/// the tag names now, and compares it with the digest the last image's record saved. `None`
/// when it is the same, and for parents that cannot move: a reference by digest, a bootstrap,
/// a tarball, a kiln image (whose newer builds are a version question), an untagged layout.
///
/// Records from before kiln saved the tag's digest are compared with the pulled copy's digest
/// (`resolved`), which differs for Docker schema 2 images and indexes: such a parent is seen
/// as moved once, and the build that follows saves the digest. A tag that is gone, or a
/// registry that cannot be asked, is an error.
pub async fn parent_moved(
    options: &BuildOptions,
    last: &ImageRecord,
) -> Result<Option<ParentMoved>, UpdateError> {
    let Some(parent) = &last.parent else {
        return Ok(None);
    };
    let failed = |why: String| UpdateError::Parent {
        reference: parent.reference.clone(),
        why,
    };
    // The record keeps the reference as the recipe's parent displays: paths already resolved.
    let now = match parse_parent(&parent.reference, Path::new("")).map_err(failed)? {
        ParentImage::Registry { reference } => {
            registry_digest(options, &reference).await.map_err(failed)?
        }
        ParentImage::Oci {
            dir,
            tag: Some(tag),
        } => layout_digest(&dir, &tag).await.map_err(failed)?,
        _ => None,
    };
    Ok(now.and_then(|now| {
        let was = recorded_digest(parent);
        (was != now).then(|| ParentMoved {
            reference: parent.reference.clone(),
            was: was.to_string(),
            now,
        })
    }))
}

/// What the build saw the tag name.
fn recorded_digest(parent: &ParentRecord) -> &str {
    parent.digest.as_deref().unwrap_or(&parent.resolved)
}

/// The registry's digest of a tag; `None` for a reference by digest, which cannot move.
async fn registry_digest(options: &BuildOptions, r: &str) -> Result<Option<String>, String> {
    let parsed = kiln_image::registry::parse_reference(r).map_err(|e| e.to_string())?;
    if parsed.digest().is_some() {
        return Ok(None);
    }
    let opts = crate::parent::registry_access(&options.registries).options_for(parsed.registry());
    match kiln_image::registry::manifest_digest(r, &opts).await {
        Ok(Some(d)) => Ok(Some(d)),
        Ok(None) => Err("the registry has no such tag any more".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The layout's digest of a tag (its entry in `index.json`).
async fn layout_digest(dir: &Path, tag: &str) -> Result<Option<String>, String> {
    let (dir, tag) = (dir.to_path_buf(), tag.to_string());
    let found = tokio::task::spawn_blocking(move || kiln_image::oci::tag_digest(&dir, &tag))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    match found {
        Some(d) => Ok(Some(d)),
        None => Err("the layout has no such tag any more".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{tests::record, State};

    fn with_parent(reference: String, resolved: &str, digest: Option<&str>) -> ImageRecord {
        let mut r = record("child", "1.0.0", State::Available);
        r.parent = Some(ParentRecord {
            reference,
            resolved: resolved.into(),
            layers: vec![],
            cached: false,
            digest: digest.map(str::to_string),
        });
        r
    }

    #[tokio::test]
    async fn an_oci_layout_tag_moves_when_its_index_entry_does() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let blobs = dir.path().join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        let write = |content: &str| {
            let tree = dir.path().join("tree");
            let _ = std::fs::remove_dir_all(&tree);
            std::fs::create_dir_all(&tree).unwrap();
            std::fs::write(tree.join("file"), content).unwrap();
            let layer =
                kiln_image::write_layer(&tree, &[], 0, kiln_image::Compression::Gzip, &blobs)
                    .unwrap();
            kiln_image::write_image(&layout, "1", &[layer], &Default::default())
                .unwrap()
                .manifest_digest
        };
        let first = write("one");
        let reference = format!("oci:{}:1", layout.display());
        let last = with_parent(reference.clone(), &first, Some(&first));
        let options = BuildOptions::default();
        assert_eq!(parent_moved(&options, &last).await.unwrap(), None);
        let second = write("two");
        assert_ne!(first, second);
        let moved = parent_moved(&options, &last).await.unwrap().unwrap();
        assert_eq!((moved.was, moved.now), (first.clone(), second));
        // An old record without the saved digest compares with what it resolved to.
        let old = with_parent(reference.clone(), "sha256:old", None);
        assert_eq!(
            parent_moved(&options, &old).await.unwrap().unwrap().was,
            "sha256:old"
        );
        // A tag that is gone is an error, not "unchanged".
        let gone = with_parent(format!("oci:{}:2", layout.display()), &first, Some(&first));
        let e = parent_moved(&options, &gone).await.unwrap_err();
        assert!(e.to_string().contains("no such tag"), "{e}");
    }

    #[tokio::test]
    async fn parents_that_name_no_tag_never_move() {
        let options = BuildOptions::default();
        for reference in [
            "bootstrap:debian/bookworm",
            "kiln:base/1.x.x",
            "docker://127.0.0.1:1/base@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            let last = with_parent(reference.into(), "x", None);
            assert_eq!(parent_moved(&options, &last).await.unwrap(), None, "{reference}");
        }
        let mut none = with_parent("x".into(), "x", None);
        none.parent = None;
        assert_eq!(parent_moved(&options, &none).await.unwrap(), None);
    }
}
