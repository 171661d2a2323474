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
    account: &str,
) -> Result<(), String> {
    let store = key_store(home, settings);
    let mut text = String::new();
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
