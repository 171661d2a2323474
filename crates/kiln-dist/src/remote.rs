//! A region in an OCI registry or a bucket: the [`Piece`]s of a build (container image, chunked
//! disk, containerDisk) go to repositories under the region's base, `BASE/NAME`,
//! `BASE/NAME/disk` and `BASE/NAME/containerdisk`.
//!
//! Staging sends blobs and manifests by digest only, so no reader of tags sees anything;
//! promoting writes the tags (`VERSION-BUILD`, `VERSION`, and the distribution's own), which
//! moves no blob. Taking back points the version's tags at the previous build again and deletes
//! the build's manifest, unless the previous build has the same manifest (a registry deletes
//! manifests, and with them every tag naming them).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::pieces::{Piece, MANIFEST_MEDIA_TYPE};
use crate::repo::{Moved, Removed, Repo, RepoError};
use crate::{Artifact, BuildId, DistError, Output, OutputKind, Planned, Progress, Retired, Target};

/// Makes the repositories of a region: a registry's or a bucket's.
pub trait Place: Send + Sync {
    /// The repository at `path` below the place (`golden/web/disk`).
    fn repo(&self, path: &str) -> Result<Arc<dyn Repo>, RepoError>;
    /// Where the place is, for messages (`docker://HOST/NS`, `s3://BUCKET/PREFIX`).
    fn describe(&self) -> String;
    /// True for a registry (container images are `oci-registry` outputs there).
    fn is_registry(&self) -> bool;
}

/// What a distribution configuration says about names in a region.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Naming {
    /// The repository of the container image instead of the image's name
    /// (`containerDistributionConfiguration.targetRepository.repositoryName`).
    pub repository: Option<String>,
    /// More tags of the container image (`containerDistributionConfiguration.containerTags`).
    pub container_tags: Vec<String>,
    /// More tags of the disk (`amiDistributionConfiguration.name`, rendered).
    pub disk_tags: Vec<String>,
}

/// A registry or bucket region.
pub struct RemoteTarget {
    region: String,
    place: Box<dyn Place>,
    naming: Naming,
    /// Which kinds of piece this region takes.
    kinds: Vec<OutputKind>,
    /// Paths of the same image in other regions of the same registry, to mount blobs from.
    siblings: Vec<String>,
    /// Bytes sent per piece while staging, for the outputs of promotion.
    sent: Mutex<Vec<(OutputKind, u64)>>,
    /// The signature and documents each registry manifest gets (supply chain).
    attachments: Option<crate::attach::Attachments>,
    /// What was attached, for the record.
    attached: Arc<Mutex<Vec<crate::attach::Attached>>>,
}

impl RemoteTarget {
    /// Region `region` at `place`, taking pieces of `kinds`.
    pub fn new(
        region: &str,
        place: Box<dyn Place>,
        kinds: Vec<OutputKind>,
        naming: Naming,
    ) -> Self {
        RemoteTarget {
            region: region.to_string(),
            place,
            naming,
            kinds,
            siblings: Vec::new(),
            sent: Mutex::new(Vec::new()),
            attachments: None,
            attached: Arc::default(),
        }
    }

    /// Signs every manifest it stages in a registry and attaches `documents` as referrers
    /// ([`crate::attach`]); what it attached is pushed to `log`.
    pub fn with_attachments(
        mut self,
        attachments: crate::attach::Attachments,
        log: Arc<Mutex<Vec<crate::attach::Attached>>>,
    ) -> Self {
        self.attachments = Some(attachments);
        self.attached = log;
        self
    }

    /// Other bases of the same registry (`NAMESPACE` paths) whose repositories may lend blobs.
    pub fn with_siblings(mut self, bases: Vec<String>) -> Self {
        self.siblings = bases;
        self
    }

    /// The repository path of a piece: `NAME`, or `NAME/SUFFIX`.
    fn path(&self, build: &BuildId, piece: &Piece) -> String {
        let name = match (&self.naming.repository, piece.kind) {
            (Some(r), OutputKind::OciRegistry) => r.clone(),
            _ => build.name.to_ascii_lowercase(),
        };
        match piece.suffix {
            Some(s) => format!("{name}/{s}"),
            None => name,
        }
    }

    fn output_kind(&self, piece: &Piece) -> OutputKind {
        match piece.kind {
            OutputKind::OciRegistry if !self.place.is_registry() => OutputKind::OciBucket,
            k => k,
        }
    }

    fn pieces<'a>(&self, a: &'a Artifact) -> Vec<&'a Piece> {
        a.pieces
            .iter()
            .filter(|p| self.kinds.contains(&p.kind))
            .collect()
    }

    fn tags(&self, build: &BuildId, piece: &Piece) -> Vec<String> {
        let mut tags = vec![build.build_tag(), build.version_tag()];
        let extra = match piece.kind {
            OutputKind::OciRegistry => &self.naming.container_tags,
            OutputKind::DiskChunks => &self.naming.disk_tags,
            _ => return tags,
        };
        for t in extra {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        tags
    }

    /// The repository of this target at `location` (as an output or plan names it).
    pub fn repo_at(&self, location: &str) -> Result<Arc<dyn Repo>, RepoError> {
        self.place.repo(path_of(&self.place.describe(), location))
    }

    fn fail(&self, location: &str, e: RepoError) -> DistError {
        DistError::Remote {
            region: self.region.clone(),
            location: location.to_string(),
            source: Box::new(e),
        }
    }

    fn repo(&self, path: &str) -> Result<Arc<dyn Repo>, DistError> {
        self.place
            .repo(path)
            .map_err(|e| self.fail(&self.place.describe(), e))
    }

    async fn send_piece(
        &self,
        repo: &dyn Repo,
        piece: &Piece,
        mount_from: &[String],
        progress: Progress<'_>,
    ) -> Result<u64, DistError> {
        let location = repo.location();
        let mut sent = 0u64;
        let (mut present, mut mounted, mut uploaded) = (0, 0, 0);
        for (digest, bytes) in &piece.small {
            sent += repo
                .put_blob_bytes(digest, bytes)
                .await
                .map_err(|e| self.fail(&location, e))?
                .bytes();
        }
        for b in &piece.blobs {
            let moved = repo
                .put_blob(&b.digest, b.size, &b.path, mount_from)
                .await
                .map_err(|e| self.fail(&location, e))?;
            match moved {
                Moved::Present => present += 1,
                Moved::Mounted => mounted += 1,
                Moved::Uploaded(_) => uploaded += 1,
            }
            sent += moved.bytes();
        }
        let digest = repo
            .put_manifest(None, &piece.manifest, MANIFEST_MEDIA_TYPE)
            .await
            .map_err(|e| self.fail(&location, e))?;
        if digest != piece.digest {
            return Err(self.fail(
                &location,
                RepoError::Protocol(format!(
                    "the manifest kiln sent is {} but the repository holds {digest}",
                    piece.digest
                )),
            ));
        }
        sent += piece.manifest.len() as u64;
        progress(&format!(
            "region {}: {location}: {} sent ({uploaded} blobs uploaded, {mounted} mounted, \
             {present} already there)",
            self.region,
            human(sent)
        ));
        Ok(sent)
    }
}

/// Bytes for people.
pub fn human(n: u64) -> String {
    match n {
        n if n >= 10 << 20 => format!("{} MiB", n >> 20),
        n if n >= 10 << 10 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

#[async_trait]
impl Target for RemoteTarget {
    fn region(&self) -> &str {
        &self.region
    }

    fn plan(&self, a: &Artifact) -> Vec<Planned> {
        self.pieces(a)
            .into_iter()
            .filter_map(|p| {
                let repo = self.place.repo(&self.path(&a.build, p)).ok()?;
                Some(Planned {
                    region: self.region.clone(),
                    kind: self.output_kind(p),
                    location: repo.location(),
                    tags: self.tags(&a.build, p),
                    digest: Some(p.digest.clone()),
                })
            })
            .collect()
    }

    async fn check(&self, a: &Artifact) -> Result<(), DistError> {
        for p in self.pieces(a) {
            let repo = self.repo(&self.path(&a.build, p))?;
            // Reading the version's tag proves the place answers and takes the credentials.
            repo.tag_digest(&a.build.version_tag())
                .await
                .map_err(|e| self.fail(&repo.location(), e))?;
        }
        Ok(())
    }

    async fn stage(&self, a: &Artifact, progress: Progress<'_>) -> Result<Vec<Output>, DistError> {
        for p in self.pieces(a) {
            let path = self.path(&a.build, p);
            let repo = self.repo(&path)?;
            let mount_from: Vec<String> = self
                .siblings
                .iter()
                .map(|base| format!("{}/{path}", base.trim_end_matches('/')))
                .collect();
            let sent = self
                .send_piece(repo.as_ref(), p, &mount_from, progress)
                .await?;
            // Signed after its content is staged, before any tag names it: a failure here
            // takes the build back like any failed stage.
            if let (Some(att), true) = (&self.attachments, self.place.is_registry()) {
                let done = crate::attach::attach(repo.as_ref(), &p.digest, &p.manifest, att)
                    .await
                    .map_err(|e| self.fail(&repo.location(), e))?;
                progress(&format!(
                    "region {}: {}: signed ({}) and {} documents attached",
                    self.region,
                    done.location,
                    done.signature_tag,
                    done.referrers.len()
                ));
                if let Ok(mut log) = self.attached.lock() {
                    log.push(done);
                }
            }
            if let Ok(mut m) = self.sent.lock() {
                m.retain(|(k, _)| *k != p.kind);
                m.push((p.kind, sent));
            }
        }
        Ok(Vec::new())
    }

    async fn promote(
        &self,
        a: &Artifact,
        progress: Progress<'_>,
    ) -> Result<Vec<Output>, DistError> {
        let mut outputs = Vec::new();
        for p in self.pieces(a) {
            let repo = self.repo(&self.path(&a.build, p))?;
            let location = repo.location();
            let tags = self.tags(&a.build, p);
            for t in &tags {
                repo.put_manifest(Some(t), &p.manifest, MANIFEST_MEDIA_TYPE)
                    .await
                    .map_err(|e| self.fail(&location, e))?;
            }
            progress(&format!(
                "region {}: {location} (tags {})",
                self.region,
                tags.join(", ")
            ));
            let sent = self
                .sent
                .lock()
                .ok()
                .and_then(|m| m.iter().find(|(k, _)| *k == p.kind).map(|(_, n)| *n));
            outputs.push(Output {
                region: self.region.clone(),
                kind: self.output_kind(p),
                location,
                tag: a.build.version_tag(),
                manifest_digest: p.digest.clone(),
                tags,
                sent,
            });
        }
        Ok(outputs)
    }

    async fn take_back(
        &self,
        planned: &[Planned],
        build: &BuildId,
        previous: Option<u32>,
    ) -> Vec<String> {
        let mut undone = Vec::new();
        for p in planned {
            let Ok(repo) = self.repo_at(&p.location) else {
                continue;
            };
            match undo(repo.as_ref(), p.digest.as_deref(), &p.tags, build, previous).await {
                Ok(done) => undone.extend(done.removed),
                Err(e) => tracing::warn!("taking back {}: {e}", p.location),
            }
        }
        undone
    }

    async fn retire(&self, outputs: &[Output], build: &BuildId, previous: Option<u32>) -> Retired {
        let mut done = Retired::default();
        for o in outputs {
            let repo = match self.repo_at(&o.location) {
                Ok(r) => r,
                Err(e) => {
                    done.failed
                        .push((o.clone(), format!("region {}: {e}", self.region)));
                    continue;
                }
            };
            let tags = if o.tags.is_empty() {
                vec![build.build_tag(), build.version_tag()]
            } else {
                o.tags.clone()
            };
            match undo(
                repo.as_ref(),
                Some(&o.manifest_digest),
                &tags,
                build,
                previous,
            )
            .await
            {
                Ok(u) if u.unsupported.is_none() => {
                    done.removed.extend(
                        u.removed
                            .into_iter()
                            .map(|r| format!("{}: {r}", self.region)),
                    );
                    done.kept
                        .extend(u.kept.into_iter().map(|r| format!("{}: {r}", self.region)));
                }
                Ok(u) => done.failed.push((
                    o.clone(),
                    format!(
                        "region {}: {} stays: the registry does not allow deleting manifests \
                         ({}); enable deletion (the CNCF registry's storage.delete.enabled) and \
                         delete it again",
                        self.region,
                        o.location,
                        u.unsupported.unwrap_or_default()
                    ),
                )),
                Err(e) => done
                    .failed
                    .push((o.clone(), format!("region {}: {e}", self.region))),
            }
        }
        done
    }
}

/// The repository path of `location` below the place described as `base`.
fn path_of<'a>(base: &str, location: &'a str) -> &'a str {
    // Records of older kilns name registry repositories without the scheme.
    let base = base.strip_prefix("docker://").unwrap_or(base);
    let location = location.strip_prefix("docker://").unwrap_or(location);
    location
        .strip_prefix(base)
        .map(|p| p.trim_start_matches('/'))
        .unwrap_or(location)
}

/// What undoing a build's tags in one repository did.
#[derive(Debug, Default)]
struct Undone {
    removed: Vec<String>,
    kept: Vec<String>,
    unsupported: Option<String>,
}

/// Takes a build out of one repository: each of its `tags` that names the build's manifest
/// goes back to the previous build's manifest (when there is one, and it differs), then the
/// manifest is deleted unless the previous build has the very same one.
async fn undo(
    repo: &dyn Repo,
    digest: Option<&str>,
    tags: &[String],
    build: &BuildId,
    previous: Option<u32>,
) -> Result<Undone, RepoError> {
    let location = repo.location();
    let mut done = Undone::default();
    let ours = match digest {
        Some(d) => d.to_string(),
        None => match repo.tag_digest(&build.build_tag()).await? {
            Some(d) => d,
            None => return Ok(done),
        },
    };
    let prev_tag = previous.map(|n| build.with_build(n).build_tag());
    let prev = match &prev_tag {
        Some(t) => repo.tag_digest(t).await?,
        None => None,
    };
    if prev.as_deref() == Some(ours.as_str()) {
        done.kept.push(format!(
            "{location}:{} stays: it is the same manifest as build {}, which is kept",
            build.build_tag(),
            previous.unwrap_or_default()
        ));
        return Ok(done);
    }
    if let Some(prev) = &prev {
        for t in tags.iter().filter(|t| **t != build.build_tag()) {
            if repo.tag_digest(t).await?.as_deref() == Some(ours.as_str()) {
                repo.set_tag(t, prev).await?;
                done.removed.push(format!(
                    "{location}:{t} (now build {})",
                    previous.unwrap_or_default()
                ));
            }
        }
    }
    match repo.delete_manifest(&ours).await? {
        Removed::Removed => done
            .removed
            .push(format!("{location}@{ours} (build {})", build.build_tag())),
        Removed::NotFound => {}
        Removed::Unsupported(why) => {
            done.unsupported = Some(why);
            return Ok(done);
        }
    }
    // Its signatures and referrers go with it (a signature of nothing is noise).
    match crate::attach::detach(repo, &ours).await {
        Ok(gone) => done.removed.extend(gone),
        Err(e) => tracing::warn!("removing the signatures and referrers of {location}@{ours}: {e}"),
    }
    Ok(done)
}
