//! kiln's configuration: `$KILN_HOME/config.yaml` (or the file named by `KILN_CONFIG`), with
//! the standard AWS environment variables taking precedence for S3.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kiln_core::trust::TrustPolicy;
use kiln_s3::{Credentials, S3Config};
use kiln_yaml::Node;

/// kiln's data directory: `$KILN_HOME`, else `/var/lib/kiln` for root, else
/// `~/.local/share/kiln`.
pub fn kiln_home() -> PathBuf {
    if let Some(h) = std::env::var_os("KILN_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    if kiln_instance::is_root() {
        return PathBuf::from("/var/lib/kiln");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/kiln")
}

/// Default bound of the layer store and step cache.
pub const DEFAULT_CACHE_MAX: u64 = 20 << 30;

/// Settings kiln reads from its configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// S3-compatible object store for S3Download, S3Upload and `s3://` documents.
    pub s3: Option<S3Config>,
    /// Most bytes the layer store and step cache may use (`cache.maxSize`).
    pub cache_max_bytes: u64,
    /// The region of the shared step cache (`cache.region`).
    pub shared_cache: Option<String>,
    /// Registry credentials (`registries: [{host, username, password, insecureHttp}]`).
    pub registries: Vec<kiln_core::parent::RegistryCredentials>,
    /// `kiln serve`'s settings (`serve:`).
    pub serve: ServeConfig,
    /// Region names that are registries or buckets (`regions:`).
    pub regions: kiln_core::regions::RegionMap,
    /// Whose components are trusted, and where the others run (`trust:`).
    pub trust: TrustPolicy,
    /// The scanner images are scanned with when asked (`scanning:`).
    pub scanning: Option<kiln_core::scan::ScanSettings>,
    /// The KMS master key file (`kms: {masterKey: PATH}`); `$KILN_HOME/master.key` if unset.
    pub kms_master_key: Option<PathBuf>,
    /// Where resources and records are kept (`store: postgres://...`; the embedded SQLite
    /// file by default).
    pub store: kiln_core::state::Location,
}

/// `serve: {listen, region, concurrency, requestsPerSecond, burst, scheduleEverySeconds,
/// catchUpHours}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Where the API listens (loopback unless configured).
    pub listen: String,
    /// The region name requests are signed for and ARNs carry.
    pub region: String,
    /// Builds this server runs at once; the rest wait PENDING in the queue (0: only `kiln
    /// worker` processes run builds).
    pub concurrency: u32,
    /// Requests per second per account (0: no limit).
    pub requests_per_second: u32,
    /// Requests an account may send at once above that rate.
    pub burst: u32,
    /// How often the scheduler looks for due runs.
    pub schedule_every_seconds: u32,
    /// How long after its instant a run missed while kiln was down still runs.
    pub catch_up_hours: u32,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: "127.0.0.1:8479".into(),
            region: kiln_core::principal::LOCAL_REGION.into(),
            concurrency: 2,
            requests_per_second: 50,
            burst: 100,
            schedule_every_seconds: 5,
            catch_up_hours: 24,
        }
    }
}

impl Config {
    /// How kiln reaches the configured registries and buckets (distribution, take-backs,
    /// `kiln disk pull`).
    pub fn access(&self) -> kiln_dist::RegistryAccess {
        kiln_core::parent::registry_access(&self.registries).with_s3(self.s3.clone())
    }

    /// How builds run on this host by the configuration (cache bound, registries, regions,
    /// trust, scanning, KMS); the command's own flags are set on top.
    pub fn build_options(&self) -> kiln_core::build::BuildOptions {
        kiln_core::build::BuildOptions {
            cache_max_bytes: self.cache_max_bytes,
            shared_cache: self.shared_cache.clone(),
            registries: self.registries.clone(),
            s3: self.s3.clone(),
            regions: self.regions.clone(),
            trust: self.trust.clone(),
            scanning: self.scanning.clone(),
            kms: kiln_core::kms::KmsSettings {
                master_key: self.kms_master_key.clone(),
            },
            ..kiln_core::build::BuildOptions::default()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            s3: None,
            cache_max_bytes: DEFAULT_CACHE_MAX,
            shared_cache: None,
            registries: Vec::new(),
            serve: ServeConfig::default(),
            regions: Default::default(),
            trust: TrustPolicy::default(),
            store: kiln_core::state::Location::default(),
            scanning: None,
            kms_master_key: None,
        }
    }
}

fn text(map: &kiln_yaml::Map, key: &str, file: &str, src: &str) -> Result<Option<String>> {
    match map.get(key) {
        None => Ok(None),
        Some(n) => match n.as_text() {
            Some(t) => Ok(Some(t.to_string())),
            None => bail!(
                "{}",
                kiln_yaml::Diagnostic::error(Some(n.span), format!("`{key}` must be a string"))
                    .render(file, src)
            ),
        },
    }
}

/// Fails with every diagnostic a reader of `file` collected, rendered at its place, when one
/// of them is an error.
pub fn fail_on_errors(r: &kiln_yaml::Reader, file: &str, src: &str) -> Result<()> {
    if r.has_errors() {
        let text: String = r
            .diagnostics
            .iter()
            .map(|d| d.render(file, src).to_string())
            .collect();
        bail!("{text}");
    }
    Ok(())
}

/// Loads the configuration file if there is one, then applies the AWS environment variables.
pub fn load() -> Result<Config> {
    let path = std::env::var_os("KILN_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| kiln_home().join("config.yaml"));
    let mut config = Config::default();
    if path.exists() {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(&path).with_context(|| format!("reading {file}"))?;
        let parsed =
            kiln_yaml::parse(&src).map_err(|d| anyhow::anyhow!("{}", d.render(&file, &src)))?;
        let root: &Node = &parsed.root;
        if let Some(regs) = root.as_map().and_then(|m| m.get("registries")) {
            let mut r = kiln_yaml::Reader::new();
            for item in r.list(regs, "`registries`").unwrap_or_default() {
                let Some(m) = r.map(item, "a registry") else {
                    continue;
                };
                r.known_keys(
                    m,
                    &["host", "username", "password", "insecureHttp"],
                    "a registry",
                );
                let host = r.required_string(m, "host", item.span, "a registry");
                let username = r.string(m, "username").unwrap_or_default();
                let password = r.string(m, "password").unwrap_or_default();
                let insecure_http = r.boolean(m, "insecureHttp").unwrap_or(false);
                if let Some(host) = host {
                    config
                        .registries
                        .push(kiln_core::parent::RegistryCredentials {
                            host,
                            username,
                            password,
                            insecure_http,
                        });
                }
            }
            fail_on_errors(&r, &file, &src)?;
        }
        if let Some(regions) = root.as_map().and_then(|m| m.get("regions")) {
            let mut r = kiln_yaml::Reader::new();
            config.regions = crate::config_regions::parse(&mut r, regions, &mut config.registries);
            fail_on_errors(&r, &file, &src)?;
        }
        if let Some(serve) = root.as_map().and_then(|m| m.get("serve")) {
            config.serve = serve_config(serve, &file, &src)?;
        }
        if let Some(trust) = root.as_map().and_then(|m| m.get("trust")) {
            config.trust = trust_config(trust, &file, &src)?;
        }
        if let Some(scanning) = root.as_map().and_then(|m| m.get("scanning")) {
            config.scanning = Some(crate::config_scan::parse(scanning, &file, &src)?);
        }
        if let Some(kms) = root.as_map().and_then(|m| m.get("kms")) {
            config.kms_master_key = crate::key::master_key_config(kms, &file, &src)?;
        }
        if let Some(store) = root.as_map().and_then(|m| m.get("store")) {
            config.store = store_location(store, &file, &src)?;
        }
        if let Some(cache) = root.as_map().and_then(|m| m.get("cache")) {
            let bad = |what: &str| {
                anyhow::anyhow!(
                    "{}",
                    kiln_yaml::Diagnostic::error(Some(cache.span), what).render(&file, &src)
                )
            };
            let Some(m) = cache.as_map() else {
                return Err(bad(
                    "`cache` takes `maxSize` (a size such as 20GiB) and `region` (the shared step cache's region)",
                ));
            };
            if let Some(size) = m.get("maxSize") {
                match size.as_text().and_then(kiln_core::recipe::parse_size) {
                    Some(b) => config.cache_max_bytes = b,
                    None => return Err(bad("`cache.maxSize` is a size such as 20GiB")),
                }
            }
            if let Some(region) = m.get("region") {
                let Some(name) = region.as_text() else {
                    return Err(bad("`cache.region` names a region of `regions:`"));
                };
                if config.regions.get(name).is_none() {
                    return Err(anyhow::anyhow!(
                        "{}",
                        kiln_yaml::Diagnostic::error(
                            Some(region.span),
                            format!("`cache.region: {name}` names no region of `regions:`: add it there (a registry or a bucket), or remove it")
                        )
                        .render(&file, &src)
                    ));
                }
                config.shared_cache = Some(name.to_owned());
            }
        }
        if let Some(s3) = root.as_map().and_then(|m| m.get("s3")) {
            let Some(m) = s3.as_map() else {
                bail!("{file}: `s3` must be a mapping with `endpoint`, `region`, `accessKeyId`, `secretAccessKey`");
            };
            let endpoint = text(m, "endpoint", &file, &src)?;
            let credentials = match (
                text(m, "accessKeyId", &file, &src)?,
                text(m, "secretAccessKey", &file, &src)?,
            ) {
                (Some(a), Some(s)) => Some(Credentials {
                    access_key_id: a,
                    secret_access_key: s,
                    session_token: text(m, "sessionToken", &file, &src)?,
                }),
                _ => None,
            };
            config.s3 = Some(S3Config {
                path_style: m
                    .get("pathStyle")
                    .and_then(|n| n.as_scalar())
                    .and_then(|s| s.as_bool())
                    .unwrap_or(endpoint.is_some()),
                endpoint,
                region: text(m, "region", &file, &src)?.unwrap_or_else(|| "us-east-1".into()),
                credentials,
            });
        }
    }
    crate::config_regions::docker_credentials(&mut config.registries);
    let env = S3Config::from_env();
    config.s3 = match config.s3.take() {
        None if env.endpoint.is_some() || env.credentials.is_some() => Some(env),
        None => None,
        Some(mut file) => {
            if env.endpoint.is_some() {
                file.endpoint = env.endpoint;
                file.path_style = true;
            }
            if env.credentials.is_some() {
                file.credentials = env.credentials;
            }
            if std::env::var_os("AWS_REGION").is_some()
                || std::env::var_os("AWS_DEFAULT_REGION").is_some()
            {
                file.region = env.region;
            }
            Some(file)
        }
    };
    Ok(config)
}

/// `store: postgres://USER@HOST:PORT/DATABASE` (the password in the URL or in `PGPASSWORD`).
fn store_location(node: &Node, file: &str, src: &str) -> Result<kiln_core::state::Location> {
    match node.as_text() {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(kiln_core::state::Location::Postgres(url.to_owned()))
        }
        _ => bail!(
            "{}",
            kiln_yaml::Diagnostic::error(
                Some(node.span),
                "`store` is a PostgreSQL URL such as postgres://kiln@db.example.net:5432/kiln \
                 (the password in the URL or in PGPASSWORD); leave it out for the embedded \
                 SQLite store in the data directory"
            )
            .render(file, src)
        ),
    }
}

/// Opens the store `cfg` names, for the data directory `home`.
pub async fn open_store(
    home: &kiln_core::store::Home,
    cfg: &Config,
) -> Result<kiln_core::state::Store> {
    Ok(kiln_core::state::Store::open_at(home, &cfg.store).await?)
}

fn serve_config(node: &Node, file: &str, src: &str) -> Result<ServeConfig> {
    let mut c = ServeConfig::default();
    let mut r = kiln_yaml::Reader::new();
    if let Some(m) = r.map(node, "`serve`") {
        r.known_keys(
            m,
            &[
                "listen",
                "region",
                "concurrency",
                "requestsPerSecond",
                "burst",
                "scheduleEverySeconds",
                "catchUpHours",
            ],
            "`serve`",
        );
        if let Some(v) = r.string(m, "listen") {
            c.listen = v;
        }
        if let Some(v) = r.string(m, "region") {
            c.region = v;
        }
        let number = |r: &mut kiln_yaml::Reader, key: &str, into: &mut u32| {
            if let Some(n) = m.get(key) {
                match n.as_text().and_then(|t| t.parse::<u32>().ok()) {
                    Some(v) => *into = v,
                    None => r.error(n.span, format!("`{key}` must be a whole number"), None),
                }
            }
        };
        number(&mut r, "concurrency", &mut c.concurrency);
        number(&mut r, "requestsPerSecond", &mut c.requests_per_second);
        number(&mut r, "burst", &mut c.burst);
        number(
            &mut r,
            "scheduleEverySeconds",
            &mut c.schedule_every_seconds,
        );
        number(&mut r, "catchUpHours", &mut c.catch_up_hours);
        if let Some(n) = m.get("scheduleEverySeconds") {
            if c.schedule_every_seconds == 0 {
                r.error(n.span, "`scheduleEverySeconds` must be at least 1", None);
            }
        }
    }
    fail_on_errors(&r, file, src)?;
    Ok(c)
}

/// `trust: {operatorAccounts: [ACCOUNT_ID, ...], untrustedComponents: vm | sandbox}`. A list of
/// operator accounts replaces the default one (the local account, which the CLI acts as).
fn trust_config(node: &Node, file: &str, src: &str) -> Result<TrustPolicy> {
    let mut t = TrustPolicy::default();
    let mut r = kiln_yaml::Reader::new();
    if let Some(m) = r.map(node, "`trust`") {
        r.known_keys(m, &["operatorAccounts", "untrustedComponents"], "`trust`");
        if let Some(list) = m.get("operatorAccounts") {
            let items = r.list(list, "`operatorAccounts`").unwrap_or_default();
            t.operator_accounts.clear();
            for item in items {
                match item.as_text() {
                    Some(id) if id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit()) => {
                        if !t.operator_accounts.iter().any(|a| a == id) {
                            t.operator_accounts.push(id.to_string());
                        }
                    }
                    _ => r.error(
                        item.span,
                        "items of `operatorAccounts` are account ids: 12 digits",
                        Some(format!(
                            "`kiln account list` shows them; the local account (the CLI's) is {}",
                            kiln_core::principal::LOCAL_ACCOUNT
                        )),
                    ),
                }
            }
        }
        if let Some(word) = r.string(m, "untrustedComponents") {
            match word.parse() {
                Ok(kind) => t.untrusted_components = kind,
                Err(_) => {
                    if let Some(n) = m.get("untrustedComponents") {
                        r.error(
                            n.span,
                            format!("unknown builder `{word}` for `untrustedComponents`"),
                            Some("use `vm` (the default: components no operator account owns run in VMs) or `sandbox`".into()),
                        );
                    }
                }
            }
        }
    }
    fail_on_errors(&r, file, src)?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::recipe::BuilderKind;

    fn trust(text: &str) -> Result<TrustPolicy> {
        let parsed = kiln_yaml::parse(text).map_err(|d| anyhow::anyhow!("{d}"))?;
        let node = parsed
            .root
            .as_map()
            .and_then(|m| m.get("trust"))
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no trust"))?;
        trust_config(&node, "config.yaml", text)
    }

    #[test]
    fn trust_names_operator_accounts_and_where_the_rest_run() {
        assert_eq!(Config::default().trust, TrustPolicy::default());
        let t = trust("trust:\n  operatorAccounts: [000000000000, \"123456789012\"]\n  untrustedComponents: sandbox\n").unwrap();
        assert_eq!(t.operator_accounts, ["000000000000", "123456789012"]);
        assert_eq!(t.untrusted_components, BuilderKind::Sandbox);
        // A list replaces the default: the local account is then untrusted too.
        let t = trust("trust:\n  operatorAccounts: [\"123456789012\"]\n").unwrap();
        assert!(!t.is_operator(kiln_core::principal::LOCAL_ACCOUNT));
        assert_eq!(t.untrusted_components, BuilderKind::Vm);
    }

    #[test]
    fn trust_errors_point_at_the_file_line_and_column() {
        let e = trust(
            "trust:\n  operatorAccounts: [12345]\n  untrustedComponents: chroot\n  operators: []\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("config.yaml:2:22") && e.contains("12 digits"),
            "{e}"
        );
        assert!(
            e.contains("config.yaml:3:24") && e.contains("`chroot`"),
            "{e}"
        );
        assert!(
            e.contains("config.yaml:4:3") && e.contains("operators"),
            "{e}"
        );
    }
}
