//! What a token grants. An account may pull a repository of a registry when an image record
//! with an output there is its own, or when that image's distribution configuration, as it
//! is now, names the account in the region's `amiDistributionConfiguration.launchPermission
//! .userIds` (for every kind of output the image has in that region: container image, disk
//! chunks, containerDisk). Nothing is copied to grant or revoke: the next token (at most one
//! token lifetime later) says the new answer. An image build shared by PutImagePolicy
//! ([`crate::resources::may_use`]) grants pull the same way. Accounts never push or delete; kiln's own
//! service credential ([`super::SERVICE_USER`]) does both, for its distribution.

use kiln_store::{Filter, Kind};
use serde_json::Value;

use super::jwt::Access;
use crate::record::ImageRecord;
use crate::resources::Resource;
use crate::state::Store;

/// Who asks for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requester {
    /// An account, by its 12-digit id, logged in with `kiln registry login`.
    Account(String),
    /// kiln's own distribution.
    Service,
}

/// One `scope` of a token request, parsed: `repository:NAME:ACTION[,ACTION]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `repository`, `registry`, ...
    pub kind: String,
    /// The resource's name.
    pub name: String,
    /// The actions asked for.
    pub actions: Vec<String>,
}

impl Scope {
    /// Parses a scope; `None` when it is not `TYPE:NAME:ACTIONS`.
    pub fn parse(s: &str) -> Option<Scope> {
        let (kind, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind.is_empty() || name.is_empty() {
            return None;
        }
        Some(Scope {
            kind: kind.to_string(),
            name: name.to_string(),
            actions: actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }
}

/// The access a requester gets for the scopes it asked for at registry `service` (the
/// `HOST[:PORT]` kiln's `regions:` names the registry by): a subset of what was asked, as the
/// specification wants; a scope with nothing granted is left out.
pub async fn grant(
    store: &Store,
    who: &Requester,
    service: &str,
    scopes: &[Scope],
) -> Result<Vec<Access>, crate::store::StoreError> {
    let mut out = Vec::new();
    // Every record, read only when a scope is not found among the images named like it.
    let mut records: Option<Vec<ImageRecord>> = None;
    for scope in scopes {
        let actions: Vec<String> = match who {
            Requester::Service => scope
                .actions
                .iter()
                .filter(|a| matches!(a.as_str(), "pull" | "push" | "delete" | "*"))
                .cloned()
                .collect(),
            Requester::Account(account) => {
                if scope.kind != "repository" || !scope.actions.iter().any(|a| a == "pull") {
                    Vec::new()
                } else {
                    let named = records_with_outputs(store, &names_of(&scope.name)).await?;
                    let mut granted =
                        may_pull(store, &named, account, service, &scope.name).await?;
                    if !granted {
                        // A repository named otherwise (`targetRepository.repositoryName`).
                        if records.is_none() {
                            records = Some(records_with_outputs(store, &[]).await?);
                        }
                        let all = records.as_deref().unwrap_or_default();
                        granted = may_pull(store, all, account, service, &scope.name).await?;
                    }
                    if granted {
                        vec!["pull".to_string()]
                    } else {
                        Vec::new()
                    }
                }
            }
        };
        if !actions.is_empty() {
            out.push(Access {
                kind: scope.kind.clone(),
                name: scope.name.clone(),
                actions,
            });
        }
    }
    Ok(out)
}

/// The image names a repository path is likely to hold (`BASE/NAME`, `BASE/NAME/disk`,
/// `BASE/ACCOUNT/NAME/containerdisk`): its last segment, and the one before a kind suffix.
fn names_of(repository: &str) -> Vec<String> {
    let mut parts = repository.rsplit('/');
    let last = parts.next().unwrap_or_default();
    let mut names = vec![last.to_string()];
    if matches!(last, "disk" | "containerdisk") {
        if let Some(before) = parts.next() {
            names.push(before.to_string());
        }
    }
    names
}

/// The image records whose artifacts are in their regions, of the names `names` (every name
/// when empty). A list gives rows without their bodies, so each record is read by its ARN.
pub(super) async fn records_with_outputs(
    store: &Store,
    names: &[String],
) -> Result<Vec<ImageRecord>, crate::store::StoreError> {
    let states: Vec<String> = [
        crate::record::State::Available,
        crate::record::State::Deprecated,
        crate::record::State::Disabled,
    ]
    .iter()
    .map(|s| s.as_str().to_string())
    .collect();
    let filters: Vec<Filter> = if names.is_empty() {
        vec![Filter {
            kind: Some(Kind::Image),
            states,
            ..Filter::default()
        }]
    } else {
        names
            .iter()
            .map(|n| Filter {
                kind: Some(Kind::Image),
                name: Some(n.clone()),
                states: states.clone(),
                ..Filter::default()
            })
            .collect()
    };
    let mut rows = Vec::new();
    for f in &filters {
        rows.extend(store.db().list(f).await?);
    }
    let mut out = Vec::new();
    for row in rows {
        let Some(full) = store.db().get(&row.arn).await? else {
            continue;
        };
        if let Ok(rec) =
            store.decode::<ImageRecord>(&full.body, &format!("the record of {}", row.arn))
        {
            if !rec.outputs.is_empty() {
                out.push(rec);
            }
        }
    }
    Ok(out)
}

/// Whether `account` may pull `repository` of registry `service`.
async fn may_pull(
    store: &Store,
    records: &[ImageRecord],
    account: &str,
    service: &str,
    repository: &str,
) -> Result<bool, crate::store::StoreError> {
    let location = format!("docker://{service}/{repository}");
    for rec in records {
        let Some(output) = rec.outputs.iter().find(|o| {
            o.location.trim_start_matches("docker://") == location.trim_start_matches("docker://")
        }) else {
            continue;
        };
        // A copy placed for another account (`targetAccountIds`) is that account's.
        if let Some(copy) = rec
            .account_copies
            .iter()
            .find(|c| c.location == output.location)
        {
            if copy.account == account {
                return Ok(true);
            }
            continue;
        }
        if rec.account == account {
            return Ok(true);
        }
        if launch_permission_names(store, rec, &output.region, account).await? {
            return Ok(true);
        }
        if shared_by_policy(store, account, &rec.arn).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether a resource policy (PutImagePolicy) shares the image build `arn` with `account`:
/// the sharing part's one question, [`crate::resources::may_use`].
async fn shared_by_policy(
    store: &Store,
    account: &str,
    arn: &str,
) -> Result<bool, crate::store::StoreError> {
    crate::resources::may_use(store, account, arn).await
}

/// Whether the distribution configuration `rec` was built with names `account` now in the
/// launch permission of `region`. A build without one (`kiln build` of a recipe file) is
/// shared with no one.
async fn launch_permission_names(
    store: &Store,
    rec: &ImageRecord,
    region: &str,
    account: &str,
) -> Result<bool, crate::store::StoreError> {
    for arn in rec
        .configurations
        .iter()
        .filter(|a| a.contains(":distribution-configuration/"))
    {
        let Some(row) = store.db().get(arn).await? else {
            continue;
        };
        let Ok(resource) = store.decode::<Resource>(&row.body, arn) else {
            continue;
        };
        if distribution_names(&resource.request, region, account) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether a distribution configuration's request names `account` in `region`'s
/// `amiDistributionConfiguration.launchPermission.userIds`.
pub fn distribution_names(request: &Value, region: &str, account: &str) -> bool {
    request
        .get("distributions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|d| d.get("region").and_then(Value::as_str) == Some(region))
        .filter_map(|d| d.pointer("/amiDistributionConfiguration/launchPermission/userIds"))
        .filter_map(Value::as_array)
        .flatten()
        .any(|id| id.as_str() == Some(account))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_as_the_specification_writes_them() {
        assert_eq!(
            Scope::parse("repository:golden/app:pull,push"),
            Some(Scope {
                kind: "repository".into(),
                name: "golden/app".into(),
                actions: vec!["pull".into(), "push".into()],
            })
        );
        assert_eq!(
            Scope::parse("registry:catalog:*").map(|s| s.actions),
            Some(vec!["*".into()])
        );
        assert_eq!(Scope::parse("repository:app"), None);
        assert_eq!(Scope::parse(":x:pull"), None);
    }

    #[test]
    fn repositories_name_their_images() {
        assert_eq!(names_of("golden/web"), ["web"]);
        assert_eq!(names_of("golden/web/disk"), ["disk", "web"]);
        assert_eq!(
            names_of("golden/222233334444/web/containerdisk"),
            ["containerdisk", "web"]
        );
    }

    #[test]
    fn launch_permissions_name_accounts_per_region() {
        let request = serde_json::json!({"distributions": [
            {"region": "east", "amiDistributionConfiguration": {"launchPermission": {"userIds": ["222233334444"]}}},
            {"region": "west"}
        ]});
        assert!(distribution_names(&request, "east", "222233334444"));
        assert!(!distribution_names(&request, "west", "222233334444"));
        assert!(!distribution_names(&request, "east", "555566667777"));
        assert!(!distribution_names(
            &serde_json::json!({}),
            "east",
            "222233334444"
        ));
    }
}
