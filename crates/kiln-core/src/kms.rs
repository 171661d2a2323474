//! The KMS keys a recipe names (kiln-kms's local KMS): where they are read, and the check
//! before a build is numbered that each names a key the build's account may use now.
//!
//! - a container recipe's (or a recipe file's) `kmsKeyId`: the OCI image is encrypted (ocicrypt
//!   layers) in registry and bucket regions;
//! - an image recipe's `blockDeviceMappings[].ebs.kmsKeyId`: the disk's chunks (read and
//!   checked here; see docs/encryption.md for what is encrypted today).

use std::path::PathBuf;

use kiln_yaml::{Diagnostic, Map, Span};
use serde::{Deserialize, Serialize};

use crate::recipe::Recipe;
use crate::store::Home;

/// A key a recipe names, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    /// What the recipe wrote: an ARN or a key id.
    pub key: String,
    /// The field, as errors name it (`kmsKeyId`, `blockDeviceMappings[0].ebs.kmsKeyId`).
    pub field: String,
    /// Where in the file.
    #[serde(skip)]
    pub span: Option<Span>,
}

/// The keys of a recipe.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecipeKeys {
    /// The container image's (`kmsKeyId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<KeyRef>,
    /// The disk's (`blockDeviceMappings[].ebs.kmsKeyId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<KeyRef>,
}

impl RecipeKeys {
    /// Whether the recipe names no key.
    pub fn is_empty(&self) -> bool {
        self.image.is_none() && self.disk.is_none()
    }
}

fn key_at(r: &mut kiln_yaml::Reader, m: &Map, field: &str) -> Option<KeyRef> {
    let node = m.get("kmsKeyId")?;
    let Some(text) = node.as_text().map(str::trim).filter(|t| !t.is_empty()) else {
        r.error(
            node.span,
            format!("`{field}` is a KMS key: arn:kiln:kms:REGION:ACCOUNT:key/ID or its ID"),
            Some("`kiln key list` shows your keys; `kiln key create` makes one".into()),
        );
        return None;
    };
    if let Err(e) = kiln_kms::KeyArn::parse(text) {
        r.error(node.span, format!("`{field}`: {e}"), None);
        return None;
    }
    Some(KeyRef {
        key: text.to_string(),
        field: field.to_string(),
        span: Some(node.span),
    })
}

/// Reads the recipe's keys from its top-level map.
pub fn read(r: &mut kiln_yaml::Reader, m: &Map) -> RecipeKeys {
    let image = key_at(r, m, "kmsKeyId");
    let disk = m
        .get("blockDeviceMappings")
        .and_then(|n| n.as_seq())
        .and_then(|items| items.first())
        .and_then(|item| item.as_map())
        .and_then(|bm| bm.get("ebs"))
        .and_then(|e| e.as_map())
        .and_then(|em| key_at(r, em, "blockDeviceMappings[0].ebs.kmsKeyId"));
    // A distribution's `amiDistributionConfiguration.kmsKeyId` names the disk's key too. One
    // disk is packed for every region, so every such key must be the same one.
    let mut disk = disk;
    let items = m
        .get("distributions")
        .and_then(|n| n.as_seq())
        .unwrap_or_default();
    for (i, item) in items.iter().enumerate() {
        let Some(ami) = item
            .as_map()
            .and_then(|d| d.get("amiDistributionConfiguration"))
            .and_then(|a| a.as_map())
        else {
            continue;
        };
        let field = format!("distributions[{i}].amiDistributionConfiguration.kmsKeyId");
        let Some(k) = key_at(r, ami, &field) else {
            continue;
        };
        match &disk {
            None => disk = Some(k),
            Some(first) if first.key == k.key => {}
            Some(first) => r.error(
                k.span.unwrap_or_default(),
                format!("`{field}` names another key than `{}`", first.field),
                Some("the disk is packed once for every region: name one KMS key".into()),
            ),
        }
    }
    RecipeKeys { image, disk }
}

/// Where the key store is: `$KILN_HOME` and the configured master key.
#[derive(Debug, Clone, Default)]
pub struct KmsSettings {
    /// The master key file (`kms.masterKey`), `$KILN_HOME/master.key` when `None`.
    pub master_key: Option<PathBuf>,
}

/// The key store of a data directory.
pub fn key_store(home: &Home, settings: &KmsSettings) -> kiln_kms::KeyStore {
    kiln_kms::KeyStore::new(&home.root, settings.master_key.clone())
}

/// Opens every key the recipe names for `account`: an unknown, disabled or not-permitted key
/// (or a master key that does not open it) is an error at the field, rendered with the file,
/// line and column.
pub fn check(
    recipe: &Recipe,
    home: &Home,
    settings: &KmsSettings,
    regions: &crate::regions::RegionMap,
    account: &str,
) -> Result<(), String> {
    let store = key_store(home, settings);
    let mut text = String::new();
    let file = recipe.source.path.display().to_string();
    // A KubeVirt containerDisk is a whole qcow2 that KubeVirt reads as it is: it cannot be
    // encrypted, and sending it plain would undo the disk's key.
    if let Some(k) = &recipe.keys.disk {
        for d in &recipe.distributions {
            let takes = regions
                .get(&d.region)
                .is_some_and(crate::regions::RegionPlace::takes_container_disks);
            if takes {
                let diag = Diagnostic::error(
                    k.span,
                    format!(
                        "`{}`: region `{}` takes KubeVirt containerDisks, which cannot be \
                         encrypted; send the encrypted disk to regions without \
                         `containerDisk: true`",
                        k.field, d.region
                    ),
                );
                text.push_str(&diag.render(&file, &recipe.source.text).to_string());
            }
        }
    }
    for k in [&recipe.keys.image, &recipe.keys.disk]
        .into_iter()
        .flatten()
    {
        if let Err(e) = store.open(&k.key, account) {
            let d = Diagnostic::error(k.span, format!("`{}`: {e}", k.field));
            text.push_str(
                &d.render(
                    &recipe.source.path.display().to_string(),
                    &recipe.source.text,
                )
                .to_string(),
            );
        }
    }
    if text.is_empty() {
        Ok(())
    } else {
        Err(text)
    }
}

/// The keys of `recipe` that `account` may not use now, as diagnostics at their fields: what a
/// CreateContainerRecipe or CreateImageRecipe request is refused with
/// (InvalidParameterValueException). The material is not opened (the request path does not
/// know a configured master key); the build opens it before it is numbered.
pub fn unusable(recipe: &Recipe, home: &Home, account: &str) -> Vec<Diagnostic> {
    let store = kiln_kms::KeyStore::new(&home.root, None);
    [&recipe.keys.image, &recipe.keys.disk]
        .into_iter()
        .flatten()
        .filter_map(|k| {
            store
                .check_usable(&k.key, account)
                .err()
                .map(|e| Diagnostic::error(k.span, format!("`{}`: {e}", k.field)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::{parse, RecipeSource};
    use crate::regions::{RegionMap, RegionPlace};

    fn recipe(extra: &str) -> Result<Recipe, crate::recipe::RecipeErrors> {
        static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
        let dir = DIR.get_or_init(|| {
            let d = tempfile::tempdir().unwrap();
            std::fs::write(
                d.path().join("c.yaml"),
                "name: c\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: S\n        action: CreateFile\n        inputs:\n          - path: /x\n            content: x\n",
            )
            .unwrap();
            d
        });
        parse(RecipeSource {
            path: dir.path().join("r.yml"),
            text: format!(
                "name: r\nsemanticVersion: 1.0.0\nparentImage: bootstrap:debian/bookworm\ncomponents:\n  - path: c.yaml\n{extra}"
            ),
        })
    }

    #[test]
    fn keys_are_read_where_image_builder_puts_them() {
        let r = recipe(
            "kmsKeyId: 0f8e2c1a-6a55-4f5b-9d3e-1b2c3d4e5f60\nblockDeviceMappings:\n  - ebs: {encrypted: true, kmsKeyId: arn:kiln:kms:local:000000000000:key/0f8e2c1a-6a55-4f5b-9d3e-1b2c3d4e5f61}\n",
        )
        .unwrap();
        assert_eq!(r.keys.image.as_ref().unwrap().field, "kmsKeyId");
        assert_eq!(
            r.keys.disk.as_ref().unwrap().key,
            "arn:kiln:kms:local:000000000000:key/0f8e2c1a-6a55-4f5b-9d3e-1b2c3d4e5f61"
        );
        let k = "arn:kiln:kms:local:000000000000:key/0f8e2c1a-6a55-4f5b-9d3e-1b2c3d4e5f62";
        let r = recipe(&format!(
            "distributions:\n  - region: a\n    amiDistributionConfiguration: {{kmsKeyId: {k}}}\n  - region: b\n    amiDistributionConfiguration: {{kmsKeyId: {k}}}\n"
        ))
        .unwrap();
        assert_eq!(r.keys.disk.as_ref().unwrap().key, k);
        let e = recipe(&format!(
            "blockDeviceMappings:\n  - ebs: {{kmsKeyId: 0f8e2c1a-6a55-4f5b-9d3e-1b2c3d4e5f60}}\ndistributions:\n  - region: a\n    amiDistributionConfiguration: {{kmsKeyId: {k}}}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("names another key") && e.contains(":10:"), "{e}");
        let e = recipe("kmsKeyId: alias/golden\n").unwrap_err().to_string();
        assert!(
            e.contains("r.yml:6:11") && e.contains("not a KMS key reference"),
            "{e}"
        );
    }

    #[test]
    fn unusable_keys_and_container_disk_regions_are_refused_at_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let store = key_store(&home, &KmsSettings::default());
        let mine = store.create("000000000000", "").unwrap();
        let theirs = store.create("111111111111", "").unwrap();
        let ok = recipe(&format!("kmsKeyId: {}\n", mine.arn)).unwrap();
        let regions = RegionMap::default();
        check(
            &ok,
            &home,
            &KmsSettings::default(),
            &regions,
            "000000000000",
        )
        .unwrap();
        assert!(unusable(&ok, &home, "000000000000").is_empty());

        let other = recipe(&format!("kmsKeyId: {}\n", theirs.arn)).unwrap();
        let e = check(
            &other,
            &home,
            &KmsSettings::default(),
            &regions,
            "000000000000",
        )
        .unwrap_err();
        assert!(e.contains("r.yml:6:11") && e.contains("may not use"), "{e}");
        assert_eq!(unusable(&other, &home, "000000000000").len(), 1);

        let disk = recipe(&format!(
            "blockDeviceMappings:\n  - ebs: {{kmsKeyId: {}}}\ndistributions:\n  - region: kube\n",
            mine.arn
        ))
        .unwrap();
        let kube = RegionMap {
            regions: vec![(
                "kube".into(),
                RegionPlace::Registry {
                    host: "127.0.0.1:5000".into(),
                    namespace: None,
                    container_disk: true,
                },
            )],
        };
        let e = check(&disk, &home, &KmsSettings::default(), &kube, "000000000000").unwrap_err();
        assert!(e.contains("containerDisks") && e.contains("`kube`"), "{e}");
    }
}
