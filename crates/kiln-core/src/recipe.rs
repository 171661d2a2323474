//! The recipe file of `kiln build`: field names follow the EC2 Image Builder request shapes
//! (`parentImage`, `semanticVersion`, `components[].parameters`, `workingDirectory`,
//! `imageTestsConfiguration`, `distributions[].region`) where the concept is shared; kiln's own
//! settings (`bootstrap`, `imageConfig`, `outputs`, `infrastructure`, ...) sit beside them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_yaml::{did_you_mean, Diagnostic, Map, Node, Reader, Span};
use serde::{Deserialize, Serialize};

use crate::version::{Version, VersionFilter};

/// A recipe file's text, for error messages that quote it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecipeSource {
    /// Path as given.
    pub path: PathBuf,
    /// Text.
    pub text: String,
}

/// Problems in a recipe.
#[derive(Debug, Clone)]
pub struct RecipeErrors {
    /// The file.
    pub source: Arc<RecipeSource>,
    /// Errors and warnings.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for RecipeErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.source.path.display().to_string();
        for d in &self.diagnostics {
            write!(f, "{}", d.render(&name, &self.source.text))?;
        }
        Ok(())
    }
}

impl std::error::Error for RecipeErrors {}

/// Where the image starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "transport", rename_all = "lowercase")]
pub enum ParentImage {
    /// `bootstrap:debian/SUITE`: a fresh Debian made with mmdebstrap.
    Bootstrap {
        /// `debian`.
        distro: String,
        /// `bookworm`, `trixie`, ...
        suite: String,
    },
    /// `oci:DIR[:TAG]`: an OCI image layout.
    Oci {
        /// The layout folder.
        dir: PathBuf,
        /// The tag (the only image when `None`).
        tag: Option<String>,
    },
    /// `docker://HOST/REPO:TAG`: an image in a registry.
    Registry {
        /// `HOST/REPO:TAG`.
        reference: String,
    },
    /// `rootfs:FILE.tar`: a root filesystem tarball.
    Rootfs {
        /// The tarball.
        file: PathBuf,
    },
    /// `kiln:NAME/VERSION`: an image kiln built earlier (`x` wildcards pick the newest).
    Image {
        /// Image name.
        name: String,
        /// Version filter.
        version: VersionFilter,
        /// One build of it (an image ARN can name one).
        build: Option<u32>,
        /// The account an image ARN names; the build's own account otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        account: Option<String>,
    },
}

impl fmt::Display for ParentImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParentImage::Bootstrap { distro, suite } => write!(f, "bootstrap:{distro}/{suite}"),
            ParentImage::Oci { dir, tag: Some(t) } => write!(f, "oci:{}:{t}", dir.display()),
            ParentImage::Oci { dir, tag: None } => write!(f, "oci:{}", dir.display()),
            ParentImage::Registry { reference } => write!(f, "docker://{reference}"),
            ParentImage::Rootfs { file } => write!(f, "rootfs:{}", file.display()),
            ParentImage::Image {
                name,
                version,
                build,
                account,
            } => {
                match account {
                    Some(a) => write!(
                        f,
                        "arn:kiln:imagebuilder:{}:{a}:image/",
                        crate::principal::LOCAL_REGION
                    )?,
                    None => f.write_str("kiln:")?,
                }
                write!(f, "{name}/{version}")?;
                match build {
                    Some(n) => write!(f, "/{n}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The parent transports, for messages.
pub const TRANSPORTS: &str = "bootstrap:debian/SUITE, oci:DIR[:TAG], docker://HOST/REPO:TAG, \
                              rootfs:FILE.tar, kiln:NAME/VERSION";

/// Parses a parent reference; relative paths resolve against `base`.
pub fn parse_parent(text: &str, base: &Path) -> Result<ParentImage, String> {
    let rel = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    if text.starts_with("arn:") {
        let q: crate::record::ImageQuery = text.parse()?;
        return Ok(ParentImage::Image {
            name: q.name,
            version: q.version.unwrap_or_default(),
            build: q.build,
            account: q.account,
        });
    }
    let Some((scheme, rest)) = text.split_once(':') else {
        // `name/version` without a scheme is a kiln image.
        return parse_image(text);
    };
    match scheme {
        "bootstrap" => {
            let (distro, suite) = rest.split_once('/').ok_or_else(|| {
                format!(
                    "`{text}`: write bootstrap:debian/SUITE, for example bootstrap:debian/bookworm"
                )
            })?;
            if distro != "debian" {
                return Err(format!(
                    "`{text}`: kiln bootstraps Debian (bootstrap:debian/SUITE); for other systems start from an OCI image or a rootfs tarball"
                ));
            }
            if suite.is_empty() || !suite.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(format!("`{text}`: `{suite}` is not a Debian suite name"));
            }
            Ok(ParentImage::Bootstrap {
                distro: distro.into(),
                suite: suite.into(),
            })
        }
        "oci" => {
            // The tag follows the last colon, unless that part looks like a path.
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !t.is_empty() => (d, Some(t.to_string())),
                _ => (rest, None),
            };
            if dir.is_empty() {
                return Err(format!("`{text}`: write oci:DIR or oci:DIR:TAG"));
            }
            Ok(ParentImage::Oci { dir: rel(dir), tag })
        }
        "docker" => {
            let reference = rest
                .strip_prefix("//")
                .ok_or_else(|| format!("`{text}`: write docker://HOST/REPO:TAG"))?;
            if reference.is_empty() {
                return Err(format!("`{text}`: write docker://HOST/REPO:TAG"));
            }
            Ok(ParentImage::Registry {
                reference: reference.to_string(),
            })
        }
        "rootfs" => {
            if rest.is_empty() {
                return Err(format!("`{text}`: write rootfs:FILE.tar"));
            }
            Ok(ParentImage::Rootfs { file: rel(rest) })
        }
        "kiln" => parse_image(rest),
        other => {
            let hint = did_you_mean(other, ["bootstrap", "oci", "docker", "rootfs", "kiln"])
                .map(|s| format!(" (did you mean `{s}:`?)"))
                .unwrap_or_default();
            Err(format!(
                "`{text}`: unknown image transport `{other}:`{hint}; kiln reads {TRANSPORTS}"
            ))
        }
    }
}

fn parse_image(text: &str) -> Result<ParentImage, String> {
    let ami = text
        .strip_prefix("ami-")
        .is_some_and(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()));
    if ami {
        return Err(format!(
            "`{text}` is an EC2 AMI id: kiln builds on your own machines, where there are no \
             AMIs; start from bootstrap:debian/bookworm, an OCI image (docker://HOST/REPO:TAG) \
             or one of kiln's own images (its image ARN)"
        ));
    }
    if !text.contains('/') {
        return Err(format!(
            "`{text}` is not an image reference; kiln reads {TRANSPORTS}, or an image ARN"
        ));
    }
    let q: crate::record::ImageQuery = text.parse()?;
    Ok(ParentImage::Image {
        name: q.name,
        version: q.version.unwrap_or_default(),
        build: q.build,
        account: q.account,
    })
}

/// Where a component's document comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentSource {
    /// A document file (`path:`), relative to the recipe.
    Path(PathBuf),
    /// A component kiln knows (`componentArn:`), resolved by the component store.
    Arn(String),
}

/// One component of the recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentRef {
    /// Where its document is.
    pub source: ComponentSource,
    /// Parameter values.
    pub parameters: Vec<(String, String)>,
    /// Whether its result may come from the step cache.
    pub cache: bool,
    /// Where it is in the recipe (for messages while reading it; not sent along).
    #[serde(skip)]
    pub span: Span,
}

/// Image tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestsConfig {
    /// Run the test stage.
    pub enabled: bool,
    /// Limit for the whole test stage.
    pub timeout_minutes: u32,
    /// The longest a disk image's test VM may take to boot (QEMU's start to the guest agent's
    /// first answer), in seconds: a slower boot fails the tests (`maxBootSeconds`, a kiln
    /// extension). Recipes sent by an older kiln have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_boot_seconds: Option<u32>,
}

impl Default for TestsConfig {
    fn default() -> Self {
        TestsConfig {
            enabled: true,
            timeout_minutes: 720,
            max_boot_seconds: None,
        }
    }
}

/// Image scanning (`imageScanningConfiguration`): the scanner itself is kiln's configuration's
/// (`scanning:`), the recipe or pipeline only asks for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanningConfig {
    /// Scan the image during TESTING (`imageScanningEnabled`).
    pub enabled: bool,
}

/// Reads `imageScanningConfiguration` (of a recipe file or a pipeline), every problem reported
/// at its place; `ecrConfiguration` is accepted with a warning (kiln scans where it tests).
pub(crate) fn scanning_config(r: &mut Reader, sm: &Map) -> ScanningConfig {
    let mut scanning = ScanningConfig::default();
    r.known_keys(
        sm,
        &["imageScanningEnabled", "ecrConfiguration"],
        "`imageScanningConfiguration`",
    );
    if let Some(e) = r.boolean(sm, "imageScanningEnabled") {
        scanning.enabled = e;
    }
    if let Some(n) = sm.get("ecrConfiguration") {
        r.warn(
            n.span,
            "kiln scans the image's filesystem with the scanner in its configuration (`scanning:`), not in an ECR repository: `ecrConfiguration` is ignored",
            None,
        );
    }
    scanning
}

/// The keys of `imageTestsConfiguration`: Image Builder's, then kiln's own.
const TESTS_KEYS: &[&str] = &["imageTestsEnabled", "timeoutMinutes", "maxBootSeconds"];

/// Reads `imageTestsConfiguration` (of a recipe file or a pipeline), every problem reported
/// at its place.
pub(crate) fn tests_config(r: &mut Reader, tm: &Map) -> TestsConfig {
    let mut tests = TestsConfig::default();
    r.known_keys(tm, TESTS_KEYS, "`imageTestsConfiguration`");
    if let Some(e) = r.boolean(tm, "imageTestsEnabled") {
        tests.enabled = e;
    }
    if let Some(mins) = r.integer(tm, "timeoutMinutes") {
        // Image Builder's bounds.
        match u32::try_from(mins) {
            Ok(m) if (60..=1440).contains(&m) => tests.timeout_minutes = m,
            _ => {
                if let Some(n) = tm.get("timeoutMinutes") {
                    r.error(n.span, "`timeoutMinutes` must be between 60 and 1440", None);
                }
            }
        }
    }
    if let Some(secs) = r.integer(tm, "maxBootSeconds") {
        match u32::try_from(secs) {
            Ok(s) if (1..=3600).contains(&s) => tests.max_boot_seconds = Some(s),
            _ => {
                if let Some(n) = tm.get("maxBootSeconds") {
                    r.error(
                        n.span,
                        "`maxBootSeconds` must be between 1 and 3600",
                        Some("it is the longest the test VM may take to boot to its guest agent, in seconds".into()),
                    );
                }
            }
        }
    }
    tests
}

/// What a build produces (`outputs: [oci, disk]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// An OCI image (layout in each region).
    Oci,
    /// A bootable disk image (files in each region's `disks` folder).
    Disk,
}

/// The packages a `bootstrap:` parent gets when the recipe wants a disk image: a kernel made
/// for virtual machines, an init, device management and the QEMU guest agent.
pub const DISK_BOOTSTRAP_PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "udev",
    "qemu-guest-agent",
    "systemd-resolved",
];

/// Disk image settings (`disk:` and `blockDeviceMappings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskSpec {
    /// Formats written to each region (the first is the one tested when it matters).
    pub formats: Vec<kiln_image::disk::DiskFormat>,
    /// qcow2 with compressed clusters (`compressed: true` is zlib, `compressed: zstd` zstd).
    pub compression: kiln_image::disk::DiskCompression,
    /// Disk size (`blockDeviceMappings[0].ebs.volumeSize`); content plus headroom when `None`.
    pub size_bytes: Option<u64>,
    /// Kernel packages added to a `bootstrap:` parent.
    pub kernel_packages: Vec<String>,
    /// Remove the QEMU guest agent from the distributed disk if kiln installed it (Image
    /// Builder's `systemsManagerAgent.uninstallAfterBuild`).
    pub remove_guest_agent: bool,
}

impl Default for DiskSpec {
    fn default() -> Self {
        DiskSpec {
            formats: vec![kiln_image::disk::DiskFormat::Qcow2],
            compression: kiln_image::disk::DiskCompression::None,
            size_bytes: None,
            kernel_packages: vec!["linux-image-cloud-amd64".into()],
            remove_guest_agent: false,
        }
    }
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip (every tool reads it).
    Gzip,
    /// zstd (smaller and faster; newer tools).
    Zstd,
}

impl Compression {
    /// The recipe's word for it (`gzip`, `zstd`).
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// The OCI image configuration of the output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfigSpec {
    /// Entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Command.
    pub cmd: Option<Vec<String>>,
    /// Environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// User.
    pub user: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Exposed ports (`80/tcp`).
    pub exposed_ports: Vec<String>,
}

/// A region to distribute to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Distribution {
    /// Region name.
    pub region: String,
    /// Its OCI image layout folder (`$KILN_HOME/regions/NAME` when `None`).
    pub path: Option<PathBuf>,
    /// The container image's repository and more tags
    /// (`containerDistributionConfiguration`), for registry and bucket regions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerNaming>,
    /// The disk's name template (`amiDistributionConfiguration.name`, with
    /// `{{ imagebuilder:buildDate }}` and `{{ imagebuilder:buildVersion }}`): one more tag of
    /// the disk in registry and bucket regions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_name: Option<String>,
}

impl Distribution {
    /// Region `region` with nothing else said: its default folder, the image's own names.
    pub fn in_region(region: &str) -> Distribution {
        Distribution {
            region: region.to_string(),
            path: None,
            container: None,
            disk_name: None,
        }
    }
}

/// `containerDistributionConfiguration`: where the container image goes in a region.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerNaming {
    /// `targetRepository.repositoryName`: the repository instead of the image's name.
    pub repository: Option<String>,
    /// `containerTags`: more tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The names `amiDistributionConfiguration.name` may use, rendered for a build.
pub const DISK_NAME_VARIABLES: [&str; 2] = ["imagebuilder:buildDate", "imagebuilder:buildVersion"];

/// A disk name template's text and `{{ VARIABLE }}`s, in order; `Err` names what is wrong.
fn disk_name_parts(template: &str) -> Result<Vec<(&str, Option<&str>)>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            return Err("`{{` is not closed by `}}`".into());
        };
        let var = rest[start + 2..start + end].trim();
        if !DISK_NAME_VARIABLES.contains(&var) {
            return Err(format!(
                "`{{{{ {var} }}}}` is not a variable of a disk's name; use {}",
                DISK_NAME_VARIABLES
                    .map(|v| format!("{{{{ {v} }}}}"))
                    .join(" or ")
            ));
        }
        parts.push((&rest[..start], Some(var)));
        rest = &rest[start + end + 2..];
    }
    parts.push((rest, None));
    Ok(parts)
}

/// Renders a disk name template for build `build` made at `date`, as a tag (characters a tag
/// cannot have become `-`). Templates are checked when the recipe is read; one that is not
/// right renders as written.
pub fn render_disk_name(template: &str, build: u32, date: chrono::DateTime<chrono::Utc>) -> String {
    let out: String = match disk_name_parts(template) {
        Ok(parts) => parts
            .into_iter()
            .map(|(text, var)| {
                let value = match var {
                    Some("imagebuilder:buildDate") => date.format("%Y-%m-%dT%H-%M-%SZ").to_string(),
                    // The only other variable: `imagebuilder:buildVersion`.
                    Some(_) => build.to_string(),
                    None => String::new(),
                };
                format!("{text}{value}")
            })
            .collect(),
        Err(_) => template.to_string(),
    };
    let tag: String = out
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let tag = tag.trim_start_matches(['.', '-']).to_string();
    tag.chars().take(128).collect()
}

pub use kiln_instance::BuilderKind;

/// How kiln's virtual machines (VM builders, disk test instances) run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmSettings {
    /// Memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// How long a boot may take to reach the guest agent.
    pub boot_timeout_secs: u64,
    /// KVM, TCG, or KVM when it works.
    pub accel: kiln_instance::vm::Accel,
}

/// Where and how the build runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Infrastructure {
    /// Builder kind.
    pub builder: BuilderKind,
    /// Network of builder and test instances.
    pub network: kiln_instance::sandbox::Network,
    /// Resource limits.
    pub limits: kiln_instance::sandbox::Limits,
    /// Remove the instance when a build fails (keep it to debug when false).
    pub terminate_instance_on_failure: bool,
    /// Virtual machines.
    pub vm: VmSettings,
    /// Where components no operator account owns run (`untrustedComponents`): `vm` raises
    /// the server's floor ([`crate::trust::TrustPolicy`]); none leaves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untrusted_components: Option<BuilderKind>,
}

/// A parsed, valid recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recipe {
    /// Image name.
    pub name: String,
    /// Its version.
    pub semantic_version: Version,
    /// Description.
    pub description: String,
    /// Parent image.
    pub parent: ParentImage,
    /// Extra packages for a `bootstrap:` parent (minbase plus these).
    pub bootstrap_packages: Vec<String>,
    /// Mirror for a `bootstrap:` parent.
    pub bootstrap_mirror: Option<String>,
    /// Components in order.
    pub components: Vec<ComponentRef>,
    /// Working directory of the components.
    pub working_directory: String,
    /// Tests.
    pub tests: TestsConfig,
    /// Whether the tested image is scanned (`imageScanningConfiguration`).
    #[serde(default)]
    pub scanning: ScanningConfig,
    /// Outputs.
    pub outputs: Vec<OutputFormat>,
    /// Disk image settings (used when `outputs` has `disk`).
    pub disk: DiskSpec,
    /// OCI configuration of the output.
    pub image_config: ImageConfigSpec,
    /// Regions.
    pub distributions: Vec<Distribution>,
    /// Layer compression.
    pub compression: Compression,
    /// Builder settings.
    pub infrastructure: Infrastructure,
    /// The file.
    pub source: Arc<RecipeSource>,
    /// Warnings found while reading it (shown then; not sent along).
    #[serde(skip)]
    pub warnings: Vec<Diagnostic>,
}

impl Recipe {
    /// The folder relative paths in the recipe resolve against.
    pub fn dir(&self) -> PathBuf {
        recipe_dir(&self.source.path)
    }

    /// Whether the build makes a disk image.
    pub fn wants_disk(&self) -> bool {
        self.outputs.contains(&OutputFormat::Disk)
    }

    /// Whether the build makes an OCI image.
    pub fn wants_oci(&self) -> bool {
        self.outputs.contains(&OutputFormat::Oci)
    }

    /// The packages a `bootstrap:` parent is made with: the recipe's, plus what a bootable disk
    /// needs when one is wanted.
    pub fn bootstrap_package_list(&self) -> Vec<String> {
        let mut p = self.bootstrap_packages.clone();
        if self.wants_disk() || self.infrastructure.builder == BuilderKind::Vm {
            let extra = self
                .disk
                .kernel_packages
                .iter()
                .cloned()
                .chain(DISK_BOOTSTRAP_PACKAGES[1..].iter().map(|s| s.to_string()));
            for e in extra {
                if !p.contains(&e) {
                    p.push(e);
                }
            }
        }
        p
    }
}

fn recipe_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

const TOP_KEYS: &[&str] = &[
    "name",
    "semanticVersion",
    "description",
    "parentImage",
    "bootstrap",
    "components",
    "workingDirectory",
    "imageTestsConfiguration",
    "imageScanningConfiguration",
    "outputs",
    "imageConfig",
    "distributions",
    "compression",
    "infrastructure",
    "tags",
    "disk",
    "blockDeviceMappings",
    "additionalInstanceConfiguration",
];

/// Reads a recipe file.
pub fn load(path: &Path) -> Result<Recipe, RecipeErrors> {
    let fail = |msg: String| RecipeErrors {
        source: Arc::new(RecipeSource {
            path: path.to_path_buf(),
            text: String::new(),
        }),
        diagnostics: vec![Diagnostic::error(None, msg)],
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read the recipe: {e}")))?;
    parse(RecipeSource {
        path: path.to_path_buf(),
        text,
    })
}

/// A valid resource, image or region name.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

/// What a recipe file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// A recipe for `kiln build FILE`: everything in one file.
    File,
    /// An image recipe resource (CreateImageRecipe's fields): makes a disk by default.
    ImageRecipe,
    /// A container recipe resource (CreateContainerRecipe's fields): makes an OCI image.
    ContainerRecipe,
}

/// Keys of Image Builder's requests that kiln reads but does not use, with why.
const AWS_ONLY: &[(&str, &str)] = &[
    ("amiTags", "kiln makes no AMIs"),
    ("kmsKeyId", "kiln does not encrypt images with KMS"),
    ("platformOverride", "kiln builds Linux images"),
    ("imageOsVersionOverride", "kiln reads the OS from the image"),
    (
        "instanceConfiguration",
        "the infrastructure configuration sets the builder",
    ),
    (
        "targetRepository",
        "the distribution configuration says where images go",
    ),
];

/// Parses and checks a recipe, reporting every problem.
pub fn parse(source: RecipeSource) -> Result<Recipe, RecipeErrors> {
    parse_as(source, Flavor::File)
}

/// Parses and checks a recipe of a flavor, reporting every problem. Resource recipes may
/// leave out `semanticVersion` (kiln picks one; the recipe then says 0.0.0).
pub fn parse_as(source: RecipeSource, flavor: Flavor) -> Result<Recipe, RecipeErrors> {
    let source = Arc::new(source);
    let mut r = Reader::new();
    let recipe = match kiln_yaml::parse(&source.text) {
        Err(d) => {
            r.diagnostics.push(d);
            None
        }
        Ok(p) => {
            r.diagnostics.extend(p.diagnostics);
            build(&mut r, &p.root, &source, flavor)
        }
    };
    r.diagnostics
        .sort_by_key(|d| d.span.map(|s| (s.start.line, s.start.col)));
    match recipe {
        Some(mut recipe) if !r.has_errors() => {
            recipe.warnings = r.diagnostics;
            Ok(recipe)
        }
        _ => Err(RecipeErrors {
            source,
            diagnostics: r.diagnostics,
        }),
    }
}

fn build(
    r: &mut Reader,
    root: &Node,
    source: &Arc<RecipeSource>,
    flavor: Flavor,
) -> Option<Recipe> {
    let m = r.map(root, "a recipe")?;
    if flavor == Flavor::File {
        r.known_keys(m, TOP_KEYS, "a recipe");
    } else {
        resource_keys(r, m, flavor);
    }
    let base = recipe_dir(&source.path);
    let at = root.span;

    let name = r.required_string(m, "name", at, "a recipe");
    if let (Some(n), Some(node)) = (&name, m.get("name")) {
        if !is_name(n) {
            r.error(
                node.span,
                format!("`{n}` is not a valid image name"),
                Some("use up to 128 letters, digits, `-`, `_` and `.`, starting with a letter or digit".into()),
            );
        }
    }
    let semantic_version = if flavor != Flavor::File && m.get("semanticVersion").is_none() {
        Some(Version::default().to_string())
    } else {
        r.required_string(m, "semanticVersion", at, "a recipe")
    };
    let semantic_version = semantic_version.and_then(|v| match v.parse::<Version>() {
        Ok(v) => Some(v),
        Err(e) => {
            if let Some(n) = m.get("semanticVersion") {
                r.error(n.span, e.to_string(), None);
            }
            None
        }
    });
    let description = r.string(m, "description").unwrap_or_default();
    let parent = r
        .required_string(m, "parentImage", at, "a recipe")
        .and_then(|p| match parse_parent(&p, &base) {
            Ok(p) => Some(p),
            Err(e) => {
                if let Some(n) = m.get("parentImage") {
                    r.error(n.span, e, None);
                }
                None
            }
        });

    let (mut bootstrap_packages, mut bootstrap_mirror) = (Vec::new(), None);
    if let Some(b) = m.get("bootstrap") {
        if let Some(bm) = r.map(b, "`bootstrap`") {
            r.known_keys(bm, &["packages", "mirror"], "`bootstrap`");
            bootstrap_packages = r.strings(bm, "packages", false).unwrap_or_default();
            bootstrap_mirror = r.string(bm, "mirror");
        }
        if !matches!(parent, Some(ParentImage::Bootstrap { .. }) | None) {
            r.warn(
                b.span,
                "`bootstrap` only applies to a bootstrap: parent image; it is ignored",
                None,
            );
        }
    }

    let components = components(r, m, &base, at);
    let working_directory = r
        .string(m, "workingDirectory")
        .unwrap_or_else(|| "/tmp".to_string());
    if !working_directory.starts_with('/') {
        if let Some(n) = m.get("workingDirectory") {
            r.error(n.span, "`workingDirectory` must be an absolute path", None);
        }
    }

    let mut tests = TestsConfig::default();
    if let Some(t) = m.get("imageTestsConfiguration") {
        if let Some(tm) = r.map(t, "`imageTestsConfiguration`") {
            tests = tests_config(r, tm);
        }
    }

    let mut scanning = ScanningConfig::default();
    if let Some(s) = m.get("imageScanningConfiguration") {
        if let Some(sm) = r.map(s, "`imageScanningConfiguration`") {
            scanning = scanning_config(r, sm);
        }
    }

    let infrastructure = infrastructure(r, m);
    let mut outputs = if infrastructure.builder == BuilderKind::Vm || flavor == Flavor::ImageRecipe
    {
        vec![OutputFormat::Disk]
    } else {
        vec![OutputFormat::Oci]
    };
    if let Some(o) = m.get("outputs") {
        outputs.clear();
        for (i, word) in r
            .strings(m, "outputs", true)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let span = o.as_seq().and_then(|s| s.get(i)).map_or(o.span, |n| n.span);
            let kind = match word.as_str() {
                "oci" => OutputFormat::Oci,
                "disk" => OutputFormat::Disk,
                other => {
                    r.error(
                        span,
                        format!("unknown output `{other}`"),
                        Some(
                            kiln_yaml::did_you_mean(other, ["oci", "disk"])
                                .map(|s| format!("did you mean `{s}`?"))
                                .unwrap_or_else(|| "outputs are `oci` and `disk`".into()),
                        ),
                    );
                    continue;
                }
            };
            if outputs.contains(&kind) {
                r.error(span, format!("output `{word}` is listed twice"), None);
            } else {
                outputs.push(kind);
            }
        }
        if outputs.is_empty() && !r.has_errors() {
            r.error(
                o.span,
                "`outputs` is empty",
                Some("list `oci`, `disk` or both".into()),
            );
        }
        if flavor == Flavor::ContainerRecipe && outputs.contains(&OutputFormat::Disk) {
            r.error(
                o.span,
                "a container recipe makes container images only",
                Some("make disks with an image recipe (kiln recipe create without containerType), which may list both outputs".into()),
            );
        }
        if infrastructure.builder == BuilderKind::Vm && outputs.contains(&OutputFormat::Oci) {
            r.error(
                o.span,
                "`builder: vm` makes disk images only: a VM's disk is one filesystem, not layers",
                Some("build the container image with the sandbox builder (the default), which makes both outputs from one recipe".into()),
            );
        }
    }
    let disk = disk_spec(r, m, outputs.contains(&OutputFormat::Disk));
    if tests.max_boot_seconds.is_some() && !outputs.contains(&OutputFormat::Disk) {
        if let Some(n) = m
            .get("imageTestsConfiguration")
            .and_then(|t| t.as_map())
            .and_then(|t| t.get("maxBootSeconds"))
        {
            r.warn(
                n.span,
                "`maxBootSeconds` limits the boot of a disk image's test VM, and this recipe makes no disk image: it is ignored",
                None,
            );
        }
    }
    let agent_node = m
        .get("disk")
        .or_else(|| m.get("additionalInstanceConfiguration"));
    if let (true, BuilderKind::Vm, Some(node)) =
        (disk.remove_guest_agent, infrastructure.builder, agent_node)
    {
        r.error(
            node.span,
            "removing the guest agent needs the sandbox builder: with `builder: vm` the disk is the VM's, and the test VM needs the agent",
            Some("drop removeGuestAgent, or build with the sandbox builder".into()),
        );
    }

    let image_config = image_config(r, m);
    let distributions = distributions(r, m, &base);
    let compression = match r.string(m, "compression").as_deref() {
        None | Some("gzip") => Compression::Gzip,
        Some("zstd") => Compression::Zstd,
        Some(other) => {
            if let Some(n) = m.get("compression") {
                r.error(
                    n.span,
                    format!("unknown compression `{other}`"),
                    Some("use gzip or zstd".into()),
                );
            }
            Compression::Gzip
        }
    };
    if let Some(t) = m.get("tags") {
        if let Some(tm) = r.map(t, "`tags`") {
            for (k, v) in &tm.entries {
                if k.as_text().is_none() || v.as_text().is_none() {
                    r.error(k.span, "`tags` maps names to strings", None);
                }
            }
        }
    }

    let mut image_config = image_config;
    if let Some(tm) = m.get("tags").and_then(Node::as_map) {
        for (k, v) in &tm.entries {
            if let (Some(k), Some(v)) = (k.as_text(), v.as_text()) {
                image_config
                    .labels
                    .entry(k.to_string())
                    .or_insert_with(|| v.to_string());
            }
        }
    }

    Some(Recipe {
        name: name?,
        semantic_version: semantic_version?,
        description,
        parent: parent?,
        bootstrap_packages,
        bootstrap_mirror,
        components,
        working_directory,
        tests,
        scanning,
        outputs,
        disk,
        image_config,
        distributions,
        compression,
        infrastructure,
        source: source.clone(),
        warnings: Vec::new(),
    })
}

/// The keys of a recipe resource: the recipe's own, Image Builder's request fields, and the
/// settings that belong to other resources (refused with where they go).
fn resource_keys(r: &mut Reader, m: &Map, flavor: Flavor) {
    let elsewhere = [
        (
            "infrastructure",
            "an infrastructure configuration (kiln infrastructure create)",
        ),
        (
            "distributions",
            "a distribution configuration (kiln distribution create)",
        ),
        (
            "imageTestsConfiguration",
            "the pipeline (its imageTestsConfiguration)",
        ),
        (
            "imageScanningConfiguration",
            "the pipeline (its imageScanningConfiguration)",
        ),
    ];
    let mut allowed: Vec<&str> = TOP_KEYS
        .iter()
        .copied()
        .filter(|k| !elsewhere.iter().any(|(e, _)| e == k))
        .collect();
    allowed.push("clientToken");
    allowed.extend(AWS_ONLY.iter().map(|(k, _)| *k));
    if flavor == Flavor::ContainerRecipe {
        allowed.extend([
            "containerType",
            "dockerfileTemplateData",
            "dockerfileTemplateUri",
        ]);
    }
    for (key, node) in m.keys() {
        if let Some((_, place)) = elsewhere.iter().find(|(e, _)| *e == key) {
            r.error(
                node.span,
                format!("`{key}` does not belong in a stored recipe"),
                Some(format!("it goes in {place}")),
            );
        } else if let Some((_, why)) = AWS_ONLY.iter().find(|(k, _)| *k == key) {
            r.warn(node.span, format!("`{key}` is ignored: {why}"), None);
        }
    }
    let only_known: Vec<(&str, &Node)> = m
        .keys()
        .filter(|(k, _)| !elsewhere.iter().any(|(e, _)| e == k))
        .collect();
    for (key, node) in only_known {
        if !allowed.contains(&key) {
            let hint = kiln_yaml::did_you_mean(key, allowed.iter().copied())
                .map(|s| format!("did you mean `{s}`?"));
            r.error(node.span, format!("unknown key `{key}` in a recipe"), hint);
        }
    }
    if flavor == Flavor::ContainerRecipe {
        if let Some(t) = m.get("containerType") {
            if t.as_text() != Some("DOCKER") {
                r.error(
                    t.span,
                    "`containerType` is DOCKER (the only type Image Builder has)",
                    None,
                );
            }
        }
        if let Some(d) = m.get("dockerfileTemplateData") {
            // The first line that is not the standard template's, numbered from 1.
            let other = d.as_text().map(|t| {
                t.lines().enumerate().find(|(_, l)| {
                    let l = l.trim();
                    !l.is_empty()
                        && !matches!(
                            l.replace(' ', "").as_str(),
                            "FROM{{{imagebuilder:parentImage}}}"
                                | "{{{imagebuilder:environments}}}"
                                | "{{{imagebuilder:components}}}"
                        )
                })
            });
            if let Some(found) = other.unwrap_or(Some((0, "(not text)"))) {
                let (n, line) = found;
                r.error(
                    d.span,
                    format!(
                        "line {} of dockerfileTemplateData, `{}`: kiln builds container images from components, not Dockerfile instructions",
                        n + 1,
                        line.trim()
                    ),
                    Some("use the standard template (FROM {{{ imagebuilder:parentImage }}}, {{{ imagebuilder:environments }}}, {{{ imagebuilder:components }}}) or leave it out, and move the instructions into a component".into()),
                );
            }
        }
        if let Some(u) = m.get("dockerfileTemplateUri") {
            r.error(
                u.span,
                "kiln builds container images from components, not Dockerfile templates",
                Some(
                    "leave dockerfileTemplateUri out and move the instructions into a component"
                        .into(),
                ),
            );
        }
    }
}

fn components(r: &mut Reader, m: &Map, base: &Path, at: Span) -> Vec<ComponentRef> {
    let Some(node) = m.get("components") else {
        r.error(
            at,
            "a recipe needs `components`",
            Some(
                "list the component documents: `components:` then `  - path: my-component.yaml`"
                    .into(),
            ),
        );
        return Vec::new();
    };
    let Some(items) = r.list(node, "`components`") else {
        return Vec::new();
    };
    if items.is_empty() {
        r.error(node.span, "`components` is empty", None);
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        r.set_context(Some(format!("component {}", i + 1)));
        let Some(cm) = r.map(item, "a component") else {
            continue;
        };
        r.known_keys(
            cm,
            &["path", "componentArn", "parameters", "cache"],
            "a component",
        );
        let source = match (r.string(cm, "path"), r.string(cm, "componentArn")) {
            (Some(p), None) => {
                let p = Path::new(&p);
                let full = if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    base.join(p)
                };
                if !full.exists() {
                    if let Some(n) = cm.get("path") {
                        r.error(
                            n.span,
                            format!("no component document at {}", full.display()),
                            Some("paths are relative to the recipe's folder".into()),
                        );
                    }
                }
                Some(ComponentSource::Path(full))
            }
            (None, Some(a)) => Some(ComponentSource::Arn(a)),
            (Some(_), Some(_)) => {
                r.error(
                    item.span,
                    "a component has `path` or `componentArn`, not both",
                    None,
                );
                None
            }
            (None, None) => {
                r.error(
                    item.span,
                    "a component needs `path` (a document file) or `componentArn` (a component kiln knows)",
                    None,
                );
                None
            }
        };
        let mut parameters = Vec::new();
        if let Some(pnode) = cm.get("parameters") {
            if let Some(list) = r.list(pnode, "`parameters`") {
                for p in list {
                    let Some(pm) = r.map(p, "a parameter") else {
                        continue;
                    };
                    r.known_keys(pm, &["name", "value"], "a parameter");
                    let name = r.required_string(pm, "name", p.span, "a parameter");
                    // Image Builder's shape is `value: [string]`; a plain string is accepted too.
                    let value = match pm.get("value") {
                        None => {
                            r.error(p.span, "a parameter needs `value`", None);
                            None
                        }
                        Some(v) => match (v.as_text(), v.as_seq()) {
                            (Some(t), _) => Some(t.to_string()),
                            (None, Some([one])) if one.as_text().is_some() => {
                                one.as_text().map(str::to_string)
                            }
                            _ => {
                                r.error(
                                    v.span,
                                    "`value` is a string, or a list of one string (Image Builder's shape)",
                                    None,
                                );
                                None
                            }
                        },
                    };
                    if let (Some(n), Some(v)) = (name, value) {
                        parameters.push((n, v));
                    }
                }
            }
        }
        let cache = r.boolean(cm, "cache").unwrap_or(true);
        if let Some(source) = source {
            out.push(ComponentRef {
                source,
                parameters,
                cache,
                span: item.span,
            });
        }
    }
    r.set_context(None);
    out
}

/// `disk.compressed`: `true`/`zlib`, `zstd` or `false`; a warning when no qcow2 is listed.
fn compression(
    r: &mut Reader,
    dm: &Map,
    formats: &[kiln_image::disk::DiskFormat],
) -> Option<kiln_image::disk::DiskCompression> {
    use kiln_image::disk::DiskCompression;
    let n = dm.get("compressed")?;
    let c = match n.as_text() {
        Some("true") | Some("zlib") => DiskCompression::Zlib,
        Some("false") => DiskCompression::None,
        Some("zstd") => DiskCompression::Zstd,
        _ => {
            r.error(
                n.span,
                "`compressed` is true, false, zlib (what every qcow2 reader reads) or zstd (smaller; QEMU 5.1 and later read it)",
                None,
            );
            return None;
        }
    };
    if c != DiskCompression::None && !formats.contains(&kiln_image::disk::DiskFormat::Qcow2) {
        r.warn(
            n.span,
            "only qcow2 disks are compressed; no qcow2 format is listed",
            None,
        );
    }
    Some(c)
}

fn image_config(r: &mut Reader, m: &Map) -> ImageConfigSpec {
    let mut c = ImageConfigSpec::default();
    let Some(node) = m.get("imageConfig") else {
        return c;
    };
    let Some(cm) = r.map(node, "`imageConfig`") else {
        return c;
    };
    r.known_keys(
        cm,
        &[
            "entrypoint",
            "cmd",
            "env",
            "workingDir",
            "user",
            "labels",
            "exposedPorts",
        ],
        "`imageConfig`",
    );
    c.entrypoint = r.strings(cm, "entrypoint", true);
    c.cmd = r.strings(cm, "cmd", true);
    c.working_dir = r.string(cm, "workingDir");
    c.user = r.string(cm, "user");
    c.exposed_ports = r.strings(cm, "exposedPorts", false).unwrap_or_default();
    if let Some(env) = cm.get("env") {
        match (env.as_map(), env.as_seq()) {
            (Some(em), _) => {
                for (k, v) in &em.entries {
                    match (k.as_text(), v.as_text()) {
                        (Some(k), Some(v)) => c.env.push(format!("{k}={v}")),
                        _ => r.error(k.span, "`env` maps names to strings", None),
                    }
                }
            }
            (None, Some(_)) => {
                for e in r.strings(cm, "env", false).unwrap_or_default() {
                    if e.contains('=') {
                        c.env.push(e);
                    } else {
                        r.error(env.span, format!("`{e}`: env entries are NAME=VALUE"), None);
                    }
                }
            }
            _ => r.error(env.span, "`env` is a mapping of names to values", None),
        }
    }
    if let Some(labels) = cm.get("labels") {
        if let Some(lm) = r.map(labels, "`labels`") {
            for (k, v) in &lm.entries {
                match (k.as_text(), v.as_text()) {
                    (Some(k), Some(v)) => {
                        c.labels.insert(k.to_string(), v.to_string());
                    }
                    _ => r.error(k.span, "`labels` maps names to strings", None),
                }
            }
        }
    }
    for p in &c.exposed_ports {
        let ok = p
            .split_once('/')
            .map_or(p.parse::<u16>().is_ok(), |(n, proto)| {
                n.parse::<u16>().is_ok() && matches!(proto, "tcp" | "udp" | "sctp")
            });
        if !ok {
            if let Some(n) = cm.get("exposedPorts") {
                r.error(n.span, format!("`{p}` is not a port such as 80/tcp"), None);
            }
        }
    }
    c
}

fn distributions(r: &mut Reader, m: &Map, base: &Path) -> Vec<Distribution> {
    let Some(node) = m.get("distributions") else {
        return vec![Distribution::in_region("local")];
    };
    let Some(items) = r.list(node, "`distributions`") else {
        return Vec::new();
    };
    let mut out: Vec<Distribution> = Vec::new();
    for item in items {
        let Some(dm) = r.map(item, "a distribution") else {
            continue;
        };
        r.known_keys(
            dm,
            &[
                "region",
                "path",
                "containerDistributionConfiguration",
                "amiDistributionConfiguration",
            ],
            "a distribution",
        );
        let Some(region) = r.required_string(dm, "region", item.span, "a distribution") else {
            continue;
        };
        if !is_name(&region) {
            if let Some(n) = dm.get("region") {
                r.error(
                    n.span,
                    format!("`{region}` is not a valid region name"),
                    None,
                );
            }
        }
        if out.iter().any(|d| d.region == region) {
            if let Some(n) = dm.get("region") {
                r.error(n.span, format!("region `{region}` is listed twice"), None);
            }
        }
        let path = r.string(dm, "path").map(|p| {
            let p = Path::new(&p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        });
        let container = dm
            .get("containerDistributionConfiguration")
            .and_then(|n| container_naming(r, n));
        let disk_name = dm
            .get("amiDistributionConfiguration")
            .and_then(|n| disk_name(r, n));
        out.push(Distribution {
            region,
            path,
            container,
            disk_name,
        });
    }
    out
}

/// `containerDistributionConfiguration`'s repository and tags (its other keys are AWS's).
pub(crate) fn container_naming(r: &mut Reader, node: &Node) -> Option<ContainerNaming> {
    let m = r.map(node, "`containerDistributionConfiguration`")?;
    let mut naming = ContainerNaming::default();
    if let Some(tags) = m.get("containerTags") {
        for t in r.list(tags, "`containerTags`").unwrap_or_default() {
            match t.as_text() {
                Some(tag) if kiln_image::oci::is_tag(tag) => naming.tags.push(tag.to_string()),
                _ => r.error(
                    t.span,
                    "a container tag is 1-128 letters, digits, `_`, `.` and `-`, not starting \
                     with `.` or `-`",
                    None,
                ),
            }
        }
    }
    if let Some(repo) = m.get("targetRepository") {
        if let Some(rm) = r.map(repo, "`targetRepository`") {
            if let Some(n) = rm.get("repositoryName") {
                match n.as_text() {
                    Some(name) if is_repository(name) => naming.repository = Some(name.to_string()),
                    _ => r.error(
                        n.span,
                        "a repository name is lowercase letters, digits and `._-` between \
                         slashes, like golden/web",
                        None,
                    ),
                }
            }
        }
    }
    Some(naming)
}

/// `amiDistributionConfiguration.name`, checked for the variables kiln renders.
pub(crate) fn disk_name(r: &mut Reader, node: &Node) -> Option<String> {
    let m = r.map(node, "`amiDistributionConfiguration`")?;
    let n = m.get("name")?;
    let text = n.as_text()?.to_string();
    match disk_name_parts(&text) {
        Ok(_) => Some(text),
        Err(why) => {
            r.error(n.span, why, None);
            None
        }
    }
}

/// A repository path as OCI distribution allows it (lowercase components between slashes).
pub fn is_repository(s: &str) -> bool {
    !s.is_empty()
        && s.split('/').all(|c| {
            !c.is_empty()
                && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
        })
}

/// Parses sizes such as `512MiB`, `2GiB`, `1G`, `1048576`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "KiB" | "k" => 1 << 10,
        "M" | "MB" | "MiB" => 1 << 20,
        "G" | "GB" | "GiB" => 1 << 30,
        "T" | "TB" | "TiB" => 1 << 40,
        _ => return None,
    };
    Some((n * mult as f64) as u64)
}

fn disk_spec(r: &mut Reader, m: &Map, wanted: bool) -> DiskSpec {
    use kiln_image::disk::DiskFormat;
    let mut d = DiskSpec::default();
    if let Some(node) = m.get("disk") {
        if !wanted {
            r.warn(
                node.span,
                "`disk` applies when `outputs` has `disk`; it is ignored",
                None,
            );
        }
        if let Some(dm) = r.map(node, "`disk`") {
            r.known_keys(
                dm,
                &[
                    "formats",
                    "compressed",
                    "kernelPackages",
                    "removeGuestAgent",
                ],
                "`disk`",
            );
            if let Some(f) = dm.get("formats") {
                let words = r.strings(dm, "formats", true).unwrap_or_default();
                let mut formats = Vec::new();
                for (i, w) in words.iter().enumerate() {
                    let span = f.as_seq().and_then(|s| s.get(i)).map_or(f.span, |n| n.span);
                    match DiskFormat::parse(w) {
                        Some(fmt) if !formats.contains(&fmt) => formats.push(fmt),
                        Some(_) => r.error(span, format!("format `{w}` is listed twice"), None),
                        None => r.error(
                            span,
                            format!("unknown disk format `{w}`"),
                            Some(
                                kiln_yaml::did_you_mean(w, ["raw", "qcow2", "vmdk", "vhd"])
                                    .map(|s| format!("did you mean `{s}`?"))
                                    .unwrap_or_else(|| "use raw, qcow2, vmdk or vhd".into()),
                            ),
                        ),
                    }
                }
                if formats.is_empty() && words.is_empty() {
                    r.error(f.span, "`formats` is empty", None);
                }
                if !formats.is_empty() {
                    d.formats = formats;
                }
            }
            if let Some(c) = compression(r, dm, &d.formats) {
                d.compression = c;
            }
            if let Some(k) = r.strings(dm, "kernelPackages", true) {
                d.kernel_packages = k;
            }
            if let Some(g) = r.boolean(dm, "removeGuestAgent") {
                d.remove_guest_agent = g;
            }
        }
    }
    // Image Builder's shape for the same wish.
    if let Some(a) = m.get("additionalInstanceConfiguration") {
        if let Some(am) = r.map(a, "`additionalInstanceConfiguration`") {
            r.known_keys(
                am,
                &["systemsManagerAgent", "userDataOverride"],
                "`additionalInstanceConfiguration`",
            );
            if let Some(u) = am.get("userDataOverride") {
                r.warn(
                    u.span,
                    "kiln has no user data: `userDataOverride` is ignored",
                    Some("run setup commands in a component".into()),
                );
            }
            if let Some(s) = am.get("systemsManagerAgent") {
                if let Some(sm) = r.map(s, "`systemsManagerAgent`") {
                    r.known_keys(sm, &["uninstallAfterBuild"], "`systemsManagerAgent`");
                    if let Some(u) = r.boolean(sm, "uninstallAfterBuild") {
                        d.remove_guest_agent = u;
                    }
                }
            }
        }
    }
    if let Some(node) = m.get("blockDeviceMappings") {
        if let Some(items) = r.list(node, "`blockDeviceMappings`") {
            if items.len() > 1 {
                r.error(
                    items[1].span,
                    "kiln images have one disk: give one block device mapping",
                    None,
                );
            }
            if let Some(item) = items.first() {
                if let Some(bm) = r.map(item, "a block device mapping") {
                    r.known_keys(
                        bm,
                        &["deviceName", "ebs", "noDevice", "virtualName"],
                        "a block device mapping",
                    );
                    if let Some(e) = bm.get("ebs") {
                        if let Some(em) = r.map(e, "`ebs`") {
                            r.known_keys(
                                em,
                                &[
                                    "volumeSize",
                                    "volumeType",
                                    "deleteOnTermination",
                                    "encrypted",
                                    "iops",
                                    "throughput",
                                    "kmsKeyId",
                                    "snapshotId",
                                ],
                                "`ebs`",
                            );
                            if let Some(v) = em.get("volumeSize") {
                                // Image Builder counts GiB; a size with a unit is read as written.
                                let bytes = match v.as_scalar().and_then(|s| s.as_int()) {
                                    Some(g) if g > 0 => Some((g as u64) << 30),
                                    Some(_) => None,
                                    None => v.as_text().and_then(parse_size),
                                };
                                match bytes {
                                    Some(b) if b >= 64 << 20 => d.size_bytes = Some(b),
                                    _ => r.error(
                                        v.span,
                                        "`volumeSize` is a size in GiB (Image Builder's unit), or a size such as 3GiB, of at least 64MiB",
                                        None,
                                    ),
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    d
}

/// The keys of kiln's infrastructure settings.
pub(crate) const INFRA_KEYS: &[&str] = &[
    "builder",
    "network",
    "memory",
    "cpus",
    "pids",
    "terminateInstanceOnFailure",
    "bootTimeoutSeconds",
    "accelerator",
    crate::trust::UNTRUSTED_COMPONENTS_FIELD,
];

fn infrastructure(r: &mut Reader, m: &Map) -> Infrastructure {
    let Some(node) = m.get("infrastructure") else {
        return infrastructure_settings(r, &Map::default());
    };
    let Some(im) = r.map(node, "`infrastructure`") else {
        return infrastructure_settings(r, &Map::default());
    };
    r.known_keys(im, INFRA_KEYS, "`infrastructure`");
    infrastructure_settings(r, im)
}

/// Reads kiln's infrastructure settings (the keys of [`INFRA_KEYS`]) from a map.
pub(crate) fn infrastructure_settings(r: &mut Reader, im: &Map) -> Infrastructure {
    use kiln_instance::sandbox::{Limits, Network};
    let mut infra = Infrastructure {
        builder: BuilderKind::Sandbox,
        network: Network::Private,
        limits: Limits::default(),
        terminate_instance_on_failure: true,
        vm: VmSettings {
            memory_mib: 1024,
            cpus: 2,
            boot_timeout_secs: 600,
            accel: kiln_instance::vm::Accel::Auto,
        },
        untrusted_components: None,
    };
    infra.untrusted_components = untrusted_components(r, im);
    match r.string(im, "builder").as_deref() {
        None | Some("sandbox") => {}
        Some("vm") => infra.builder = BuilderKind::Vm,
        Some(other) => {
            if let Some(n) = im.get("builder") {
                r.error(
                    n.span,
                    format!("unknown builder `{other}`"),
                    Some("use `sandbox` (Linux namespaces, the default) or `vm` (QEMU)".into()),
                );
            }
        }
    }
    match r.string(im, "accelerator").as_deref() {
        None | Some("auto") => {}
        Some("kvm") => infra.vm.accel = kiln_instance::vm::Accel::Kvm,
        Some("tcg") => infra.vm.accel = kiln_instance::vm::Accel::Tcg,
        Some(other) => {
            if let Some(n) = im.get("accelerator") {
                r.error(
                    n.span,
                    format!("unknown accelerator `{other}`"),
                    Some("use auto (KVM when it works, else TCG), kvm or tcg".into()),
                );
            }
        }
    }
    if let Some(t) = r.integer(im, "bootTimeoutSeconds") {
        if (10..=86_400).contains(&t) {
            infra.vm.boot_timeout_secs = t as u64;
        } else if let Some(n) = im.get("bootTimeoutSeconds") {
            r.error(
                n.span,
                "`bootTimeoutSeconds` must be between 10 and 86400",
                None,
            );
        }
    }
    match r.string(im, "network").as_deref() {
        None | Some("private") => {}
        Some("host") => infra.network = Network::Host,
        Some("none") => infra.network = Network::None,
        Some(other) => {
            if let Some(n) = im.get("network") {
                r.error(
                    n.span,
                    format!("unknown network `{other}`"),
                    Some("use private (the default: outbound connections only, the host itself out of reach), none, or host (the host's own network, its loopback services included)".into()),
                );
            }
        }
    }
    if let Some(mem) = r.string(im, "memory") {
        match parse_size(&mem) {
            Some(b) if b >= 16 << 20 => {
                infra.limits.memory_bytes = Some(b);
                infra.vm.memory_mib = (b >> 20).clamp(256, u64::from(u32::MAX)) as u32;
            }
            _ => {
                if let Some(n) = im.get("memory") {
                    r.error(
                        n.span,
                        format!(
                            "`{mem}` is not a memory size of at least 16MiB (write 2GiB, 512MiB)"
                        ),
                        None,
                    );
                }
            }
        }
    }
    if let Some(c) = im.get("cpus") {
        match c.as_scalar().and_then(|s| s.as_float()) {
            Some(f) if f > 0.0 => {
                infra.limits.cpus = Some(f);
                infra.vm.cpus = (f.ceil() as u32).max(1);
            }
            _ => r.error(c.span, "`cpus` must be a positive number", None),
        }
    }
    if let Some(p) = r.integer(im, "pids") {
        if p >= 16 {
            infra.limits.pids = Some(p as u64);
        } else if let Some(n) = im.get("pids") {
            r.error(n.span, "`pids` must be at least 16", None);
        }
    }
    if let Some(t) = r.boolean(im, "terminateInstanceOnFailure") {
        infra.terminate_instance_on_failure = t;
    }
    infra
}

/// `untrustedComponents: vm | sandbox`.
fn untrusted_components(r: &mut Reader, im: &Map) -> Option<BuilderKind> {
    let key = crate::trust::UNTRUSTED_COMPONENTS_FIELD;
    let word = r.string(im, key)?;
    match word.parse::<BuilderKind>() {
        Ok(kind) => Some(kind),
        Err(_) => {
            if let Some(n) = im.get(key) {
                r.error(
                    n.span,
                    format!("unknown builder `{word}` for `{key}`"),
                    Some(
                        "use `vm` (components no operator account owns run in VMs) or `sandbox`"
                            .into(),
                    ),
                );
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(text: &str) -> Result<Recipe, RecipeErrors> {
        parse(RecipeSource {
            path: PathBuf::from("/nonexistent/recipe.yml"),
            text: text.into(),
        })
    }

    #[test]
    fn distributions_name_repositories_tags_and_disk_names() {
        let base = "name: web\nsemanticVersion: 1.0.0\nparentImage: bootstrap:debian/bookworm\ncomponents:\n  - componentArn: arn:kiln:imagebuilder:local:000000000000:component/c/1.0.0\n";
        let r = recipe(&format!(
            "{base}distributions:\n  - region: eu\n    containerDistributionConfiguration:\n      containerTags: [latest, stable]\n      targetRepository: {{service: ECR, repositoryName: golden/web-app}}\n    amiDistributionConfiguration:\n      name: \"web {{{{ imagebuilder:buildDate }}}}\"\n"
        ))
        .unwrap();
        let d = &r.distributions[0];
        assert_eq!(
            d.container,
            Some(ContainerNaming {
                repository: Some("golden/web-app".into()),
                tags: vec!["latest".into(), "stable".into()],
            })
        );
        let date = chrono::DateTime::parse_from_rfc3339("2026-12-02T06:07:08Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let name = d.disk_name.as_deref().unwrap();
        assert_eq!(render_disk_name(name, 3, date), "web-2026-12-02T06-07-08Z");
        assert_eq!(
            render_disk_name("v{{ imagebuilder:buildVersion }}", 3, date),
            "v3"
        );

        let e = recipe(&format!(
            "{base}distributions:\n  - region: eu\n    containerDistributionConfiguration:\n      containerTags: [\"-bad\"]\n      targetRepository: {{repositoryName: Web}}\n    amiDistributionConfiguration:\n      name: \"x-{{{{ imagebuilder:nope }}}}\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("a container tag is"), "{e}");
        assert!(e.contains("a repository name is"), "{e}");
        assert!(e.contains("imagebuilder:nope"), "{e}");
    }

    #[test]
    fn parents() {
        let b = Path::new("/r");
        assert_eq!(
            parse_parent("bootstrap:debian/bookworm", b).unwrap(),
            ParentImage::Bootstrap {
                distro: "debian".into(),
                suite: "bookworm".into()
            }
        );
        assert_eq!(
            parse_parent("oci:images/base:1.0", b).unwrap(),
            ParentImage::Oci {
                dir: "/r/images/base".into(),
                tag: Some("1.0".into())
            }
        );
        assert_eq!(
            parse_parent("oci:/abs/dir", b).unwrap(),
            ParentImage::Oci {
                dir: "/abs/dir".into(),
                tag: None
            }
        );
        assert_eq!(
            parse_parent("docker://127.0.0.1:5000/base:1", b).unwrap(),
            ParentImage::Registry {
                reference: "127.0.0.1:5000/base:1".into()
            }
        );
        assert_eq!(
            parse_parent("rootfs:root.tar", b).unwrap(),
            ParentImage::Rootfs {
                file: "/r/root.tar".into()
            }
        );
        assert!(matches!(
            parse_parent("golden/1.x.x", b).unwrap(),
            ParentImage::Image { .. }
        ));
        let e = parse_parent("ocii:x", b).unwrap_err();
        assert!(e.contains("did you mean `oci:`?"), "{e}");
        assert!(parse_parent("bootstrap:ubuntu/noble", b)
            .unwrap_err()
            .contains("kiln bootstraps Debian"));
        assert!(parse_parent("golden/1.x.2", b)
            .unwrap_err()
            .contains("once a node is x"));
    }

    #[test]
    fn the_network_is_private_unless_the_recipe_says_otherwise() {
        use kiln_instance::sandbox::Network;
        let base = "name: n\nsemanticVersion: 1.0.0\nparentImage: oci:images/base:1.0\ncomponents:\n  - componentArn: a\n";
        assert_eq!(
            recipe(base).unwrap().infrastructure.network,
            Network::Private
        );
        for (word, n) in [
            ("private", Network::Private),
            ("host", Network::Host),
            ("none", Network::None),
        ] {
            let r = recipe(&format!("{base}infrastructure:\n  network: {word}\n")).unwrap();
            assert_eq!(r.infrastructure.network, n);
        }
        let e = recipe(&format!("{base}infrastructure:\n  network: bridge\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("recipe.yml:7:12: error: unknown network `bridge`")
                && e.contains("use private"),
            "{e}"
        );
    }

    #[test]
    fn errors_point_at_the_field() {
        let e = recipe(
            "name: golden\nsemanticVersion: 1.0\nparentImage: ocii:x\ncomponents:\n  - componentArn: a\n    paramters: []\ncompression: xz\n",
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("recipe.yml:2:18: error: `1.0` is not a valid semantic version"),
            "{text}"
        );
        assert!(
            text.contains("recipe.yml:3:14: error: `ocii:x`: unknown image transport"),
            "{text}"
        );
        assert!(
            text.contains(
                "recipe.yml:6:5: error: component 1: unknown key `paramters` in a component"
            ),
            "{text}"
        );
        assert!(text.contains("did you mean `parameters`?"));
        assert!(
            text.contains("recipe.yml:7:14: error: unknown compression `xz`"),
            "{text}"
        );
    }

    #[test]
    fn a_recipe_travels_as_json_and_comes_back_the_same() {
        let r = recipe(
            r#"
name: golden-nginx
semanticVersion: 1.2.3
parentImage: kiln:base/1.x.x
components:
  - componentArn: arn:kiln:imagebuilder:local:000000000000:component/hardening/1.0.0
    parameters:
      - name: Banner
        value: ["Authorized use only"]
    cache: false
outputs: [oci, disk]
disk:
  formats: [qcow2, raw]
imageConfig:
  env: {LANG: C.UTF-8}
distributions:
  - region: lab
    path: /srv/lab
infrastructure:
  network: none
  memory: 2GiB
"#,
        )
        .unwrap();
        let text = serde_json::to_string(&r).unwrap();
        let back: Recipe = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
        assert_eq!(back.parent, r.parent);
        assert_eq!(back.disk, r.disk);
        assert_eq!(back.infrastructure, r.infrastructure);
        assert_eq!(back.outputs, vec![OutputFormat::Oci, OutputFormat::Disk]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["parent"]["transport"], "image");
        assert_eq!(v["parent"]["version"], "1.x.x");
        assert_eq!(v["infrastructure"]["builder"], "sandbox");
        assert_eq!(
            v["components"][0]["source"]["arn"],
            "arn:kiln:imagebuilder:local:000000000000:component/hardening/1.0.0"
        );
    }

    #[test]
    fn a_full_recipe() {
        let r = recipe(
            r#"
name: golden-nginx
semanticVersion: 1.2.3
parentImage: bootstrap:debian/bookworm
bootstrap:
  packages: [ca-certificates]
components:
  - componentArn: arn:kiln:imagebuilder:local:000000000000:component/hardening/1.0.0
    parameters:
      - name: Banner
        value: ["Authorized use only"]
      - name: Other
        value: plain
    cache: false
imageTestsConfiguration:
  imageTestsEnabled: false
imageConfig:
  cmd: ["nginx", "-g", "daemon off;"]
  env: {LANG: C.UTF-8}
  exposedPorts: [80/tcp]
  labels: {team: platform}
distributions:
  - region: lab
    path: /srv/lab
infrastructure:
  network: none
  memory: 2GiB
  cpus: 1.5
tags:
  owner: kiln
"#,
        )
        .unwrap();
        assert_eq!(r.semantic_version.to_string(), "1.2.3");
        assert_eq!(
            r.components[0].parameters,
            vec![
                ("Banner".into(), "Authorized use only".into()),
                ("Other".into(), "plain".into())
            ]
        );
        assert!(!r.components[0].cache);
        assert!(!r.tests.enabled);
        assert_eq!(r.image_config.env, vec!["LANG=C.UTF-8"]);
        assert_eq!(
            r.image_config.labels.get("owner").map(String::as_str),
            Some("kiln")
        );
        assert_eq!(
            r.distributions,
            vec![Distribution {
                region: "lab".into(),
                path: Some("/srv/lab".into()),
                container: None,
                disk_name: None,
            }]
        );
        assert_eq!(r.infrastructure.limits.memory_bytes, Some(2 << 30));
        assert_eq!(r.bootstrap_packages, vec!["ca-certificates"]);
        assert_eq!(r.working_directory, "/tmp");
    }

    #[test]
    fn defaults_and_missing_fields() {
        let e = recipe("description: nothing\n").unwrap_err().to_string();
        for needed in [
            "needs `name`",
            "needs `semanticVersion`",
            "needs `parentImage`",
            "needs `components`",
        ] {
            assert!(e.contains(needed), "{needed} in {e}");
        }
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("lots"), None);
    }

    const HEAD: &str =
        "name: d\nsemanticVersion: 1.0.0\nparentImage: bootstrap:debian/bookworm\ncomponents:\n  - componentArn: a\n";

    #[test]
    fn disk_outputs_and_their_settings() {
        use kiln_image::disk::DiskFormat;
        let r = recipe(&format!(
            "{HEAD}outputs: [oci, disk]\ndisk:\n  formats: [qcow2, vmdk]\n  compressed: true\nblockDeviceMappings:\n  - ebs:\n      volumeSize: 4\nadditionalInstanceConfiguration:\n  systemsManagerAgent:\n    uninstallAfterBuild: true\ninfrastructure:\n  memory: 2GiB\n  cpus: 4\n  bootTimeoutSeconds: 120\n  accelerator: tcg\n"
        ))
        .unwrap();
        assert!(r.wants_disk() && r.wants_oci());
        assert_eq!(r.disk.formats, vec![DiskFormat::Qcow2, DiskFormat::Vmdk]);
        assert_eq!(r.disk.compression, kiln_image::disk::DiskCompression::Zlib);
        assert!(r.disk.remove_guest_agent);
        assert_eq!(r.disk.size_bytes, Some(4 << 30));
        assert_eq!(r.infrastructure.vm.memory_mib, 2048);
        assert_eq!(r.infrastructure.vm.cpus, 4);
        assert_eq!(r.infrastructure.vm.boot_timeout_secs, 120);
        assert_eq!(r.infrastructure.vm.accel, kiln_instance::vm::Accel::Tcg);
        // A bootstrap parent of a disk image gets what booting needs.
        let p = r.bootstrap_package_list();
        for needed in DISK_BOOTSTRAP_PACKAGES.iter().skip(1) {
            assert!(p.iter().any(|x| x == needed), "{needed} in {p:?}");
        }
        assert!(p.iter().any(|x| x == "linux-image-cloud-amd64"));
        // Without a disk, nothing is added.
        let plain = recipe(HEAD).unwrap();
        assert!(!plain.wants_disk());
        assert!(plain.bootstrap_package_list().is_empty());
    }

    #[test]
    fn the_vm_builder_makes_disks_only() {
        let r = recipe(&format!("{HEAD}infrastructure:\n  builder: vm\n")).unwrap();
        assert_eq!(r.infrastructure.builder, BuilderKind::Vm);
        assert!(r.wants_disk() && !r.wants_oci());
        let e = recipe(&format!(
            "{HEAD}outputs: [oci]\ninfrastructure:\n  builder: vm\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("makes disk images only"), "{e}");
        let e = recipe(&format!(
            "{HEAD}disk:\n  removeGuestAgent: true\ninfrastructure:\n  builder: vm\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("recipe.yml:7:3") && e.contains("sandbox builder"),
            "{e}"
        );
    }

    #[test]
    fn untrusted_components_names_a_builder() {
        let r = recipe(HEAD).unwrap();
        assert_eq!(r.infrastructure.untrusted_components, None);
        let r = recipe(&format!(
            "{HEAD}infrastructure:\n  untrustedComponents: vm\n"
        ))
        .unwrap();
        assert_eq!(r.infrastructure.untrusted_components, Some(BuilderKind::Vm));
        let e = recipe(&format!(
            "{HEAD}infrastructure:\n  untrustedComponents: qemu\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("recipe.yml:7:24") && e.contains("unknown builder `qemu`"),
            "{e}"
        );
    }

    #[test]
    fn max_boot_seconds_limits_the_test_vm_and_bad_values_are_pointed_at() {
        let r = recipe(&format!(
            "{HEAD}outputs: [disk]\nimageTestsConfiguration:\n  timeoutMinutes: 60\n  maxBootSeconds: 45\n"
        ))
        .unwrap();
        assert_eq!(r.tests.max_boot_seconds, Some(45));
        assert_eq!(r.tests.timeout_minutes, 60);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        // The limit travels with the recipe; one sent without it reads as no limit.
        let back: Recipe = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.tests, r.tests);
        let old: TestsConfig =
            serde_json::from_str(r#"{"enabled":true,"timeoutMinutes":720}"#).unwrap();
        assert_eq!(old, TestsConfig::default());
        assert_eq!(recipe(HEAD).unwrap().tests.max_boot_seconds, None);

        for (value, col) in [("0", 19), ("-5", 19), ("4000", 19), ("fast", 19)] {
            let e = recipe(&format!(
                "{HEAD}outputs: [disk]\nimageTestsConfiguration:\n  maxBootSeconds: {value}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                e.contains(&format!("recipe.yml:8:{col}: error:")),
                "{value}: {e}"
            );
            assert!(e.contains("`maxBootSeconds` must be"), "{value}: {e}");
        }
        let e = recipe(&format!(
            "{HEAD}imageTestsConfiguration:\n  maxBootSecs: 20\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("recipe.yml:7:3") && e.contains("did you mean `maxBootSeconds`?"),
            "{e}"
        );
        // Without a disk there is no boot to limit: said, and the build goes on.
        let r = recipe(&format!(
            "{HEAD}outputs: [oci]\nimageTestsConfiguration:\n  maxBootSeconds: 20\n"
        ))
        .unwrap();
        let w: Vec<String> = r.warnings.iter().map(|d| d.to_string()).collect();
        assert!(
            w.len() == 1 && w[0].contains("makes no disk image"),
            "{w:?}"
        );
    }

    #[test]
    fn bad_disk_settings_are_pointed_at() {
        let e = recipe(&format!(
            "{HEAD}outputs: [oci, disc]\ndisk:\n  formats: [qcow3]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("recipe.yml:6:16: error: unknown output `disc`")
                && e.contains("did you mean `disk`?"),
            "{e}"
        );
        assert!(
            e.contains("recipe.yml:8:13: error: unknown disk format `qcow3`")
                && e.contains("`qcow2`"),
            "{e}"
        );
        let e = recipe(&format!(
            "{HEAD}outputs: [disk]\ndisk:\n  compressed: lz4\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("recipe.yml:8:15: error: `compressed` is true, false, zlib")
                && e.contains("zstd"),
            "{e}"
        );
    }

    #[test]
    fn qcow2_compression_is_chosen() {
        use kiln_image::disk::DiskCompression;
        for (word, want) in [
            ("true", DiskCompression::Zlib),
            ("zlib", DiskCompression::Zlib),
            ("zstd", DiskCompression::Zstd),
            ("false", DiskCompression::None),
        ] {
            let r = recipe(&format!(
                "{HEAD}outputs: [disk]\ndisk:\n  compressed: {word}\n"
            ))
            .unwrap();
            assert_eq!(r.disk.compression, want, "{word}");
        }
    }
}
