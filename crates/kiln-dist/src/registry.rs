//! A region in an OCI registry: each image goes to the repository `HOST/NAMESPACE/NAME`.
//!
//! Staging pushes the build under `VERSION-BUILD` (layers the registry already has are not
//! sent again); promoting copies that manifest to the `VERSION` tag (no blobs move). Taking back
//! points `VERSION` at the previous build's manifest again and deletes the build's manifest,
//! unless another build's tag still names the same manifest (a registry deletes manifests, not
//! tags, so that would take the other build's tag too).

use std::path::PathBuf;

use async_trait::async_trait;
use kiln_image::registry::{self as reg, Deleted, RegistryOptions};

use crate::{Artifact, BuildId, DistError, Output, OutputKind, Planned, Progress, Retired, Target};

/// How to reach the registries kiln distributes to: options per `HOST[:PORT]`.
#[derive(Debug, Clone, Default)]
pub struct RegistryAccess {
    hosts: Vec<(String, RegistryOptions)>,
}

impl RegistryAccess {
    /// Access with these options per host.
    pub fn new(hosts: Vec<(String, RegistryOptions)>) -> Self {
        RegistryAccess { hosts }
    }

    /// The options for a host (anonymous, HTTPS unless loopback, when none are configured).
    pub fn options_for(&self, host: &str) -> RegistryOptions {
        self.hosts
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, o)| o.clone())
            .unwrap_or_default()
    }
}

/// A registry region.
#[derive(Debug, Clone)]
pub struct RegistryTarget {
    region: String,
    /// `HOST[:PORT]` or `HOST[:PORT]/NAMESPACE`: the image name is appended.
    base: String,
    options: RegistryOptions,
    /// A target made from a planned entry names its repository exactly.
    exact: bool,
}

impl RegistryTarget {
    /// Region `region` in the registry `host` (`HOST[:PORT]`), under `namespace` when given.
    pub fn new(
        region: &str,
        host: &str,
        namespace: Option<&str>,
        options: RegistryOptions,
    ) -> Self {
        let base = match namespace
            .map(|n| n.trim_matches('/'))
            .filter(|n| !n.is_empty())
        {
            Some(n) => format!("{host}/{n}"),
            None => host.to_string(),
        };
        RegistryTarget {
            region: region.to_string(),
            base,
            options,
            exact: false,
        }
    }

    /// The target that wrote `repository` (`HOST[:PORT]/REPO`, as a plan names it).
    pub fn for_repository(
        region: &str,
        repository: &str,
        access: &RegistryAccess,
    ) -> Result<Self, DistError> {
        let host = repository.split('/').next().unwrap_or_default();
        if host.is_empty() || !repository.contains('/') {
            return Err(DistError::Unsupported {
                region: region.to_string(),
                what: format!("`{repository}` is not a registry repository (HOST/REPO)"),
            });
        }
        Ok(RegistryTarget {
            region: region.to_string(),
            base: repository.to_string(),
            options: access.options_for(host),
            exact: true,
        })
    }

    /// The repository an image goes to.
    pub fn repository(&self, build: &BuildId) -> String {
        if self.exact {
            self.base.clone()
        } else {
            format!("{}/{}", self.base, build.name.to_ascii_lowercase())
        }
    }

    fn fail(&self, source: kiln_image::RegistryError) -> DistError {
        DistError::Registry {
            region: self.region.clone(),
            source: Box::new(source),
        }
    }

    fn layout(&self, a: &Artifact) -> PathBuf {
        a.scratch.join(format!("push-{}", self.region))
    }
}

#[async_trait]
impl Target for RegistryTarget {
    fn region(&self) -> &str {
        &self.region
    }

    fn plan(&self, a: &Artifact) -> Vec<Planned> {
        a.image
            .iter()
            .map(|_| Planned {
                region: self.region.clone(),
                kind: OutputKind::OciRegistry,
                location: self.repository(&a.build),
                tags: vec![a.build.build_tag(), a.build.version_tag()],
            })
            .collect()
    }

    async fn check(&self, a: &Artifact) -> Result<(), DistError> {
        if a.disk.is_some() {
            return Err(DistError::Unsupported {
                region: self.region.clone(),
                what: format!(
                    "{} is an OCI registry, which kiln fills with container images only; give \
                     disk images a region that is a folder",
                    self.base
                ),
            });
        }
        // Asking for the version's tag proves the registry answers and takes the credentials.
        let reference = format!("{}:{}", self.repository(&a.build), a.build.version_tag());
        reg::manifest_digest(&reference, &self.options)
            .await
            .map(|_| ())
            .map_err(|e| self.fail(e))
    }

    async fn stage(&self, a: &Artifact, progress: Progress<'_>) -> Result<Vec<Output>, DistError> {
        let Some(image) = &a.image else {
            return Ok(Vec::new());
        };
        // push() reads from a layout: the build's own, written in scratch (blobs hard-linked).
        let (layout, tag, blobs, settings) = (
            self.layout(a),
            a.build.build_tag(),
            image.blobs.clone(),
            image.settings.clone(),
        );
        tokio::task::spawn_blocking(move || {
            kiln_image::write_image(&layout, &tag, &blobs, &settings).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|detail| DistError::Write {
            region: self.region.clone(),
            detail,
        })?;
        let repository = self.repository(&a.build);
        let reference = format!("{repository}:{}", a.build.build_tag());
        let digest = reg::push(
            &self.layout(a),
            &a.build.build_tag(),
            &reference,
            &self.options,
        )
        .await
        .map_err(|e| self.fail(e))?;
        progress(&format!("region {}: pushed {reference}", self.region));
        Ok(vec![Output {
            region: self.region.clone(),
            kind: OutputKind::OciRegistry,
            location: repository,
            tag: a.build.build_tag(),
            manifest_digest: digest,
        }])
    }

    async fn promote(
        &self,
        a: &Artifact,
        progress: Progress<'_>,
    ) -> Result<Vec<Output>, DistError> {
        if a.image.is_none() {
            return Ok(Vec::new());
        }
        let repository = self.repository(&a.build);
        let from = format!("{repository}:{}", a.build.build_tag());
        let digest = reg::retag(&from, &a.build.version_tag(), &self.options)
            .await
            .map_err(|e| self.fail(e))?;
        progress(&format!(
            "region {}: {repository} (tags {}, {})",
            self.region,
            a.build.build_tag(),
            a.build.version_tag()
        ));
        Ok(vec![Output {
            region: self.region.clone(),
            kind: OutputKind::OciRegistry,
            location: repository,
            tag: a.build.version_tag(),
            manifest_digest: digest,
        }])
    }

    async fn take_back(
        &self,
        planned: &[Planned],
        build: &BuildId,
        previous: Option<u32>,
    ) -> Vec<String> {
        let mut undone = Vec::new();
        for p in planned.iter().filter(|p| p.kind == OutputKind::OciRegistry) {
            let repo = &p.location;
            let digest_of = |tag: String| {
                let r = format!("{repo}:{tag}");
                async move { reg::manifest_digest(&r, &self.options).await }
            };
            let ours = match digest_of(build.build_tag()).await {
                Ok(Some(d)) => d,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("taking back {repo}:{}: {e}", build.build_tag());
                    continue;
                }
            };
            let version = digest_of(build.version_tag()).await.ok().flatten();
            let prev_tag = previous.map(|n| build.with_build(n).build_tag());
            let prev = match &prev_tag {
                Some(t) => digest_of(t.clone()).await.ok().flatten(),
                None => None,
            };
            if version.as_deref() == Some(ours.as_str()) {
                if let (Some(t), Some(d)) = (&prev_tag, &prev) {
                    if d != &ours {
                        let from = format!("{repo}:{t}");
                        if let Err(e) = reg::retag(&from, &build.version_tag(), &self.options).await
                        {
                            tracing::warn!("putting {repo}:{} back: {e}", build.version_tag());
                        }
                    }
                }
            }
            if prev.as_deref() == Some(ours.as_str()) {
                // The same manifest is the previous build's: deleting it would take that too.
                tracing::info!(
                    "{repo}:{} stays: it is the same image as build {}",
                    build.build_tag(),
                    previous.unwrap_or_default()
                );
                continue;
            }
            match reg::delete_manifest(&format!("{repo}@{ours}"), &self.options).await {
                Ok(Deleted::Deleted { .. }) => undone.push(format!("{repo}:{}", build.build_tag())),
                Ok(Deleted::NotFound) => {}
                Ok(Deleted::Unsupported { detail, .. }) => tracing::warn!(
                    "{repo}:{} stays: the registry does not allow deleting manifests ({detail})",
                    build.build_tag()
                ),
                Err(e) => tracing::warn!("taking back {repo}:{}: {e}", build.build_tag()),
            }
        }
        undone
    }

    async fn retire(&self, outputs: &[Output], build: &BuildId, previous: Option<u32>) -> Retired {
        let mut done = Retired::default();
        let Some(first) = outputs.iter().find(|o| o.kind == OutputKind::OciRegistry) else {
            return done;
        };
        let repo = first.location.clone();
        let region = self.region.clone();
        let ours_outputs: Vec<Output> = outputs
            .iter()
            .filter(|o| o.kind == OutputKind::OciRegistry)
            .cloned()
            .collect();
        let fail = |e: String| Retired::all_failed(&ours_outputs, &format!("region {region}: {e}"));
        let digest_of = |tag: String| {
            let r = format!("{repo}:{tag}");
            async move { reg::manifest_digest(&r, &self.options).await }
        };
        let ours = match digest_of(build.build_tag()).await {
            Ok(Some(d)) => d,
            Ok(None) => return done, // gone already
            Err(e) => return fail(e.to_string()),
        };
        let version = match digest_of(build.version_tag()).await {
            Ok(v) => v,
            Err(e) => return fail(e.to_string()),
        };
        let prev_tag = previous.map(|n| build.with_build(n).build_tag());
        let prev = match &prev_tag {
            Some(t) => match digest_of(t.clone()).await {
                Ok(d) => d,
                Err(e) => return fail(e.to_string()),
            },
            None => None,
        };
        if version.as_deref() == Some(ours.as_str()) {
            if let (Some(t), Some(d)) = (&prev_tag, &prev) {
                if d != &ours {
                    let from = format!("{repo}:{t}");
                    if let Err(e) = reg::retag(&from, &build.version_tag(), &self.options).await {
                        return fail(format!(
                            "pointing {repo}:{} back at {t}: {e}",
                            build.version_tag()
                        ));
                    }
                    done.removed.push(format!(
                        "{region}: {repo}:{} (now build {t})",
                        build.version_tag()
                    ));
                }
            }
        }
        if prev.as_deref() == Some(ours.as_str()) {
            // A registry deletes manifests, not tags: deleting this one would take the other
            // build's tag too.
            done.kept.push(format!(
                "{region}: {repo}:{} stays: it is the same manifest as build {}, which is kept",
                build.build_tag(),
                previous.unwrap_or_default()
            ));
            return done;
        }
        match reg::delete_manifest(&format!("{repo}@{ours}"), &self.options).await {
            Ok(Deleted::Deleted { .. }) | Ok(Deleted::NotFound) => {
                done.removed
                    .push(format!("{region}: {repo}:{}", build.build_tag()));
                if version.as_deref() == Some(ours.as_str()) && prev.is_none() {
                    done.removed
                        .push(format!("{region}: {repo}:{}", build.version_tag()));
                }
                done
            }
            Ok(Deleted::Unsupported { detail, .. }) => fail(format!(
                "{repo}:{} stays: the registry does not allow deleting manifests ({detail}); \
                 enable deletion (the CNCF registry's storage.delete.enabled) and delete it again",
                build.build_tag()
            )),
            Err(e) => fail(e.to_string()),
        }
    }
}
