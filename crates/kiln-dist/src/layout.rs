//! A local region: an OCI image layout folder, with the region's disks in its `disks/` folder.
//!
//! Staging writes the image under `VERSION-BUILD` (blobs hard-linked, `index.json` replaced
//! atomically under the layout's lock) and each disk as `disks/NAME-VERSION-BUILD.EXT`;
//! promoting points the `VERSION` tag at the same manifest and swaps `NAME-VERSION.EXT` to the
//! new file by a rename.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::disk;
use crate::{Artifact, BuildId, DistError, Output, OutputKind, Planned, Progress, Retired, Target};

/// An OCI image layout folder and its `disks/`.
#[derive(Debug, Clone)]
pub struct LayoutTarget {
    region: String,
    dir: PathBuf,
}

impl LayoutTarget {
    /// The target of region `region` at `dir`.
    pub fn new(region: &str, dir: impl Into<PathBuf>) -> Self {
        LayoutTarget {
            region: region.to_string(),
            dir: dir.into(),
        }
    }

    /// The layout folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn fail(&self, detail: impl Into<String>) -> DistError {
        DistError::Write {
            region: self.region.clone(),
            detail: detail.into(),
        }
    }

    fn disk_file(&self, build: &BuildId, format: kiln_image::disk::DiskFormat) -> PathBuf {
        self.dir
            .join("disks")
            .join(format!("{}.{}", build.build_stem(), format.extension()))
    }

    async fn stage_disks(
        &self,
        a: &Artifact,
        progress: Progress<'_>,
    ) -> Result<Vec<Output>, DistError> {
        let Some(d) = &a.disk else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for file in &d.files {
            let format = file.format;
            let (file, dir, stem) = (file.clone(), self.dir.clone(), a.build.build_stem());
            let placed = blocking(move || disk::place(&file, &dir, &stem))
                .await
                .map_err(|e| self.fail(e))?;
            progress(&format!(
                "region {}: {} ({} MiB)",
                self.region,
                placed.path.display(),
                placed.size >> 20
            ));
            out.push(Output {
                region: self.region.clone(),
                kind: OutputKind::Disk(format),
                location: placed.path.display().to_string(),
                tag: a.build.build_tag(),
                manifest_digest: placed.digest,
                tags: Vec::new(),
                sent: None,
            });
        }
        Ok(out)
    }

    /// Puts the version tag back where it was (the previous build, or nowhere) when it names
    /// this build, then removes the build's own tag.
    fn take_back_tags(&self, build: &BuildId, previous: Option<u32>) -> Option<String> {
        let layout = &self.dir;
        let build_tag = build.build_tag();
        let version_tag = build.version_tag();
        let ours = kiln_image::oci::tag_digest(layout, &build_tag)
            .ok()
            .flatten()?;
        let version_is_ours = kiln_image::oci::tag_digest(layout, &version_tag)
            .ok()
            .flatten()
            .as_deref()
            == Some(ours.as_str());
        if version_is_ours {
            let prev_tag = previous
                .map(|p| build.with_build(p).build_tag())
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
                tracing::warn!("taking back tag {version_tag} in {}: {e}", layout.display());
            }
        }
        match kiln_image::oci::remove_tag(layout, &build_tag) {
            Ok(_) => Some(format!("tag {build_tag}")),
            Err(e) => {
                tracing::warn!("taking back tag {build_tag} in {}: {e}", layout.display());
                None
            }
        }
    }
}

/// The version's name of a build's disk file (`ours` is the file's metadata) when that name
/// is this very file, with the previous build's file it goes back to (none: it goes).
fn version_name_to_move(
    build: &BuildId,
    previous: Option<u32>,
    dir: &Path,
    ext: &str,
    ours: &std::fs::Metadata,
) -> Option<(std::path::PathBuf, Option<std::path::PathBuf>)> {
    let version_name = dir.join(format!("{}.{ext}", build.version_stem()));
    let m = std::fs::metadata(&version_name).ok()?;
    if m.ino() != ours.ino() || m.dev() != ours.dev() {
        return None;
    }
    let prev = previous
        .map(|p| dir.join(format!("{}.{ext}", build.with_build(p).build_stem())))
        .filter(|p| p.exists());
    Some((version_name, prev))
}

/// Removes a build's disk file; the version's name goes back to the previous build's file when
/// it named this one.
fn take_back_disk(build: &BuildId, previous: Option<u32>, file: &Path) -> Option<String> {
    let ours = std::fs::metadata(file).ok()?;
    let dir = file.parent()?;
    let ext = file.extension()?.to_string_lossy().into_owned();
    match version_name_to_move(build, previous, dir, &ext, &ours) {
        Some((_, Some(prev))) => {
            if let Err(e) = disk::link_version(&prev, &build.version_stem()) {
                tracing::warn!("{e}");
            }
        }
        Some((version_name, None)) => {
            let _ = std::fs::remove_file(&version_name);
        }
        None => {}
    }
    std::fs::remove_file(file).ok()?;
    Some(file.file_name()?.to_string_lossy().into_owned())
}

impl LayoutTarget {
    /// Retires a build's tags in this layout: `VERSION` goes back to build `previous` (or
    /// goes) when it names this build, then `VERSION-BUILD` goes.
    fn retire_tags(&self, build: &BuildId, previous: Option<u32>) -> Result<Vec<String>, String> {
        let layout = &self.dir;
        let (build_tag, version_tag) = (build.build_tag(), build.version_tag());
        let err = |e: kiln_image::OciError| format!("{}: {e}", layout.display());
        let mut removed = Vec::new();
        let Some(ours) = kiln_image::oci::tag_digest(layout, &build_tag).map_err(err)? else {
            return Ok(removed); // gone already
        };
        let version = kiln_image::oci::tag_digest(layout, &version_tag).map_err(err)?;
        if version.as_deref() == Some(ours.as_str()) {
            let prev_tag = match previous.map(|p| build.with_build(p).build_tag()) {
                Some(t)
                    if kiln_image::oci::tag_digest(layout, &t)
                        .map_err(err)?
                        .is_some() =>
                {
                    Some(t)
                }
                _ => None,
            };
            match prev_tag {
                Some(t) => {
                    kiln_image::oci::copy_tag(layout, &t, &version_tag).map_err(err)?;
                    removed.push(format!("tag {version_tag} (now build {t})"));
                }
                None => {
                    kiln_image::oci::remove_tag(layout, &version_tag).map_err(err)?;
                    removed.push(format!("tag {version_tag}"));
                }
            }
        }
        kiln_image::oci::remove_tag(layout, &build_tag).map_err(err)?;
        removed.push(format!("tag {build_tag}"));
        Ok(removed)
    }
}

/// Retires a build's disk file: the version's name goes back to the previous build's file
/// (or goes) when it is this file, then the file goes.
fn retire_disk(build: &BuildId, previous: Option<u32>, file: &Path) -> Result<Vec<String>, String> {
    let Ok(ours) = std::fs::metadata(file) else {
        return Ok(Vec::new()); // gone already
    };
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let dir = file
        .parent()
        .ok_or_else(|| format!("{} is not in a folder", file.display()))?;
    let ext = file
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut removed = Vec::new();
    match version_name_to_move(build, previous, dir, &ext, &ours) {
        Some((version_name, Some(prev))) => {
            disk::link_version(&prev, &build.version_stem())?;
            removed.push(format!("{} (now {})", name(&version_name), name(&prev)));
        }
        Some((version_name, None)) => {
            std::fs::remove_file(&version_name)
                .map_err(|e| format!("removing {}: {e}", version_name.display()))?;
            removed.push(name(&version_name));
        }
        None => {}
    }
    std::fs::remove_file(file).map_err(|e| format!("removing {}: {e}", file.display()))?;
    removed.push(name(file));
    Ok(removed)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
}

#[async_trait]
impl Target for LayoutTarget {
    fn region(&self) -> &str {
        &self.region
    }

    fn plan(&self, a: &Artifact) -> Vec<Planned> {
        let mut plan = Vec::new();
        if a.image.is_some() {
            plan.push(Planned {
                region: self.region.clone(),
                kind: OutputKind::OciLayout,
                location: self.dir.display().to_string(),
                tags: vec![a.build.build_tag(), a.build.version_tag()],
                digest: None,
            });
        }
        for format in a.disk.iter().flat_map(|d| d.files.iter().map(|f| f.format)) {
            plan.push(Planned {
                region: self.region.clone(),
                kind: OutputKind::Disk(format),
                location: self.disk_file(&a.build, format).display().to_string(),
                tags: Vec::new(),
                digest: None,
            });
        }
        plan
    }

    async fn check(&self, a: &Artifact) -> Result<(), DistError> {
        let dir = if a.disk.is_some() {
            self.dir.join("disks")
        } else {
            self.dir.clone()
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| self.fail(format!("creating {}: {e}", dir.display())))
    }

    async fn stage(&self, a: &Artifact, progress: Progress<'_>) -> Result<Vec<Output>, DistError> {
        // Disks first: they take longest, and nothing of the image is visible yet if one fails.
        let mut out = self.stage_disks(a, progress).await?;
        if let Some(image) = &a.image {
            let (dir, tag, blobs, settings) = (
                self.dir.clone(),
                a.build.build_tag(),
                image.blobs.clone(),
                image.settings.clone(),
            );
            let written = blocking(move || {
                kiln_image::write_image(&dir, &tag, &blobs, &settings).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| self.fail(e))?;
            out.insert(
                0,
                Output {
                    region: self.region.clone(),
                    kind: OutputKind::OciLayout,
                    location: self.dir.display().to_string(),
                    tag: a.build.build_tag(),
                    manifest_digest: written.manifest_digest,
                    tags: Vec::new(),
                    sent: None,
                },
            );
        }
        Ok(out)
    }

    async fn promote(
        &self,
        a: &Artifact,
        progress: Progress<'_>,
    ) -> Result<Vec<Output>, DistError> {
        let mut out = Vec::new();
        if a.image.is_some() {
            let (dir, from, to) = (self.dir.clone(), a.build.build_tag(), a.build.version_tag());
            let digest = blocking(move || {
                kiln_image::oci::copy_tag(&dir, &from, &to).map_err(|e| e.to_string())?;
                kiln_image::oci::tag_digest(&dir, &to)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("tag {to} is missing right after it was written"))
            })
            .await
            .map_err(|e| self.fail(e))?;
            progress(&format!(
                "region {}: {} (tags {}, {})",
                self.region,
                self.dir.display(),
                a.build.build_tag(),
                a.build.version_tag()
            ));
            out.push(Output {
                region: self.region.clone(),
                kind: OutputKind::OciLayout,
                location: self.dir.display().to_string(),
                tag: a.build.version_tag(),
                manifest_digest: digest,
                tags: Vec::new(),
                sent: None,
            });
        }
        for format in a.disk.iter().flat_map(|d| d.files.iter().map(|f| f.format)) {
            disk::link_version(&self.disk_file(&a.build, format), &a.build.version_stem())
                .map_err(|e| self.fail(e))?;
        }
        Ok(out)
    }

    async fn take_back(
        &self,
        planned: &[Planned],
        build: &BuildId,
        previous: Option<u32>,
    ) -> Vec<String> {
        let mut undone = Vec::new();
        for p in planned {
            let done = match p.kind {
                OutputKind::OciLayout => self.take_back_tags(build, previous),
                OutputKind::Disk(_) => take_back_disk(build, previous, Path::new(&p.location)),
                _ => None,
            };
            undone.extend(done);
        }
        undone
    }

    async fn retire(&self, outputs: &[Output], build: &BuildId, previous: Option<u32>) -> Retired {
        let mut done = Retired::default();
        let mut tags_done = false;
        for o in outputs {
            let result = match o.kind {
                // The layout's outputs (build tag, version tag) are retired together, once.
                OutputKind::OciLayout if tags_done => continue,
                OutputKind::OciLayout => {
                    tags_done = true;
                    let (this, build) = (self.clone(), build.clone());
                    blocking(move || this.retire_tags(&build, previous)).await
                }
                OutputKind::Disk(_) => {
                    let (build, file) = (build.clone(), o.path().to_path_buf());
                    blocking(move || retire_disk(&build, previous, &file)).await
                }
                _ => Err("not a layout output".to_string()),
            };
            match result {
                Ok(removed) => done
                    .removed
                    .extend(removed.into_iter().map(|r| format!("{}: {r}", self.region))),
                Err(e) => {
                    // Every output of this place is still there.
                    let same: Vec<Output> = outputs
                        .iter()
                        .filter(|x| x.kind == o.kind && x.location == o.location)
                        .cloned()
                        .collect();
                    for x in same {
                        done.failed
                            .push((x, format!("region {}: {e}", self.region)));
                    }
                }
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{distribute, OciImage, Region};
    use kiln_image::{write_image, ImageSettings};

    fn build(n: u32) -> BuildId {
        BuildId {
            name: "web".into(),
            version: "1.0.0".into(),
            build: n,
        }
    }

    fn artifact(n: u32, label: &str, scratch: &Path) -> Artifact {
        Artifact {
            build: build(n),
            image: Some(OciImage {
                blobs: vec![],
                settings: ImageSettings {
                    labels: [("b".to_string(), label.to_string())].into(),
                    ..ImageSettings::default()
                },
            }),
            disk: None,
            previous: None,
            scratch: scratch.to_path_buf(),
            pieces: Vec::new(),
        }
    }

    fn quiet(_: &str) {}

    #[tokio::test]
    async fn a_dead_builds_tags_and_disks_are_taken_back() {
        let d = tempfile::tempdir().unwrap();
        let layout = d.path().join("region");
        let disks = layout.join("disks");
        std::fs::create_dir_all(&disks).unwrap();
        // Build 1 is AVAILABLE: tags 1.0.0-1 and 1.0.0, disk web-1.0.0-1.raw and its version name.
        let s1 = ImageSettings::default();
        write_image(&layout, "1.0.0-1", &[], &s1).unwrap();
        write_image(&layout, "1.0.0", &[], &s1).unwrap();
        std::fs::write(disks.join("web-1.0.0-1.raw"), b"one").unwrap();
        disk::link_version(&disks.join("web-1.0.0-1.raw"), "web-1.0.0").unwrap();
        // Build 2 died after moving both tags and the disk name to itself.
        let s2 = ImageSettings {
            labels: [("b".to_string(), "2".to_string())].into(),
            ..ImageSettings::default()
        };
        write_image(&layout, "1.0.0-2", &[], &s2).unwrap();
        write_image(&layout, "1.0.0", &[], &s2).unwrap();
        std::fs::write(disks.join("web-1.0.0-2.raw"), b"two").unwrap();
        disk::link_version(&disks.join("web-1.0.0-2.raw"), "web-1.0.0").unwrap();
        // As its record says, in the words of kiln 0.1 (`oci`, `disk`).
        let planned: Vec<Planned> = serde_json::from_value(serde_json::json!([
            {"region": "r", "kind": "oci", "location": layout, "tags": ["1.0.0-2", "1.0.0"]},
            {"region": "r", "kind": "disk", "location": disks.join("web-1.0.0-2.raw")},
        ]))
        .unwrap();
        assert_eq!(
            planned[1].kind,
            OutputKind::Disk(kiln_image::disk::DiskFormat::Raw)
        );

        let undone = crate::take_back(&planned, &build(2), Some(1), &Default::default()).await;
        assert_eq!(undone, vec!["r: tag 1.0.0-2", "r: web-1.0.0-2.raw"]);
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

    #[tokio::test]
    async fn a_region_that_fails_leaves_nothing_in_the_others() {
        let d = tempfile::tempdir().unwrap();
        let good = d.path().join("good");
        // A file where the second region's folder should be: staging there fails.
        let bad = d.path().join("bad");
        std::fs::write(&bad, b"not a folder").unwrap();
        let a = artifact(1, "one", d.path());
        let regions = [
            Region::local("good", good.clone()),
            Region::local("bad", bad.join("sub")),
        ];
        let e = distribute(&regions, &a, &quiet).await.unwrap_err();
        assert!(e.to_string().starts_with("region bad: creating"), "{e}");
        // The check failed before anything was written anywhere.
        assert!(kiln_image::list_tags(&good).unwrap_or_default().is_empty());
    }

    #[tokio::test]
    async fn a_failed_promotion_puts_every_region_back() {
        let d = tempfile::tempdir().unwrap();
        let (one, two) = (d.path().join("one"), d.path().join("two"));
        let regions = [
            Region::local("one", one.clone()),
            Region::local("two", two.clone()),
        ];
        distribute(&regions, &artifact(1, "one", d.path()), &quiet)
            .await
            .unwrap();
        // Build 2 stages in both; its promotion fails in the second region, whose layout is
        // made unwritable after the check.
        struct Breaks(LayoutTarget);
        #[async_trait]
        impl Target for Breaks {
            fn region(&self) -> &str {
                self.0.region()
            }
            fn plan(&self, a: &Artifact) -> Vec<Planned> {
                self.0.plan(a)
            }
            async fn check(&self, a: &Artifact) -> Result<(), DistError> {
                self.0.check(a).await
            }
            async fn stage(&self, a: &Artifact, p: Progress<'_>) -> Result<Vec<Output>, DistError> {
                self.0.stage(a, p).await
            }
            async fn promote(
                &self,
                _: &Artifact,
                _: Progress<'_>,
            ) -> Result<Vec<Output>, DistError> {
                Err(self.0.fail("the disk is full"))
            }
            async fn take_back(
                &self,
                p: &[Planned],
                b: &BuildId,
                prev: Option<u32>,
            ) -> Vec<String> {
                self.0.take_back(p, b, prev).await
            }
        }
        let regions = [
            Region::local("one", one.clone()),
            Region {
                name: "two".into(),
                targets: vec![std::sync::Arc::new(Breaks(LayoutTarget::new(
                    "two",
                    two.clone(),
                )))],
            },
        ];
        let mut a2 = artifact(2, "two", d.path());
        a2.previous = Some(1);
        let e = distribute(&regions, &a2, &quiet).await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("region two: the disk is full; taken back: one: "),
            "{e}"
        );
        for dir in [&one, &two] {
            let mut tags = kiln_image::list_tags(dir).unwrap();
            tags.sort();
            assert_eq!(tags, vec!["1.0.0", "1.0.0-1"], "{}", dir.display());
            assert_eq!(
                kiln_image::oci::tag_digest(dir, "1.0.0").unwrap(),
                kiln_image::oci::tag_digest(dir, "1.0.0-1").unwrap(),
                "{}: 1.0.0 is build 1 again",
                dir.display()
            );
        }
    }

    #[tokio::test]
    async fn outputs_come_image_first_build_tag_before_version_tag() {
        let d = tempfile::tempdir().unwrap();
        let regions = [
            Region::local("a", d.path().join("a")),
            Region::local("b", d.path().join("b")),
        ];
        let out = distribute(&regions, &artifact(3, "x", d.path()), &quiet)
            .await
            .unwrap();
        let seen: Vec<(String, String)> = out
            .iter()
            .map(|o| (o.region.clone(), o.tag.clone()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("a".into(), "1.0.0-3".into()),
                ("a".into(), "1.0.0".into()),
                ("b".into(), "1.0.0-3".into()),
                ("b".into(), "1.0.0".into()),
            ]
        );
        assert!(out
            .iter()
            .all(|o| o.manifest_digest == out[0].manifest_digest));
    }
}
