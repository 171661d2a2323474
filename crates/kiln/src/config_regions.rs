//! `regions:` in kiln's configuration, and registry credentials from the files container
//! tools keep them in (`auth.json`, Docker's `config.json`).

use kiln_core::parent::RegistryCredentials;
use kiln_core::regions::{RegionMap, RegionPlace};
use kiln_yaml::{Node, Reader};

const KEYS: [&str; 8] = [
    "registry",
    "namespace",
    "insecure",
    "username",
    "password",
    "containerDisk",
    "s3",
    "tokenService",
];

/// Reads `regions: {NAME: {registry: HOST, namespace: NS, insecure: BOOL, username, password,
/// containerDisk: BOOL} | {s3: s3://BUCKET/PREFIX}}`. Credentials and `insecure` of a registry
/// region join `registries` unless the host is configured there already.
pub fn parse(r: &mut Reader, node: &Node, registries: &mut Vec<RegistryCredentials>) -> RegionMap {
    let mut map = RegionMap::default();
    let Some(m) = r.map(node, "`regions`") else {
        return map;
    };
    for (key, value) in &m.entries {
        let Some(name) = key.as_text().map(str::to_string) else {
            r.error(key.span, "a region's name must be a string", None);
            continue;
        };
        if !kiln_core::recipe::is_name(&name) {
            r.error(
                key.span,
                format!("`{name}` is not a valid region name"),
                None,
            );
            continue;
        }
        let what = format!("region `{name}`");
        let Some(rm) = r.map(value, &what) else {
            continue;
        };
        r.known_keys(rm, &KEYS, &what);
        let place = match (rm.get("registry"), rm.get("s3")) {
            (Some(_), Some(n)) => {
                r.error(
                    n.span,
                    format!("{what} has both `registry` and `s3`: a region is one place"),
                    None,
                );
                continue;
            }
            (None, None) => {
                r.error(
                    value.span,
                    format!(
                        "{what} needs `registry: HOST[:PORT]` or `s3: s3://BUCKET/PREFIX` (a \
                         region not listed here is a folder)"
                    ),
                    None,
                );
                continue;
            }
            (Some(n), None) => match registry(r, rm, n, &what, registries) {
                Some(p) => p,
                None => continue,
            },
            (None, Some(n)) => match n.as_text().map(kiln_s3::parse_url) {
                Some(Ok((bucket, prefix))) => RegionPlace::Bucket {
                    bucket,
                    prefix: prefix.trim_matches('/').to_string(),
                },
                _ => {
                    r.error(
                        n.span,
                        "`s3` is a bucket and key prefix: s3://BUCKET/PREFIX",
                        None,
                    );
                    continue;
                }
            },
        };
        map.regions.push((name, place));
    }
    map
}

fn registry(
    r: &mut Reader,
    rm: &kiln_yaml::Map,
    n: &Node,
    what: &str,
    registries: &mut Vec<RegistryCredentials>,
) -> Option<RegionPlace> {
    let host = match n.as_text() {
        Some(h) if !h.is_empty() && !h.contains('/') && !h.contains("://") => h.to_string(),
        _ => {
            r.error(
                n.span,
                format!(
                    "{what}: `registry` is HOST[:PORT], like registry.example:5000; the path \
                     below it is `namespace`"
                ),
                None,
            );
            return None;
        }
    };
    let namespace = r
        .string(rm, "namespace")
        .map(|s| s.trim_matches('/').to_string())
        .filter(|s| !s.is_empty());
    if let (Some(ns), Some(node)) = (&namespace, rm.get("namespace")) {
        if !kiln_core::recipe::is_repository(ns) {
            r.error(
                node.span,
                "a namespace is lowercase letters, digits and `._-` between slashes",
                None,
            );
        }
    }
    let insecure = r.boolean(rm, "insecure").unwrap_or(false);
    let username = r.string(rm, "username").unwrap_or_default();
    let password = r.string(rm, "password").unwrap_or_default();
    // The registry asks this kiln for tokens: kiln pushes with its own service credential.
    if r.boolean(rm, "tokenService").unwrap_or(false) {
        let home = kiln_core::store::Home::new(crate::config::kiln_home());
        match kiln_core::registry_auth::keys::TokenKey::load_or_create(&home) {
            Ok(key) => {
                registries.retain(|c| c.host != host);
                registries.push(RegistryCredentials {
                    host: host.clone(),
                    username: kiln_core::registry_auth::SERVICE_USER.to_string(),
                    password: key.service_password(),
                    insecure_http: insecure,
                });
            }
            Err(e) => {
                let at = rm.get("tokenService").map(|n| n.span).unwrap_or(n.span);
                r.error(at, format!("{what}: `tokenService`: {e}"), None);
            }
        }
    } else if !registries.iter().any(|c| c.host == host) && (insecure || !username.is_empty()) {
        registries.push(RegistryCredentials {
            host: host.clone(),
            username,
            password,
            insecure_http: insecure,
        });
    }
    Some(RegionPlace::Registry {
        host,
        namespace,
        container_disk: r.boolean(rm, "containerDisk").unwrap_or(false),
    })
}

/// Adds the credentials of hosts kiln's configuration does not name from the files podman,
/// skopeo and Docker log in to: `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
/// `~/.config/containers/auth.json`, `~/.docker/config.json` (`auths.HOST.auth`, base64 of
/// `USER:PASSWORD`). A file that cannot be read is skipped, as those tools do.
pub fn docker_credentials(registries: &mut Vec<RegistryCredentials>) {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let mut files = Vec::new();
    if let Some(f) = var("REGISTRY_AUTH_FILE") {
        files.push(std::path::PathBuf::from(f));
    }
    if let Some(d) = var("XDG_RUNTIME_DIR") {
        files.push(std::path::PathBuf::from(d).join("containers/auth.json"));
    }
    if let Some(h) = var("HOME") {
        let h = std::path::PathBuf::from(h);
        files.push(h.join(".config/containers/auth.json"));
        files.push(h.join(".docker/config.json"));
    }
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        for (host, username, password) in auths(&bytes) {
            match registries.iter_mut().find(|c| c.host == host) {
                // A host configured only for plain HTTP takes the file's credentials.
                Some(c) if c.username.is_empty() => {
                    c.username = username;
                    c.password = password;
                }
                Some(_) => {}
                None => registries.push(RegistryCredentials {
                    host,
                    username,
                    password,
                    insecure_http: false,
                }),
            }
        }
    }
}

/// The `auths` of an auth file as (host, user, password).
fn auths(bytes: &[u8]) -> Vec<(String, String, String)> {
    use base64::Engine as _;
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Vec::new();
    };
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
        return Vec::new();
    };
    auths
        .iter()
        .filter_map(|(host, entry)| {
            let encoded = entry.get("auth")?.as_str()?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (user, password) = text.split_once(':')?;
            // Docker writes Docker Hub as a URL; others as HOST[:PORT].
            let host = host
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .split('/')
                .next()?
                .to_string();
            Some((host, user.to_string(), password.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_files_give_host_user_and_password() {
        let file = br#"{"auths": {"127.0.0.1:5001": {"auth": "a2lsbjpzZWNyZXQ="},
            "https://index.docker.io/v1/": {"auth": "dTpw"}, "bad": {"auth": "%%%"}}}"#;
        let mut got = auths(file);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("127.0.0.1:5001".into(), "kiln".into(), "secret".into()),
                ("index.docker.io".into(), "u".into(), "p".into()),
            ]
        );
    }

    #[test]
    fn credentials_keep_the_password_out_of_debug_output() {
        let (_, creds, errors) = parsed("r: {registry: h, username: u, password: hunter2}\n");
        assert!(errors.is_empty(), "{errors:?}");
        let shown = format!("{:?}", creds[0]);
        assert!(
            shown.contains("\"u\"") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    fn parsed(src: &str) -> (RegionMap, Vec<RegistryCredentials>, Vec<String>) {
        let doc = kiln_yaml::parse(src).unwrap();
        let mut r = Reader::new();
        let mut creds = Vec::new();
        let map = parse(&mut r, &doc.root, &mut creds);
        let errors = r
            .diagnostics
            .iter()
            .map(|d| d.render("c.yaml", src).to_string())
            .collect();
        (map, creds, errors)
    }

    #[test]
    fn regions_are_registries_or_buckets() {
        let (map, creds, errors) = parsed(
            "eu-west: {registry: \"registry.example:5000\", namespace: golden}\n\
             us-east: {registry: \"127.0.0.1:5001\", namespace: golden, insecure: true, containerDisk: true}\n\
             archive: {s3: \"s3://kiln-images/prod\"}\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(map.regions.len(), 3);
        assert_eq!(
            map.get("archive"),
            Some(&RegionPlace::Bucket {
                bucket: "kiln-images".into(),
                prefix: "prod".into()
            })
        );
        assert_eq!(
            map.get("us-east").map(RegionPlace::describe).as_deref(),
            Some("docker://127.0.0.1:5001/golden")
        );
        assert!(map.get("local").is_none());
        assert_eq!(creds.len(), 1);
        assert!(creds[0].insecure_http);
    }

    #[test]
    fn bad_regions_point_at_the_key() {
        let (_, _, errors) = parsed(
            "a: {registry: \"http://x:5000/ns\"}\nb: {s3: \"bucket\"}\nc: {registry: h, s3: \"s3://b\"}\nd: {}\ne: {registry: h, nmespace: x}\n",
        );
        let all = errors.join("\n");
        assert!(all.contains("c.yaml:1:"), "{all}");
        assert!(all.contains("`registry` is HOST[:PORT]"), "{all}");
        assert!(
            all.contains("c.yaml:2:") && all.contains("s3://BUCKET/PREFIX"),
            "{all}"
        );
        assert!(all.contains("both `registry` and `s3`"), "{all}");
        assert!(all.contains("needs `registry: HOST[:PORT]`"), "{all}");
        assert!(all.contains("nmespace"), "{all}");
    }
}
