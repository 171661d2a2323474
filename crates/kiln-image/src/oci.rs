//! OCI image layouts: writing an image under a tag, reading one back, listing tags.
//!
//! A layout is shared: a build writes into it while a test run reads from it, and two builds
//! of different versions may write into it at once. So everything an image needs (layer
//! blobs, config, manifest) is in place, under its digest, before `index.json` names it, and
//! `index.json` is replaced with a rename while holding an exclusive `flock` on
//! `<layout>/.kiln.lock`: a reader sees the old index or the new one, never half of one, and
//! of two writers neither loses the other's tag.
//!
//! The config and manifest are written as canonical JSON (keys sorted, no spaces): the same
//! settings and layers give the same digests, which makes rebuilds visibly no-ops.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, Digest, HistoryBuilder, ImageConfiguration,
    ImageConfigurationBuilder, ImageManifest, ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};
use serde_json::{json, Value};

use crate::digest::{self, HashingWriter};
use crate::layer::{sync_dir, LayerBlob};

/// Annotation that carries a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
const LOCK_FILE: &str = ".kiln.lock";
pub(crate) const TMP_PREFIX: &str = ".kiln-tmp-";
/// Manifests and configs are small; a bigger one is not something kiln should load.
pub(crate) const MAX_JSON_BLOB: u64 = 16 << 20;

/// What goes into the image config besides the layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSettings {
    /// The program a container runs (`ENTRYPOINT`).
    pub entrypoint: Option<Vec<String>>,
    /// Its default arguments (`CMD`).
    pub cmd: Option<Vec<String>>,
    /// Environment, as `NAME=value`.
    pub env: Vec<String>,
    /// Working directory of the container's process.
    pub working_dir: Option<String>,
    /// User (`name`, `uid`, `uid:gid`) the process runs as.
    pub user: Option<String>,
    /// Image labels.
    pub labels: BTreeMap<String, String>,
    /// Ports the image documents, as `80/tcp` (or `53/udp`, `8080`).
    pub exposed_ports: Vec<String>,
    /// GOARCH-style architecture (`amd64`, `arm64`).
    pub architecture: String,
    /// GOOS-style operating system (`linux`).
    pub os: String,
    /// When the image was built; pass the build's epoch for reproducible configs.
    pub created: DateTime<Utc>,
    /// One entry per layer, in order (entries with `empty_layer` come in between as they
    /// happened); may be empty.
    pub history: Vec<HistoryEntry>,
}

impl Default for ImageSettings {
    /// A linux/amd64 image created at the Unix epoch with nothing else set.
    fn default() -> Self {
        ImageSettings {
            entrypoint: None,
            cmd: None,
            env: Vec::new(),
            working_dir: None,
            user: None,
            labels: BTreeMap::new(),
            exposed_ports: Vec::new(),
            architecture: "amd64".into(),
            os: "linux".into(),
            created: DateTime::<Utc>::UNIX_EPOCH,
            history: Vec::new(),
        }
    }
}

/// One step of the image's history, as `docker history` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryEntry {
    /// What made the layer (a component name and version, say).
    pub created_by: String,
    /// Free text.
    pub comment: Option<String>,
    /// True for a step that changed only the config, not the filesystem (it has no layer).
    pub empty_layer: bool,
}

/// The digests of a written image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenImage {
    /// `sha256:<hex>` of the manifest: the image's identity.
    pub manifest_digest: String,
    /// `sha256:<hex>` of the config (`docker images` shows this as the image id).
    pub config_digest: String,
    /// Size of the manifest in bytes.
    pub manifest_size: u64,
}

/// An image read from a layout.
#[derive(Debug, Clone)]
pub struct ReadImage {
    /// Its tag, if `index.json` gives one.
    pub tag: Option<String>,
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    /// The manifest.
    pub manifest: ImageManifest,
    /// `sha256:<hex>` of the config.
    pub config_digest: String,
    /// The config.
    pub config: ImageConfiguration,
    /// The layers, bottom first, as [`write_image`] takes them: the blob paths inside the
    /// layout (checked to exist with the size the manifest gives), and their diff ids.
    pub layers: Vec<LayerBlob>,
}

/// Errors of OCI layouts.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A file operation failed.
    #[error("{path}: {doing}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What kiln was doing with it.
        doing: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The layout is not one kiln can use (missing, foreign, or damaged).
    #[error("oci:{}: {message}", layout.display())]
    Layout {
        /// The layout directory.
        layout: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// No image has the tag asked for.
    #[error("oci:{}: no image tagged {tag} ({})", layout.display(), tag_list(tags))]
    NoSuchTag {
        /// The layout directory.
        layout: PathBuf,
        /// The tag asked for.
        tag: String,
        /// The tags there are.
        tags: Vec<String>,
    },
    /// No tag was given and the layout holds several images.
    #[error(
        "oci:{}: holds {count} images ({}); name the one to read",
        layout.display(),
        tag_list(tags)
    )]
    Ambiguous {
        /// The layout directory.
        layout: PathBuf,
        /// How many images.
        count: usize,
        /// Their tags.
        tags: Vec<String>,
    },
    /// The tag cannot be used.
    #[error(
        "invalid tag `{0}`: use 1 to 128 letters, digits, `_`, `.` and `-`, not starting with \
         `.` or `-` (like 1.2.0)"
    )]
    InvalidTag(String),
    /// The image to write is inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// A blob's content does not match its digest.
    #[error(
        "{}: content does not match digest {expected} (it hashes to {actual}); the blob is \
         corrupt or was changed after it was written: rebuild it",
        path.display()
    )]
    DigestMismatch {
        /// The blob file.
        path: PathBuf,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },
}

fn tag_list(tags: &[String]) -> String {
    if tags.is_empty() {
        "it has no tags".to_string()
    } else {
        format!("tags: {}", tags.join(", "))
    }
}

pub(crate) fn io_err(path: &Path, doing: impl Into<String>) -> impl FnOnce(io::Error) -> OciError {
    let path = path.to_path_buf();
    let doing = doing.into();
    move |source| OciError::Io {
        path,
        doing,
        source,
    }
}

fn layout_err(layout: &Path, message: impl Into<String>) -> OciError {
    OciError::Layout {
        layout: layout.to_path_buf(),
        message: message.into(),
    }
}

/// Whether `tag` is a tag as the OCI distribution spec allows it:
/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn is_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks a tag against what Docker and skopeo accept (`oci:DIR:TAG` splits at the last `:`,
/// so a tag cannot hold one).
pub(crate) fn check_tag(tag: &str) -> Result<(), OciError> {
    if is_tag(tag) {
        Ok(())
    } else {
        Err(OciError::InvalidTag(tag.to_string()))
    }
}

/// Writes an image into the OCI image layout `layout` (created if missing) and tags it `tag`
/// in `index.json`, replacing an image that had the tag and keeping every other entry.
///
/// Layer blobs are hard-linked into `blobs/sha256/` when they are on the same filesystem
/// (a layout's `blobs` directory can be [`crate::write_layer`]'s `out_dir`, then nothing
/// moves), else copied through a temporary file and checked against their digest. Then the
/// config and manifest are written as blobs, and `index.json` is replaced atomically under the
/// layout's lock (see the module documentation).
pub fn write_image(
    layout: &Path,
    tag: &str,
    layers: &[LayerBlob],
    settings: &ImageSettings,
) -> Result<WrittenImage, OciError> {
    check_tag(tag)?;
    let config = config_json(layers, settings)?;
    prepare_layout(layout)?;
    let blobs = layout.join("blobs").join("sha256");
    for layer in layers {
        put_layer(layout, &blobs, layer)?;
    }
    let config_digest = put_bytes(layout, &blobs, &config)?;

    let mut layer_descriptors = Vec::with_capacity(layers.len());
    for layer in layers {
        layer_descriptors.push(Descriptor::new(
            MediaType::from(layer.media_type.as_str()),
            layer.size,
            parse_digest(&layer.digest)?,
        ));
    }
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(
            MediaType::ImageConfig,
            config.len() as u64,
            parse_digest(&config_digest)?,
        ))
        .layers(layer_descriptors)
        .build()
        .map_err(|e| OciError::Invalid(format!("cannot build the image manifest: {e}")))?;
    let manifest = canonical_json(&manifest)?;
    let manifest_digest = put_bytes(layout, &blobs, &manifest)?;

    let entry = index_entry(
        &manifest_digest,
        manifest.len() as u64,
        tag,
        &settings.architecture,
        &settings.os,
    );
    update_index(layout, tag, entry)?;
    tracing::info!(
        layout = %layout.display(),
        tag,
        manifest = %manifest_digest,
        layers = layers.len(),
        "image written"
    );
    Ok(WrittenImage {
        manifest_digest,
        config_digest,
        manifest_size: manifest.len() as u64,
    })
}

/// The `index.json` entry that tags an image manifest.
pub(crate) fn index_entry(
    manifest_digest: &str,
    manifest_size: u64,
    tag: &str,
    architecture: &str,
    os: &str,
) -> Value {
    json!({
        "mediaType": MediaType::ImageManifest.to_string(),
        "digest": manifest_digest,
        "size": manifest_size,
        "annotations": { REF_NAME: tag },
        "platform": { "architecture": architecture, "os": os },
    })
}

fn parse_digest(digest: &str) -> Result<Digest, OciError> {
    digest
        .parse::<Digest>()
        .map_err(|e| OciError::Invalid(format!("`{digest}` is not a valid digest: {e}")))
}

/// The config blob's bytes, after checking the settings against the layers.
fn config_json(layers: &[LayerBlob], settings: &ImageSettings) -> Result<Vec<u8>, OciError> {
    for layer in layers {
        for (what, d) in [("digest", &layer.digest), ("diff_id", &layer.diff_id)] {
            match digest::split(d) {
                Some(("sha256", _)) => {}
                _ => {
                    return Err(OciError::Invalid(format!(
                        "layer {}: {what} `{d}` is not a sha256 digest",
                        layer.path.display()
                    )))
                }
            }
        }
    }
    if !settings.history.is_empty() {
        let with_layers = settings.history.iter().filter(|h| !h.empty_layer).count();
        if with_layers != layers.len() {
            return Err(OciError::Invalid(format!(
                "the image has {} layers but its history has {with_layers} entries for layers; \
                 give one history entry per layer (and mark config-only steps empty_layer)",
                layers.len()
            )));
        }
    }
    if let Some(bad) = settings
        .env
        .iter()
        .find(|e| !e.contains('=') || e.starts_with('='))
    {
        return Err(OciError::Invalid(format!(
            "environment entry `{bad}` is not NAME=value"
        )));
    }
    for port in &settings.exposed_ports {
        let (number, proto) = port.split_once('/').unwrap_or((port, "tcp"));
        let number_ok = number.parse::<u16>().is_ok_and(|n| n > 0);
        if !number_ok || !matches!(proto, "tcp" | "udp" | "sctp") {
            return Err(OciError::Invalid(format!(
                "exposed port `{port}` is not PORT/PROTOCOL (like 80/tcp or 53/udp)"
            )));
        }
    }
    if settings.architecture.is_empty() || settings.os.is_empty() {
        return Err(OciError::Invalid(
            "the image needs an architecture and an os (like amd64 and linux)".into(),
        ));
    }

    let spec_err = |e: oci_spec::OciSpecError| {
        OciError::Invalid(format!("cannot build the image config: {e}"))
    };
    let mut config = ConfigBuilder::default();
    if let Some(entrypoint) = &settings.entrypoint {
        config = config.entrypoint(entrypoint.clone());
    }
    if let Some(cmd) = &settings.cmd {
        config = config.cmd(cmd.clone());
    }
    if !settings.env.is_empty() {
        config = config.env(settings.env.clone());
    }
    if let Some(dir) = &settings.working_dir {
        config = config.working_dir(dir.clone());
    }
    if let Some(user) = &settings.user {
        config = config.user(user.clone());
    }
    if !settings.labels.is_empty() {
        config = config.labels(
            settings
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<std::collections::HashMap<_, _>>(),
        );
    }
    if !settings.exposed_ports.is_empty() {
        config = config.exposed_ports(settings.exposed_ports.clone());
    }
    let created = settings
        .created
        .to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let history = settings
        .history
        .iter()
        .map(|h| {
            let mut b = HistoryBuilder::default()
                .created(created.clone())
                .created_by(h.created_by.clone());
            if let Some(comment) = &h.comment {
                b = b.comment(comment.clone());
            }
            if h.empty_layer {
                b = b.empty_layer(true);
            }
            b.build()
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(spec_err)?;
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>())
        .build()
        .map_err(spec_err)?;
    let mut image = ImageConfigurationBuilder::default()
        .created(created)
        .architecture(Arch::from(settings.architecture.as_str()))
        .os(Os::from(settings.os.as_str()))
        .config(config.build().map_err(spec_err)?)
        .rootfs(rootfs);
    if !history.is_empty() {
        image = image.history(history);
    }
    canonical_json(&image.build().map_err(spec_err)?)
}

/// JSON with object keys sorted at every level and no whitespace: oci-spec keeps labels and
/// annotations in hash maps, whose order changes from run to run.
pub(crate) fn canonical_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, OciError> {
    fn sort(value: Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(String, Value)> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(sort).collect()),
            other => other,
        }
    }
    let value = serde_json::to_value(value)
        .map_err(|e| OciError::Invalid(format!("cannot serialise: {e}")))?;
    serde_json::to_vec(&sort(value))
        .map_err(|e| OciError::Invalid(format!("cannot serialise: {e}")))
}

/// Holds the layout's lock until dropped.
struct LayoutLock(#[allow(dead_code)] Flock<File>);

fn lock_layout(layout: &Path) -> Result<LayoutLock, OciError> {
    let path = layout.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path, "cannot open the layout lock"))?;
    let lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| io_err(&path, "cannot lock the layout")(e.into()))?;
    Ok(LayoutLock(lock))
}

/// Creates the layout's skeleton, or checks that an existing directory is a layout.
pub(crate) fn prepare_layout(layout: &Path) -> Result<(), OciError> {
    fs::create_dir_all(layout).map_err(io_err(layout, "cannot create the image layout"))?;
    let _lock = lock_layout(layout)?;
    let marker = layout.join("oci-layout");
    match fs::read(&marker) {
        Ok(bytes) => {
            let version = serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| {
                v.get("imageLayoutVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
            if version.as_deref() != Some("1.0.0") {
                return Err(layout_err(
                    layout,
                    format!(
                        "oci-layout says imageLayoutVersion {}, kiln writes 1.0.0 layouts; use \
                         another directory",
                        version.as_deref().unwrap_or("(none)")
                    ),
                ));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Refuse to scatter blobs into a directory that holds something else; `blobs` may
            // be there already, filled by write_layer before the first image, and `disks`, where
            // a kiln region keeps its disk images.
            let foreign = fs::read_dir(layout)
                .map_err(io_err(layout, "cannot list"))?
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .find(|n| {
                    let n = n.to_string_lossy();
                    n != LOCK_FILE && n != "blobs" && n != "disks" && !n.starts_with(TMP_PREFIX)
                });
            if let Some(name) = foreign {
                return Err(layout_err(
                    layout,
                    format!(
                        "is not an OCI image layout (no oci-layout file) and is not empty (it \
                         has {}); give a new or empty directory",
                        name.to_string_lossy()
                    ),
                ));
            }
            write_atomic(layout, &marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        Err(e) => return Err(io_err(&marker, "cannot read")(e)),
    }
    let blobs = layout.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io_err(&blobs, "cannot create"))?;
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the layout and a rename.
fn write_atomic(layout: &Path, path: &Path, bytes: &[u8]) -> Result<(), OciError> {
    let mut tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(layout)
        .map_err(io_err(layout, "cannot create a temporary file"))?;
    let werr = io_err(tmp.path(), "cannot write");
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .and_then(|()| fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644)))
        .map_err(werr)?;
    tmp.persist(path)
        .map_err(|e| io_err(path, "cannot move into place")(e.error))?;
    let dir = path.parent().unwrap_or(layout);
    sync_dir(dir).map_err(io_err(dir, "cannot sync"))
}

/// Stores bytes as a blob; returns its digest.
pub(crate) fn put_bytes(layout: &Path, blobs: &Path, bytes: &[u8]) -> Result<String, OciError> {
    let digest = digest::sha256_bytes(bytes);
    let path = blobs.join(digest.trim_start_matches("sha256:"));
    match fs::metadata(&path) {
        Ok(m) if m.len() == bytes.len() as u64 => return Ok(digest),
        _ => write_atomic(layout, &path, bytes)?,
    }
    Ok(digest)
}

/// Puts a layer blob into the layout: a hardlink when possible, else a checked copy.
fn put_layer(layout: &Path, blobs: &Path, layer: &LayerBlob) -> Result<(), OciError> {
    let hex = layer.digest.trim_start_matches("sha256:");
    let dest = blobs.join(hex);
    let source_meta =
        fs::metadata(&layer.path).map_err(io_err(&layer.path, "cannot read the layer blob"))?;
    if source_meta.len() != layer.size {
        return Err(OciError::Invalid(format!(
            "{}: the layer blob has {} bytes but its description says {}; rebuild the layer",
            layer.path.display(),
            source_meta.len(),
            layer.size
        )));
    }
    match fs::metadata(&dest) {
        Ok(m) if m.len() == layer.size => return Ok(()),
        Ok(m) => {
            return Err(layout_err(
                layout,
                format!(
                    "blob {} exists with {} bytes, not {}: the layout is damaged; delete that \
                     file and write the image again",
                    dest.display(),
                    m.len(),
                    layer.size
                ),
            ))
        }
        Err(_) => {}
    }
    match fs::hard_link(&layer.path, &dest) {
        Ok(()) => return sync_dir(blobs).map_err(io_err(blobs, "cannot sync")),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => tracing::debug!(
            from = %layer.path.display(),
            to = %dest.display(),
            error = %e,
            "cannot hard-link the layer blob; copying it"
        ),
    }
    let mut source = File::open(&layer.path).map_err(io_err(&layer.path, "cannot open"))?;
    let tmp = temp_file(layout)?;
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(io_err(tmp.path(), "cannot open"))?;
    let mut writer = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, file));
    copy(&mut source, &mut writer, &layer.path, tmp.path())?;
    let (buffered, actual, _) = writer.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| io_err(tmp.path(), "cannot write")(e.into_error()))?;
    if actual != layer.digest {
        return Err(OciError::DigestMismatch {
            path: layer.path.clone(),
            expected: layer.digest.clone(),
            actual,
        });
    }
    file.sync_all()
        .map_err(io_err(tmp.path(), "cannot write"))?;
    commit_blob(tmp, &dest)
}

/// A temporary file inside the layout (same filesystem as `blobs/`, so it can be renamed into
/// place); removed when dropped unless committed.
pub(crate) fn temp_file(layout: &Path) -> Result<tempfile::NamedTempFile, OciError> {
    tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(layout)
        .map_err(io_err(layout, "cannot create a temporary file"))
}

/// Moves a complete, synced and verified temporary file to `dest` (a blob path), readable by
/// all like the blobs other tools write, and syncs the directory so the name survives a crash.
pub(crate) fn commit_blob(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<(), OciError> {
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
        .map_err(io_err(tmp.path(), "cannot set the mode"))?;
    tmp.persist(dest)
        .map_err(|e| io_err(dest, "cannot move into place")(e.error))?;
    let dir = dest.parent().unwrap_or(dest);
    sync_dir(dir).map_err(io_err(dir, "cannot sync"))
}

/// True when the layout holds the blob `digest` with `size` bytes. Blobs only ever appear by
/// rename, complete, so the size is the check (hashing gigabytes to confirm is not worth it).
pub(crate) fn has_blob(layout: &Path, digest: &str, size: u64) -> Result<bool, OciError> {
    let path = blob_path(layout, digest)?;
    match fs::metadata(&path) {
        Ok(m) => Ok(m.is_file() && m.len() == size),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(&path, "cannot stat")(e)),
    }
}

fn copy(
    from: &mut File,
    to: &mut impl Write,
    from_path: &Path,
    to_path: &Path,
) -> Result<(), OciError> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(from_path, "cannot read")(e)),
        };
        to.write_all(&buf[..n])
            .map_err(io_err(to_path, "cannot write"))?;
    }
}

/// Points `tag` at `entry` in `index.json`, under the layout's lock.
pub(crate) fn update_index(layout: &Path, tag: &str, entry: Value) -> Result<(), OciError> {
    edit_index(layout, tag, |_| Some(entry)).map(|_| ())
}

/// Removes a tag from `index.json` (its blobs stay: other tags may name them). Returns whether
/// the layout had it.
pub fn remove_tag(layout: &Path, tag: &str) -> Result<bool, OciError> {
    if !layout.join("index.json").exists() {
        return Ok(false);
    }
    let mut had = false;
    edit_index(layout, tag, |old| {
        had = old.is_some();
        None
    })?;
    Ok(had)
}

/// Points `tag` at the image `from` names (to put a tag back where it was).
pub fn copy_tag(layout: &Path, from: &str, tag: &str) -> Result<(), OciError> {
    let index = read_index(layout)?;
    let Some(d) = index.manifests().iter().find(|d| ref_name(d) == Some(from)) else {
        return Err(layout_err(layout, format!("has no image tagged {from}")));
    };
    let mut entry = serde_json::to_value(d)
        .map_err(|e| OciError::Invalid(format!("cannot serialise index.json: {e}")))?;
    if let Some(a) = entry.get_mut("annotations").and_then(Value::as_object_mut) {
        a.insert(REF_NAME.to_string(), Value::String(tag.to_string()));
    }
    update_index(layout, tag, entry)
}

/// The manifest digest a tag names, `None` when the layout or the tag is not there.
pub fn tag_digest(layout: &Path, tag: &str) -> Result<Option<String>, OciError> {
    if !layout.join("index.json").exists() {
        return Ok(None);
    }
    let index = read_index(layout)?;
    Ok(index
        .manifests()
        .iter()
        .find(|d| ref_name(d) == Some(tag))
        .map(|d| d.digest().to_string()))
}

/// Replaces (or with `None`, removes) the entry of `tag` in `index.json`, under the layout's
/// lock; `change` sees the old entry.
fn edit_index(
    layout: &Path,
    tag: &str,
    change: impl FnOnce(Option<&Value>) -> Option<Value>,
) -> Result<(), OciError> {
    let _lock = lock_layout(layout)?;
    let path = layout.join("index.json");
    let mut index = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes).map_err(|e| {
            layout_err(
                layout,
                format!("index.json is not valid JSON ({e}); repair or remove it"),
            )
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => json!({
            "schemaVersion": 2,
            "mediaType": MediaType::ImageIndex.to_string(),
            "manifests": [],
        }),
        Err(e) => return Err(io_err(&path, "cannot read")(e)),
    };
    let Some(manifests) = index.get_mut("manifests").and_then(Value::as_array_mut) else {
        return Err(layout_err(
            layout,
            "index.json has no `manifests` list; repair or remove it",
        ));
    };
    let tagged = |m: &Value| {
        m.pointer("/annotations")
            .and_then(|a| a.get(REF_NAME))
            .and_then(Value::as_str)
            == Some(tag)
    };
    let at = manifests.iter().position(tagged);
    match (at, change(at.map(|i| &manifests[i]))) {
        (Some(_), None) => manifests.retain(|m| !tagged(m)),
        (None, None) => return Ok(()),
        (Some(i), Some(entry)) => {
            manifests[i] = entry;
            let mut seen = 0usize;
            manifests.retain(|m| {
                if tagged(m) {
                    seen += 1;
                    seen == 1
                } else {
                    true
                }
            });
        }
        (None, Some(entry)) => manifests.push(entry),
    }
    let bytes = serde_json::to_vec(&index)
        .map_err(|e| OciError::Invalid(format!("cannot serialise index.json: {e}")))?;
    write_atomic(layout, &path, &bytes)
}

/// Reads `index.json` (typed), with errors that say what the directory is not.
fn read_index(layout: &Path) -> Result<oci_spec::image::ImageIndex, OciError> {
    let path = layout.join("index.json");
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let what = if layout.is_dir() {
                "is not an OCI image layout (it has no index.json)"
            } else {
                "does not exist"
            };
            return Err(layout_err(
                layout,
                format!("{what}; write an image there first or check the path"),
            ));
        }
        Err(e) => return Err(io_err(&path, "cannot read")(e)),
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        layout_err(
            layout,
            format!("index.json is not a valid OCI image index: {e}"),
        )
    })
}

fn ref_name(descriptor: &Descriptor) -> Option<&str> {
    descriptor
        .annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .map(String::as_str)
}

/// The tags in a layout, in `index.json` order, each once.
pub fn list_tags(layout: &Path) -> Result<Vec<String>, OciError> {
    let index = read_index(layout)?;
    let mut tags: Vec<String> = Vec::new();
    for d in index.manifests() {
        if let Some(tag) = ref_name(d) {
            if !tags.iter().any(|t| t == tag) {
                tags.push(tag.to_string());
            }
        }
    }
    Ok(tags)
}

/// Where the blob `digest` is in `layout` (`blobs/sha256/HEX`), the digest checked.
pub fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, OciError> {
    match digest::split(digest) {
        Some((algorithm, encoded)) => Ok(layout.join("blobs").join(algorithm).join(encoded)),
        None => Err(layout_err(
            layout,
            format!("names the blob `{digest}`, which is not a valid digest"),
        )),
    }
}

/// Reads a small JSON blob and checks it against its digest.
fn read_json_blob<T: serde::de::DeserializeOwned>(
    layout: &Path,
    descriptor: &Descriptor,
    what: &str,
) -> Result<(T, String), OciError> {
    let digest = descriptor.digest().to_string();
    let bytes = read_small_blob(layout, &digest, descriptor.size(), what)?;
    let value = serde_json::from_slice(&bytes).map_err(|e| {
        layout_err(
            layout,
            format!("the {what} {digest} is not a valid OCI {what}: {e}"),
        )
    })?;
    Ok((value, digest))
}

/// Reads a small blob (a manifest or config, at most [`MAX_JSON_BLOB`] bytes) whole and checks
/// it against its digest.
pub(crate) fn read_small_blob(
    layout: &Path,
    digest: &str,
    size: u64,
    what: &str,
) -> Result<Vec<u8>, OciError> {
    let path = blob_path(layout, digest)?;
    if size > MAX_JSON_BLOB {
        return Err(layout_err(
            layout,
            format!("the {what} {digest} claims {size} bytes, too many for a {what}"),
        ));
    }
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(layout_err(
                layout,
                format!("the {what} blob {digest} is missing; the layout is incomplete: write the image again"),
            ))
        }
        Err(e) => return Err(io_err(&path, "cannot read")(e)),
    };
    if !digest.starts_with("sha256:") {
        return Err(layout_err(
            layout,
            format!(
                "the {what} {digest} uses a digest algorithm kiln does not verify (only sha256)"
            ),
        ));
    }
    let actual = digest::sha256_bytes(&bytes);
    if actual != digest {
        return Err(OciError::DigestMismatch {
            path,
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(bytes)
}

/// Reads the image tagged `tag`, or the only image in the layout when `tag` is `None`.
///
/// The manifest and config are verified against their digests; layer blobs are checked to
/// exist with the manifest's size (hash them with [`crate::digest::sha256_file`] to verify
/// them fully, which costs a read of every layer).
pub fn read_image(layout: &Path, tag: Option<&str>) -> Result<ReadImage, OciError> {
    let index = read_index(layout)?;
    let manifests = index.manifests();
    let tags = || -> Vec<String> {
        let mut tags: Vec<String> = Vec::new();
        for d in manifests {
            if let Some(t) = ref_name(d) {
                if !tags.iter().any(|x| x == t) {
                    tags.push(t.to_string());
                }
            }
        }
        tags
    };
    let descriptor = match tag {
        Some(tag) => {
            let mut found = manifests.iter().filter(|d| ref_name(d) == Some(tag));
            match (found.next(), found.next()) {
                (Some(d), None) => d,
                (Some(_), Some(_)) => {
                    return Err(layout_err(
                        layout,
                        format!("index.json tags several images {tag}; remove all but one"),
                    ))
                }
                (None, _) => {
                    return Err(OciError::NoSuchTag {
                        layout: layout.to_path_buf(),
                        tag: tag.to_string(),
                        tags: tags(),
                    })
                }
            }
        }
        None => match manifests.as_slice() {
            [only] => only,
            [] => return Err(layout_err(layout, "holds no image")),
            many => {
                return Err(OciError::Ambiguous {
                    layout: layout.to_path_buf(),
                    count: many.len(),
                    tags: tags(),
                })
            }
        },
    };
    match descriptor.media_type() {
        MediaType::ImageManifest => {}
        MediaType::ImageIndex => {
            return Err(layout_err(
                layout,
                format!(
                    "{} is a multi-platform image index, which kiln does not read; copy one \
                     platform into a layout (skopeo copy --override-arch ARCH ...)",
                    ref_name(descriptor).unwrap_or("the image")
                ),
            ))
        }
        other => {
            return Err(layout_err(
                layout,
                format!(
                    "{} has media type {other}, not an OCI image manifest",
                    ref_name(descriptor).unwrap_or("the image")
                ),
            ))
        }
    }
    let (manifest, manifest_digest): (ImageManifest, String) =
        read_json_blob(layout, descriptor, "manifest")?;
    let (config, config_digest): (ImageConfiguration, String) =
        read_json_blob(layout, manifest.config(), "config")?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(layout_err(
            layout,
            format!(
                "image {manifest_digest} has {} layers but its config lists {} diff ids; the \
                 image is damaged",
                manifest.layers().len(),
                diff_ids.len()
            ),
        ));
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (d, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let digest = d.digest().to_string();
        let path = blob_path(layout, &digest)?;
        match fs::metadata(&path) {
            Ok(m) if m.len() == d.size() => {}
            Ok(m) => {
                return Err(layout_err(
                    layout,
                    format!(
                        "layer blob {digest} has {} bytes, the manifest says {}; the layout is \
                         damaged",
                        m.len(),
                        d.size()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(layout_err(
                    layout,
                    format!("layer blob {digest} is missing; the layout is incomplete"),
                ))
            }
            Err(e) => return Err(io_err(&path, "cannot stat")(e)),
        }
        layers.push(LayerBlob {
            digest,
            diff_id: diff_id.clone(),
            size: d.size(),
            media_type: d.media_type().to_string(),
            path,
        });
    }
    Ok(ReadImage {
        tag: ref_name(descriptor).map(str::to_owned),
        manifest_digest,
        manifest,
        config_digest,
        config,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        for good in ["1.0.0", "latest", "_x", "a-b.c_d"] {
            check_tag(good).unwrap();
        }
        for bad in ["", ".x", "-x", "a:b", "a/b", &"x".repeat(129)] {
            assert!(check_tag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let mut m = std::collections::HashMap::new();
        for k in ["b", "a", "c", "z", "y"] {
            m.insert(k.to_string(), json!({"y": 1, "x": 2}));
        }
        let bytes = canonical_json(&m).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"a":{"x":2,"y":1},"b":{"x":2,"y":1},"c":{"x":2,"y":1},"y":{"x":2,"y":1},"z":{"x":2,"y":1}}"#
        );
    }

    #[test]
    fn error_names_the_tags() {
        let e = OciError::NoSuchTag {
            layout: "/srv/x".into(),
            tag: "1.2.0".into(),
            tags: vec!["1.0.0".into(), "1.1.0".into()],
        };
        assert_eq!(
            e.to_string(),
            "oci:/srv/x: no image tagged 1.2.0 (tags: 1.0.0, 1.1.0)"
        );
    }
}
