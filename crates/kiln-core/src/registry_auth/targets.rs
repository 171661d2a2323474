//! `amiDistributionConfiguration.targetAccountIds`: the image is also placed in each target
//! account's own repository of a registry region, `BASE/ACCOUNT/NAME` (and
//! `BASE/ACCOUNT/NAME/disk`, ...), by cross-repository blob mounts from the image's own
//! repository and a manifest PUT per tag: no blob bytes are sent. The copies are outputs of
//! the image owned by the target account (the record's `accountCopies`), which the token
//! service lets that account pull.

use kiln_dist::Output;
use kiln_yaml::{Node, Reader};
use serde::{Deserialize, Serialize};

use crate::recipe::Distribution;
use crate::regions::{RegionMap, RegionPlace};

/// One copy of an image's output placed for another account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountCopy {
    /// The account it was placed for.
    pub account: String,
    /// The output's location (`docker://HOST/BASE/ACCOUNT/NAME`).
    pub location: String,
}

/// Reads `targetAccountIds` of an `amiDistributionConfiguration` (12-digit account ids).
pub fn target_accounts(r: &mut Reader, node: &Node) -> Vec<String> {
    let Some(m) = node.as_map() else {
        return Vec::new();
    };
    let Some(list) = m.get("targetAccountIds") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in r.list(list, "`targetAccountIds`").unwrap_or_default() {
        match item.as_text() {
            Some(id) if id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit()) => {
                if !out.iter().any(|o| o == id) {
                    out.push(id.to_string());
                }
            }
            _ => r.error(
                item.span,
                "`targetAccountIds` lists 12-digit account ids, like \"222233334444\"",
                None,
            ),
        }
    }
    out
}

/// Refuses target accounts in a region that is not a registry, before anything is written.
pub fn check(distributions: &[Distribution], regions: &RegionMap) -> Result<(), String> {
    for d in distributions
        .iter()
        .filter(|d| !d.target_accounts.is_empty())
    {
        if !matches!(regions.get(&d.region), Some(RegionPlace::Registry { .. })) {
            return Err(format!(
                "region `{}`: `targetAccountIds` copies images into other accounts' repositories \
                 of a registry region; `{}` is not one (see `regions:` in kiln's configuration)",
                d.region, d.region
            ));
        }
    }
    Ok(())
}

/// Places every registry output of `outputs` in the target accounts' repositories of its
/// region: the new outputs and who owns each.
pub async fn copy(
    distributions: &[Distribution],
    regions: &RegionMap,
    access: &kiln_dist::RegistryAccess,
    outputs: &[Output],
    pieces: &[kiln_dist::pieces::Piece],
) -> Result<(Vec<Output>, Vec<AccountCopy>), String> {
    let mut copies = Vec::new();
    let mut owners = Vec::new();
    for d in distributions
        .iter()
        .filter(|d| !d.target_accounts.is_empty())
    {
        let Some(RegionPlace::Registry {
            host, namespace, ..
        }) = regions.get(&d.region)
        else {
            continue;
        };
        let place =
            kiln_dist::RegistryPlace::new(host, namespace.as_deref(), access.options_for(host));
        let base = match namespace {
            Some(ns) => format!("docker://{host}/{ns}/"),
            None => format!("docker://{host}/"),
        };
        for o in outputs.iter().filter(|o| o.region == d.region) {
            let Some(rel) = o.location.strip_prefix(&base) else {
                continue;
            };
            for account in &d.target_accounts {
                let out = copy_one(&place, rel, account, o, pieces)
                    .await
                    .map_err(|e| {
                        format!(
                            "region `{}`: placing {} for account {account}: {e}",
                            d.region, o.location
                        )
                    })?;
                owners.push(AccountCopy {
                    account: account.clone(),
                    location: out.location.clone(),
                });
                copies.push(out);
            }
        }
    }
    Ok((copies, owners))
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    size: u64,
}

#[derive(Deserialize)]
struct Manifest {
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

async fn copy_one(
    place: &kiln_dist::RegistryPlace,
    rel: &str,
    account: &str,
    o: &Output,
    pieces: &[kiln_dist::pieces::Piece],
) -> Result<Output, String> {
    use kiln_dist::Place as _;
    let src = place.repo(rel).map_err(|e| e.to_string())?;
    let dest = place
        .repo(&format!("{account}/{rel}"))
        .map_err(|e| e.to_string())?;
    let fetched = src
        .manifest(&o.manifest_digest)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} has no manifest {}", src.location(), o.manifest_digest))?;
    let manifest: Manifest = serde_json::from_slice(&fetched.bytes)
        .map_err(|e| format!("its manifest is not an image manifest ({e})"))?;
    let from: Vec<String> = src.mount_name().into_iter().collect();
    let mut sent = 0;
    for blob in manifest.config.iter().chain(&manifest.layers) {
        // A mount the registry declines is uploaded from the build's own file, when it has it.
        let path = pieces
            .iter()
            .flat_map(|p| &p.blobs)
            .find(|b| b.digest == blob.digest)
            .map(|b| b.path.clone())
            .unwrap_or_else(|| std::path::PathBuf::from("/nonexistent/kiln-blob"));
        let moved = dest
            .put_blob(&blob.digest, blob.size, &path, &from)
            .await
            .map_err(|e| e.to_string())?;
        sent += moved.bytes();
    }
    let tags = if o.tags.is_empty() {
        vec![o.tag.clone()]
    } else {
        o.tags.clone()
    };
    for tag in &tags {
        dest.put_manifest(Some(tag), &fetched.bytes, &fetched.media_type)
            .await
            .map_err(|e| e.to_string())?;
    }
    sent += fetched.bytes.len() as u64;
    let mut out = o.clone();
    out.location = dest.location();
    out.sent = Some(sent);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_accounts_are_account_ids() {
        let src = "targetAccountIds: [\"222233334444\", \"222233334444\", \"nope\"]\n";
        let doc = kiln_yaml::parse(src).unwrap();
        let mut r = Reader::new();
        let ids = target_accounts(&mut r, &doc.root);
        assert_eq!(ids, vec!["222233334444".to_string()]);
        let shown = r.diagnostics[0].render("d.yaml", src).to_string();
        assert!(
            shown.contains("d.yaml:1:") && shown.contains("12-digit"),
            "{shown}"
        );
    }
}
