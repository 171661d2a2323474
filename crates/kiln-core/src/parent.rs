//! Parent images: turning `parentImage` into layers in the store, cached by their inputs.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use kiln_image::oci_spec::image::ImageConfiguration;
use tokio::io::AsyncBufReadExt;

use crate::cache::{StepCache, StepKey};
use crate::recipe::{Compression, ParentImage, Recipe};
use crate::record::{ImageQuery, ParentRecord, Records};
use crate::store::{sha256_hex, Home, LayerStore, StoreError, StoredLayer};

/// The hostname a bootstrapped image carries (each instance sets its own).
const BOOTSTRAP_HOSTNAME: &str = "debian";

/// Why a parent image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    /// A host program kiln needs is missing.
    #[error("{program} is not installed: {hint}")]
    MissingProgram {
        /// The program.
        program: String,
        /// What to do.
        hint: String,
    },
    /// The parent does not exist or cannot be read.
    #[error("parent image {reference}: {why}")]
    Unavailable {
        /// As the recipe named it.
        reference: String,
        /// What is wrong, and what to do.
        why: String,
    },
    /// The layer store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A resolved parent: layers in the store, bottom first, and the parent's image config.
#[derive(Debug, Clone)]
pub struct Parent {
    /// Layers, bottom first.
    pub layers: Vec<StoredLayer>,
    /// The parent's OCI config (its env, entrypoint...), when it has one.
    pub config: Option<ImageConfiguration>,
    /// What goes into the build record.
    pub record: ParentRecord,
}

/// Where progress lines of a long step (the bootstrap) go.
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

pub(crate) fn compression_of(c: Compression) -> kiln_image::Compression {
    match c {
        Compression::Gzip => kiln_image::Compression::Gzip,
        Compression::Zstd => kiln_image::Compression::Zstd,
    }
}

/// Finds `program` in `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// Credentials and transport for one registry host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryCredentials {
    /// `HOST[:PORT]` as in image references.
    pub host: String,
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
    /// Speak plain HTTP even though the host is not loopback.
    pub insecure_http: bool,
}

/// Resolves a recipe's parent image into layers.
pub async fn resolve(
    home: &Home,
    recipe: &Recipe,
    epoch: i64,
    refresh: bool,
    registries: &[RegistryCredentials],
    progress: Progress<'_>,
) -> Result<Parent, ParentError> {
    let store = LayerStore::new(home.clone());
    let cache = StepCache::new(home.clone());
    let reference = recipe.parent.to_string();
    let unavailable = |why: String| ParentError::Unavailable {
        reference: reference.clone(),
        why,
    };
    match &recipe.parent {
        ParentImage::Bootstrap { distro, suite } => {
            let mut packages = recipe.bootstrap_package_list();
            packages.sort();
            packages.dedup();
            let request = serde_json::json!({
                "distro": distro, "suite": suite, "variant": "minbase",
                "packages": packages, "mirror": recipe.bootstrap_mirror,
                "hostname": BOOTSTRAP_HOSTNAME,
            });
            let key = StepKey {
                kind: "bootstrap".into(),
                parents: vec![],
                input: sha256_hex(request.to_string().as_bytes()),
                parameters: vec![],
                builder: "mmdebstrap".into(),
                working_directory: String::new(),
                compression: format!("{:?}", recipe.compression),
            }
            .digest();
            if !refresh {
                if let Some(layer) = cache.get(&key) {
                    return Ok(Parent {
                        record: ParentRecord {
                            reference,
                            resolved: format!(
                                "{distro}/{suite} minbase (cached {})",
                                layer.info.diff_id
                            ),
                            layers: vec![layer.info.diff_id.clone()],
                            cached: true,
                        },
                        layers: vec![layer],
                        config: None,
                    });
                }
            }
            let layer = bootstrap(home, &store, suite, &packages, recipe, epoch, progress).await?;
            cache.put(&key, &layer, &reference)?;
            Ok(Parent {
                record: ParentRecord {
                    reference,
                    resolved: format!("{distro}/{suite} minbase"),
                    layers: vec![layer.info.diff_id.clone()],
                    cached: false,
                },
                layers: vec![layer],
                config: None,
            })
        }
        ParentImage::Rootfs { file } => {
            if !file.is_file() {
                return Err(unavailable(format!("no tarball at {}", file.display())));
            }
            let file = file.clone();
            let digest =
                tokio::task::spawn_blocking(move || kiln_image::digest::sha256_file(&file))
                    .await
                    .map_err(|e| unavailable(e.to_string()))?
                    .map_err(|e| unavailable(e.to_string()))?;
            let key = StepKey {
                kind: "rootfs".into(),
                parents: vec![],
                input: digest.clone(),
                parameters: vec![],
                builder: String::new(),
                working_directory: String::new(),
                compression: format!("{:?}", recipe.compression),
            }
            .digest();
            if let Some(layer) = cache.get(&key) {
                return Ok(Parent {
                    record: ParentRecord {
                        reference,
                        resolved: digest,
                        layers: vec![layer.info.diff_id.clone()],
                        cached: true,
                    },
                    layers: vec![layer],
                    config: None,
                });
            }
            progress("importing the root filesystem tarball");
            let layer = import_tar(
                &store,
                file_of(&recipe.parent),
                epoch,
                recipe.compression,
                &reference,
            )
            .await?;
            cache.put(&key, &layer, &reference)?;
            Ok(Parent {
                record: ParentRecord {
                    reference,
                    resolved: digest,
                    layers: vec![layer.info.diff_id.clone()],
                    cached: false,
                },
                layers: vec![layer],
                config: None,
            })
        }
        ParentImage::Oci { dir, tag } => from_layout(&store, dir, tag.as_deref(), reference).await,
        ParentImage::Registry { reference: r } => {
            // Pulled into kiln's own layout (blobs it already has are not fetched again), then
            // imported like any OCI layout.
            let parsed =
                kiln_image::registry::parse_reference(r).map_err(|e| unavailable(e.to_string()))?;
            let opts = kiln_image::registry::RegistryOptions {
                auth: registries
                    .iter()
                    .find(|c| c.host == parsed.registry())
                    .map(|c| kiln_image::registry::RegistryAuth {
                        username: c.username.clone(),
                        password: c.password.clone(),
                    }),
                insecure_http: registries
                    .iter()
                    .any(|c| c.host == parsed.registry() && c.insecure_http),
            };
            let layout = home.root.join("pulls");
            let tag = format!("p-{}", &sha256_hex(r.as_bytes())[..24]);
            progress(&format!("pulling {r}"));
            let pulled = kiln_image::registry::pull(r, &layout, &tag, &opts)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let mut p = from_layout(&store, &layout, Some(&tag), reference).await?;
            p.record.resolved = pulled.manifest_digest;
            Ok(p)
        }
        ParentImage::Image {
            name,
            version,
            build,
        } => {
            let state = crate::state::Store::open(home)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let records = Records::new(state);
            let q = ImageQuery {
                name: name.clone(),
                version: Some(*version),
                build: *build,
            };
            let found = records
                .newest_available(&q)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let Some(rec) = found else {
                let mut any = crate::record::filter_of(&ImageQuery {
                    name: name.clone(),
                    version: None,
                    build: None,
                });
                any.limit = Some(10);
                let known: Vec<String> = records
                    .summaries(&any)
                    .await
                    .map_err(|e| unavailable(e.to_string()))?
                    .iter()
                    .map(|r| format!("{} ({})", r.build_version(), r.state.as_str()))
                    .collect();
                return Err(unavailable(if known.is_empty() {
                    format!("kiln has built no image named `{name}`")
                } else {
                    format!(
                        "no AVAILABLE build of `{name}` matches {version}; newest builds: {}",
                        known.join(", ")
                    )
                }));
            };
            if rec
                .components
                .iter()
                .any(|c| c.cache == crate::record::CacheUse::InVm)
            {
                return Err(unavailable(format!(
                    "{} was built by the VM builder: its result is a disk image, not layers, so it cannot be a parent; build the parent with the sandbox builder (outputs: [oci, disk])",
                    rec.build_version()
                )));
            }
            // Its layers are usually still in the store; otherwise read them from a region.
            let layers: Option<Vec<StoredLayer>> =
                rec.layers.iter().map(|d| store.get(d)).collect();
            if let Some(layers) = layers {
                let config = rec
                    .outputs
                    .first()
                    .and_then(|o| kiln_image::read_image(&o.location, Some(&o.tag)).ok())
                    .map(|r| r.config);
                return Ok(Parent {
                    record: ParentRecord {
                        reference,
                        resolved: rec.build_version(),
                        layers: rec.layers.clone(),
                        cached: true,
                    },
                    layers,
                    config,
                });
            }
            let out = rec.outputs.first().ok_or_else(|| {
                unavailable(format!(
                    "{} has no output to read its layers from",
                    rec.build_version()
                ))
            })?;
            let mut p = from_layout(&store, &out.location, Some(&out.tag), reference).await?;
            p.record.resolved = rec.build_version();
            Ok(p)
        }
    }
}

fn file_of(p: &ParentImage) -> PathBuf {
    match p {
        ParentImage::Rootfs { file } => file.clone(),
        _ => PathBuf::new(),
    }
}

async fn import_tar(
    store: &LayerStore,
    tar: PathBuf,
    epoch: i64,
    compression: Compression,
    description: &str,
) -> Result<StoredLayer, ParentError> {
    let store = store.clone();
    let description = description.to_string();
    tokio::task::spawn_blocking(move || {
        let blob = kiln_image::layer_from_tar(
            &tar,
            epoch,
            compression_of(compression),
            &store.blobs_dir(),
        )
        .map_err(StoreError::from)?;
        store.import(&blob, &description).map_err(ParentError::from)
    })
    .await
    .map_err(|e| ParentError::Unavailable {
        reference: "tarball".into(),
        why: e.to_string(),
    })?
}

async fn from_layout(
    store: &LayerStore,
    dir: &Path,
    tag: Option<&str>,
    reference: String,
) -> Result<Parent, ParentError> {
    let store = store.clone();
    let dir = dir.to_path_buf();
    let tag = tag.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let image =
            kiln_image::read_image(&dir, tag.as_deref()).map_err(|e| ParentError::Unavailable {
                reference: reference.clone(),
                why: e.to_string(),
            })?;
        let mut layers = Vec::new();
        let mut cached = true;
        for blob in &image.layers {
            let layer = match store.get(&blob.diff_id) {
                Some(l) => l,
                None => {
                    cached = false;
                    store.import(blob, &reference)?
                }
            };
            layers.push(layer);
        }
        Ok(Parent {
            record: ParentRecord {
                reference,
                resolved: image.manifest_digest.clone(),
                layers: layers.iter().map(|l| l.info.diff_id.clone()).collect(),
                cached,
            },
            layers,
            config: Some(image.config),
        })
    })
    .await
    .map_err(|e| ParentError::Unavailable {
        reference: "oci layout".into(),
        why: e.to_string(),
    })?
}

async fn bootstrap(
    home: &Home,
    store: &LayerStore,
    suite: &str,
    packages: &[String],
    recipe: &Recipe,
    epoch: i64,
    progress: Progress<'_>,
) -> Result<StoredLayer, ParentError> {
    let Some(mmdebstrap) = which("mmdebstrap") else {
        return Err(ParentError::MissingProgram {
            program: "mmdebstrap".into(),
            hint:
                "kiln bootstraps Debian with it; run scripts/setup, or apt-get install mmdebstrap"
                    .into(),
        });
    };
    let work = home
        .run()
        .join(format!("bootstrap-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&work).map_err(crate::store::io("creating", &work))?;
    let tar = work.join("rootfs.tar");
    let mut cmd = tokio::process::Command::new(mmdebstrap);
    cmd.arg("--variant=minbase")
        .arg("--mode=root")
        .arg("--format=tar");
    if !packages.is_empty() {
        cmd.arg(format!("--include={}", packages.join(",")));
    }
    // mmdebstrap copies the build host's hostname in; an image must not carry it.
    cmd.arg(format!(
        "--customize-hook=echo {BOOTSTRAP_HOSTNAME} > \"$1/etc/hostname\"; printf '127.0.0.1\\tlocalhost\\n127.0.1.1\\t{BOOTSTRAP_HOSTNAME}\\n::1\\tlocalhost ip6-localhost ip6-loopback\\n' > \"$1/etc/hosts\""
    ));
    cmd.arg(suite).arg(&tar);
    if let Some(m) = &recipe.bootstrap_mirror {
        cmd.arg(m);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    progress(&format!(
        "bootstrapping Debian {suite} (minbase{}) with mmdebstrap",
        if packages.is_empty() {
            String::new()
        } else {
            format!(" + {}", packages.join(", "))
        }
    ));
    let result = async {
        let mut child = cmd.spawn().map_err(|e| ParentError::Unavailable {
            reference: format!("bootstrap:debian/{suite}"),
            why: format!("cannot start mmdebstrap: {e}"),
        })?;
        let mut tail: Vec<String> = Vec::new();
        if let Some(err) = child.stderr.take() {
            let mut lines = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                progress(&l);
                tail.push(l);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
        }
        let status = child.wait().await.map_err(|e| ParentError::Unavailable {
            reference: format!("bootstrap:debian/{suite}"),
            why: e.to_string(),
        })?;
        if !status.success() {
            return Err(ParentError::Unavailable {
                reference: format!("bootstrap:debian/{suite}"),
                why: format!(
                    "mmdebstrap failed ({status}); its last lines:\n  {}\n(check the suite name, the package names and that the mirror is reachable)",
                    tail.join("\n  ")
                ),
            });
        }
        progress("importing the bootstrapped root filesystem");
        import_tar(store, tar.clone(), epoch, recipe.compression, &format!("bootstrap:debian/{suite}")).await
    }
    .await;
    crate::store::remove_tree(&work);
    result
}
