//! Parent images: turning `parentImage` into layers in the store, cached by their inputs.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use kiln_image::oci_spec::image::ImageConfiguration;
use tokio::io::AsyncBufReadExt;

use crate::cache::{StepCache, StepKey, StepKind};
use crate::recipe::{Compression, ParentImage, Recipe};
use crate::record::{ImageQuery, OutputKind, ParentRecord, Records};
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
#[derive(Clone, Default, PartialEq, Eq)]
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

impl std::fmt::Debug for RegistryCredentials {
    /// Keeps the password out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("insecure_http", &self.insecure_http)
            .finish()
    }
}

/// What resolving a parent needs besides the recipe.
pub struct ParentContext<'a> {
    /// The data directory (layer store, step cache, pulls).
    pub home: &'a Home,
    /// The build records, for `kiln:` parents (the build's own state store).
    pub records: &'a Records,
    /// The account the build is for: `kiln:` parents are its own images only.
    pub account: &'a str,
    /// Timestamp for imported layers.
    pub epoch: i64,
    /// Bootstrap again instead of taking a cached bootstrap.
    pub refresh: bool,
    /// Credentials for registries parents come from.
    pub registries: &'a [RegistryCredentials],
    /// Where progress lines go.
    pub progress: Progress<'a>,
}

/// Resolves a recipe's parent image into layers.
pub async fn resolve(cx: &ParentContext<'_>, recipe: &Recipe) -> Result<Parent, ParentError> {
    let reference = recipe.parent.to_string();
    match &recipe.parent {
        ParentImage::Bootstrap { distro, suite } => {
            bootstrapped(cx, recipe, distro, suite, reference).await
        }
        ParentImage::Rootfs { file } => from_tarball(cx, recipe, file, reference).await,
        ParentImage::Oci { dir, tag } => {
            let mut p = from_layout(
                &LayerStore::new(cx.home.clone()),
                dir,
                tag.as_deref(),
                reference,
            )
            .await?;
            // The entry of the tag in index.json, as `updates::parent_moved` reads it again.
            p.record.digest = tag
                .as_deref()
                .and_then(|t| kiln_image::oci::tag_digest(dir, t).ok().flatten());
            Ok(p)
        }
        ParentImage::Registry { reference: r } => pulled(cx, r, reference).await,
        ParentImage::Image {
            name,
            version,
            build,
            account,
        } => {
            // Another account's image is a parent only as far as its owner shares it with
            // this build's account (PutImagePolicy); of it, this account sees nothing else.
            let owner = account.as_deref().unwrap_or(cx.account);
            let q = ImageQuery {
                account: Some(owner.to_string()),
                name: name.clone(),
                version: Some(*version),
                build: *build,
            };
            let shared = (owner != cx.account).then_some(cx.account);
            built_by_kiln(cx, &q, reference, shared).await
        }
    }
}

/// How distribution reaches the configured registries.
pub fn registry_access(registries: &[RegistryCredentials]) -> kiln_dist::RegistryAccess {
    kiln_dist::RegistryAccess::new(
        registries
            .iter()
            .map(|c| (c.host.clone(), registry_options(c)))
            .collect(),
    )
}

/// A configured host's credentials and transport: pulls and distribution reach it the same way.
fn registry_options(c: &RegistryCredentials) -> kiln_image::registry::RegistryOptions {
    kiln_image::registry::RegistryOptions {
        // A host configured only to be spoken to over plain HTTP has no credentials.
        auth: (!c.username.is_empty()).then(|| kiln_image::registry::RegistryAuth {
            username: c.username.clone(),
            password: c.password.clone(),
        }),
        insecure_http: c.insecure_http,
    }
}

/// A layer step's parts that are the same for every parent kind.
fn parent_key(kind: StepKind, input: String, recipe: &Recipe) -> String {
    StepKey {
        kind,
        parents: vec![],
        input,
        parameters: vec![],
        builder: None,
        working_directory: String::new(),
        compression: recipe.compression,
    }
    .digest()
}

/// One layer as a parent.
fn single(reference: String, resolved: String, layer: StoredLayer, cached: bool) -> Parent {
    Parent {
        record: ParentRecord {
            reference,
            resolved,
            layers: vec![layer.info.diff_id.clone()],
            cached,
            digest: None,
        },
        layers: vec![layer],
        config: None,
    }
}

async fn bootstrapped(
    cx: &ParentContext<'_>,
    recipe: &Recipe,
    distro: &str,
    suite: &str,
    reference: String,
) -> Result<Parent, ParentError> {
    let cache = StepCache::new(cx.home.clone());
    let mut packages = recipe.bootstrap_package_list();
    packages.sort();
    packages.dedup();
    let request = serde_json::json!({
        "distro": distro, "suite": suite, "variant": "minbase",
        "packages": packages, "mirror": recipe.bootstrap_mirror,
        "hostname": BOOTSTRAP_HOSTNAME,
    });
    let key = parent_key(
        StepKind::Bootstrap,
        sha256_hex(request.to_string().as_bytes()),
        recipe,
    );
    if !cx.refresh {
        if let Some(layer) = cache.get(&key) {
            let resolved = format!("{distro}/{suite} minbase (cached {})", layer.info.diff_id);
            return Ok(single(reference, resolved, layer, true));
        }
    }
    let store = LayerStore::new(cx.home.clone());
    let layer = bootstrap(cx, &store, suite, &packages, recipe).await?;
    cache.put(&key, &layer, &reference)?;
    Ok(single(
        reference,
        format!("{distro}/{suite} minbase"),
        layer,
        false,
    ))
}

async fn from_tarball(
    cx: &ParentContext<'_>,
    recipe: &Recipe,
    file: &Path,
    reference: String,
) -> Result<Parent, ParentError> {
    let unavailable = |why: String| ParentError::Unavailable {
        reference: reference.clone(),
        why,
    };
    if !file.is_file() {
        return Err(unavailable(format!("no tarball at {}", file.display())));
    }
    let f = file.to_path_buf();
    let digest = tokio::task::spawn_blocking(move || kiln_image::digest::sha256_file(&f))
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .map_err(|e| unavailable(e.to_string()))?;
    let cache = StepCache::new(cx.home.clone());
    let key = parent_key(StepKind::Rootfs, digest.clone(), recipe);
    if let Some(layer) = cache.get(&key) {
        return Ok(single(reference, digest, layer, true));
    }
    (cx.progress)("importing the root filesystem tarball");
    let store = LayerStore::new(cx.home.clone());
    let layer = import_tar(
        &store,
        file.to_path_buf(),
        cx.epoch,
        recipe.compression,
        &reference,
    )
    .await?;
    cache.put(&key, &layer, &reference)?;
    Ok(single(reference, digest, layer, false))
}

/// Pulled into kiln's own layout (blobs it already has are not fetched again), then imported
/// like any OCI layout.
async fn pulled(cx: &ParentContext<'_>, r: &str, reference: String) -> Result<Parent, ParentError> {
    let unavailable = |why: String| ParentError::Unavailable {
        reference: reference.clone(),
        why,
    };
    let parsed =
        kiln_image::registry::parse_reference(r).map_err(|e| unavailable(e.to_string()))?;
    let opts = registry_access(cx.registries).options_for(parsed.registry());
    let layout = cx.home.root.join("pulls");
    let tag = format!("p-{}", &sha256_hex(r.as_bytes())[..24]);
    // Asked before the pull: a tag that moves in between is seen as moved by the next check
    // (one build too many), never missed.
    let digest = match parsed.digest() {
        Some(d) => Some(d.to_string()),
        None => kiln_image::registry::manifest_digest(r, &opts)
            .await
            .unwrap_or_else(|e| {
                // The pull says what is wrong with the registry, if anything is.
                tracing::debug!("looking up the digest of {r}: {e}");
                None
            }),
    };
    (cx.progress)(&format!("pulling {r}"));
    let pulled = kiln_image::registry::pull(r, &layout, &tag, &opts)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let store = LayerStore::new(cx.home.clone());
    let mut p = from_layout(&store, &layout, Some(&tag), reference).await?;
    p.record.resolved = pulled.manifest_digest;
    p.record.digest = digest;
    Ok(p)
}

/// The newest AVAILABLE build a query names among those shared with `viewer`.
async fn newest_shared(
    records: &Records,
    q: &ImageQuery,
    viewer: &str,
) -> Result<Option<crate::record::ImageRecord>, StoreError> {
    let mut f = crate::record::filter_of(q);
    f.shared_with = Some(viewer.to_string());
    f.states = [
        crate::record::State::Available,
        crate::record::State::Deprecated,
    ]
    .map(|s| s.as_str().to_string())
    .to_vec();
    f.limit = Some(1);
    match records.store().db().list(&f).await?.first() {
        None => Ok(None),
        Some(row) => records.get(&row.arn).await,
    }
}

/// An earlier build: the newest AVAILABLE one the query names, from the build's own store.
async fn built_by_kiln(
    cx: &ParentContext<'_>,
    q: &ImageQuery,
    reference: String,
    shared_with: Option<&str>,
) -> Result<Parent, ParentError> {
    let unavailable = |why: String| ParentError::Unavailable {
        reference: reference.clone(),
        why,
    };
    let records = cx.records;
    let found = match shared_with {
        None => records.newest_available(q).await,
        Some(viewer) => newest_shared(records, q, viewer).await,
    }
    .map_err(|e| unavailable(e.to_string()))?;
    let Some(rec) = found else {
        let name = &q.name;
        let mut any = crate::record::filter_of(&ImageQuery {
            account: q.account.clone(),
            name: name.clone(),
            version: None,
            build: None,
        });
        any.limit = Some(10);
        any.shared_with = shared_with.map(str::to_string);
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
                "no AVAILABLE build of `{name}` matches {}; newest builds: {}",
                q.version.unwrap_or_default(),
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
    let store = LayerStore::new(cx.home.clone());
    let image_output = rec.outputs.iter().find(|o| o.kind == OutputKind::OciLayout);
    // Its layers are usually still in the store; otherwise read them from a region.
    let layers: Option<Vec<StoredLayer>> = rec.layers.iter().map(|d| store.get(d)).collect();
    if let Some(layers) = layers {
        let config = image_output
            .and_then(|o| kiln_image::read_image(o.path(), Some(&o.tag)).ok())
            .map(|r| r.config);
        return Ok(Parent {
            record: ParentRecord {
                reference,
                resolved: rec.build_version(),
                layers: rec.layers.clone(),
                cached: true,
                digest: None,
            },
            layers,
            config,
        });
    }
    if let Some(out) = image_output {
        let mut p = from_layout(&store, out.path(), Some(&out.tag), reference).await?;
        p.record.resolved = rec.build_version();
        return Ok(p);
    }
    // No folder region has it: read it back from a registry region, by digest (the build's own
    // manifest, whatever its tags name now).
    let registry_output = rec
        .outputs
        .iter()
        .find(|o| o.kind == OutputKind::OciRegistry);
    let out = registry_output.ok_or_else(|| {
        unavailable(format!(
            "{} has no output in a folder or registry region to read its layers from",
            rec.build_version()
        ))
    })?;
    let repo = out
        .location
        .strip_prefix("docker://")
        .unwrap_or(&out.location);
    let mut p = pulled(cx, &format!("{repo}@{}", out.manifest_digest), reference).await?;
    p.record.resolved = rec.build_version();
    Ok(p)
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

/// An image of an OCI layout as a parent: its layers imported into the store unless it has
/// them (an image's layers read back from its region use it too).
pub(crate) async fn from_layout(
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
                digest: None,
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
    cx: &ParentContext<'_>,
    store: &LayerStore,
    suite: &str,
    packages: &[String],
    recipe: &Recipe,
) -> Result<StoredLayer, ParentError> {
    let (home, epoch, progress) = (cx.home, cx.epoch, cx.progress);
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
