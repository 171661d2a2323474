//! Taking back what a build that died while distributing had written, so that no region keeps
//! half of an image: its `VERSION-BUILD` tags and disk files go, and the version's names
//! (`VERSION` tag, `NAME-VERSION.EXT`) go back to the newest AVAILABLE build of that version.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::record::{ImageQuery, ImageRecord, Records, State};
use crate::version::VersionFilter;

/// Undoes a dead build's distribution (as far as it got). Returns what was taken back.
pub async fn take_back(records: &Records, rec: &ImageRecord) -> Vec<String> {
    let q = ImageQuery {
        name: rec.name.clone(),
        version: rec.version.to_string().parse::<VersionFilter>().ok(),
        build: None,
    };
    let previous = records
        .newest(&q, &[State::Available])
        .await
        .ok()
        .flatten()
        .filter(|p| p.arn != rec.arn);
    let version_tag = rec.version.to_string();
    let build_tag = format!("{}-{}", rec.version, rec.build);
    let mut undone = Vec::new();
    for p in &rec.distributing {
        match p.kind.as_str() {
            "oci" => {
                let layout = &p.location;
                let ours = kiln_image::oci::tag_digest(layout, &build_tag)
                    .ok()
                    .flatten();
                let Some(ours) = ours else { continue };
                let version_is_ours = kiln_image::oci::tag_digest(layout, &version_tag)
                    .ok()
                    .flatten()
                    .as_deref()
                    == Some(ours.as_str());
                if version_is_ours {
                    let prev_tag = previous
                        .as_ref()
                        .map(|p| format!("{}-{}", p.version, p.build))
                        .filter(|t| {
                            kiln_image::oci::tag_digest(layout, t)
                                .ok()
                                .flatten()
                                .is_some()
                        });
                    let r = match prev_tag {
                        Some(t) => kiln_image::oci::copy_tag(layout, &t, &version_tag),
                        None => kiln_image::oci::remove_tag(layout, &version_tag).map(|_| ()),
                    };
                    if let Err(e) = r {
                        tracing::warn!(
                            "taking back tag {version_tag} in {}: {e}",
                            layout.display()
                        );
                    }
                }
                match kiln_image::oci::remove_tag(layout, &build_tag) {
                    Ok(_) => undone.push(format!("{}: tag {build_tag}", p.region)),
                    Err(e) => {
                        tracing::warn!("taking back tag {build_tag} in {}: {e}", layout.display())
                    }
                }
            }
            "disk" => {
                let file = &p.location;
                if let Some(n) = take_back_disk(rec, previous.as_ref(), file) {
                    undone.push(format!("{}: {n}", p.region));
                }
            }
            _ => {}
        }
    }
    undone
}

/// Removes a build's disk file; the version's name goes back to the previous build's file.
fn take_back_disk(
    rec: &ImageRecord,
    previous: Option<&ImageRecord>,
    file: &Path,
) -> Option<String> {
    let ours = std::fs::metadata(file).ok()?;
    let dir = file.parent()?;
    let ext = file.extension()?.to_string_lossy().into_owned();
    let version_name = dir.join(format!("{}-{}.{ext}", rec.name, rec.version));
    if let Ok(m) = std::fs::metadata(&version_name) {
        if m.ino() == ours.ino() && m.dev() == ours.dev() {
            let prev = previous
                .map(|p| dir.join(format!("{}-{}-{}.{ext}", p.name, p.version, p.build)))
                .filter(|p| p.exists());
            let stem = format!("{}-{}", rec.name, rec.version);
            match prev {
                Some(prev) => {
                    if let Err(e) = crate::disk::link_version(&prev, &stem) {
                        tracing::warn!("{e}");
                    }
                }
                None => {
                    let _ = std::fs::remove_file(&version_name);
                }
            }
        }
    }
    std::fs::remove_file(file).ok()?;
    Some(file.file_name()?.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::record::tests::record;
    use crate::record::PlannedOutput;
    use crate::state::Store;
    use crate::store::Home;
    use kiln_image::{write_image, ImageSettings};

    #[tokio::test]
    async fn a_dead_builds_tags_and_disks_are_taken_back() {
        let d = tempfile::tempdir().unwrap();
        let records = Records::new(
            Store::open(&Home::new(d.path().join("home")))
                .await
                .unwrap(),
        );
        let layout = d.path().join("region");
        let disks = layout.join("disks");
        std::fs::create_dir_all(&disks).unwrap();
        // Build 1 is AVAILABLE: tags 1.0.0-1 and 1.0.0, disk web-1.0.0-1.raw and its version name.
        let mut one = record("web", "1.0.0", State::Available);
        records.create(&mut one).await.unwrap();
        let s1 = ImageSettings::default();
        write_image(&layout, "1.0.0-1", &[], &s1).unwrap();
        write_image(&layout, "1.0.0", &[], &s1).unwrap();
        std::fs::write(disks.join("web-1.0.0-1.raw"), b"one").unwrap();
        crate::disk::link_version(&disks.join("web-1.0.0-1.raw"), "web-1.0.0").unwrap();
        // Build 2 died after moving both tags and the disk name to itself.
        let mut two = record("web", "1.0.0", State::Distributing);
        records.create(&mut two).await.unwrap();
        let s2 = ImageSettings {
            labels: [("b".to_string(), "2".to_string())].into(),
            ..ImageSettings::default()
        };
        write_image(&layout, "1.0.0-2", &[], &s2).unwrap();
        write_image(&layout, "1.0.0", &[], &s2).unwrap();
        std::fs::write(disks.join("web-1.0.0-2.raw"), b"two").unwrap();
        crate::disk::link_version(&disks.join("web-1.0.0-2.raw"), "web-1.0.0").unwrap();
        two.distributing = vec![
            PlannedOutput {
                region: "r".into(),
                kind: "oci".into(),
                location: layout.clone(),
                tags: vec!["1.0.0-2".into(), "1.0.0".into()],
            },
            PlannedOutput {
                region: "r".into(),
                kind: "disk".into(),
                location: disks.join("web-1.0.0-2.raw"),
                tags: vec![],
            },
        ];
        records.save(&two).await.unwrap();

        let undone = take_back(&records, &two).await;
        assert_eq!(undone.len(), 2, "{undone:?}");
        let tags = kiln_image::list_tags(&layout).unwrap();
        assert_eq!(tags.len(), 2, "{tags:?}");
        assert!(!tags.contains(&"1.0.0-2".to_string()));
        assert_eq!(
            kiln_image::oci::tag_digest(&layout, "1.0.0").unwrap(),
            kiln_image::oci::tag_digest(&layout, "1.0.0-1").unwrap(),
            "1.0.0 points at build 1 again"
        );
        assert!(!disks.join("web-1.0.0-2.raw").exists());
        assert_eq!(std::fs::read(disks.join("web-1.0.0.raw")).unwrap(), b"one");
    }
}
