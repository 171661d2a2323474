//! Storing a checked request: a new resource (or version), or an updated one.

use chrono::Utc;
use kiln_store::{Created, Kind, StoreError as DbError, Update};
use serde_json::Value;

use super::draft::Draft;
use super::{
    arn, cli_noun, content_digest, kind_noun, versioned, Outcome, Reference, Resource,
    ResourceError, Resources,
};
use crate::principal::Principal;
use crate::request::{Document, Operation};
use crate::state::to_json;
use crate::version::Version;

impl Resources {
    /// Stores a draft: picks a version, returns what exists when the content is the same.
    pub(super) async fn store_draft(
        &self,
        principal: &Principal,
        d: Draft,
        doc: &Document,
    ) -> Result<Outcome, ResourceError> {
        let mut version = d.version;
        if versioned(d.kind) {
            let newest = self
                .newest(principal, &Reference::named(d.kind, d.name.clone()))
                .await?;
            match (version, &newest) {
                // No version: the newest when unchanged, else the next patch.
                (None, Some(n)) if n.digest == d.digest => {
                    return Ok(Outcome {
                        resource: n.clone(),
                        created: false,
                        warnings: d.warnings,
                    });
                }
                (None, Some(n)) => version = Some(n.version.unwrap_or_default().next_patch()),
                (None, None) => {
                    version = Some(Version {
                        major: 1,
                        minor: 0,
                        patch: 0,
                    })
                }
                (Some(_), _) => {}
            }
        }
        let resource = new_resource(principal, &d, version, doc);
        let mut row = crate::state::row(d.kind, resource.arn.clone(), d.name.clone());
        row.version = version.as_ref().map(crate::state::nodes);
        row.build = (d.kind == Kind::Component).then_some(1);
        row.owner = resource.owner.clone();
        row.state = d.status.map(|s| s.as_str().to_string());
        row.digest = d.digest.clone();
        row.created_ms = crate::state::millis(resource.date_created);
        row.summary = to_json(&resource.summary())?;
        row.body = to_json(&resource)?;
        // The store keys client tokens across accounts (names, versions and builds are per
        // account): what it answers about another account's row must not reach this
        // principal.
        let theirs = |arn: &str| !arn.starts_with(&principal.arn_prefix());
        let existing = match self
            .store
            .db()
            .create(row, own_refs(principal, &d.uses), d.token.clone())
            .await
        {
            Ok(Created::New(_)) => {
                return Ok(Outcome {
                    resource,
                    created: true,
                    warnings: d.warnings,
                })
            }
            Ok(Created::Existing(row)) if theirs(&row.arn) => {
                return Err(token_taken(d.token.as_deref()))
            }
            Err(DbError::TokenMismatch { arn, .. }) if theirs(&arn) => {
                return Err(token_taken(d.token.as_deref()))
            }
            Ok(Created::Existing(row)) => {
                return Ok(Outcome {
                    resource: self.parse(&row)?,
                    created: false,
                    warnings: d.warnings,
                })
            }
            Err(DbError::AlreadyExists { existing }) if theirs(&existing.arn) => {
                return Err(ResourceError::Exists(format!(
                    "{} {} {} cannot be stored: kiln's store keeps one {} of a name and \
                     version across accounts, and another account has this one: choose \
                     another name",
                    kind_noun(d.kind),
                    d.name,
                    version.map(|v| v.to_string()).unwrap_or_default(),
                    kind_noun(d.kind),
                )))
            }
            Err(DbError::AlreadyExists { existing }) => self.parse(&existing)?,
            Err(e) => return Err(e.into()),
        };
        if existing.digest == d.digest {
            return Ok(Outcome {
                resource: existing,
                created: false,
                warnings: d.warnings,
            });
        }
        Err(self.exists(principal, &d, version, doc).await)
    }

    /// The error for a name (and version) that exists with other content.
    async fn exists(
        &self,
        principal: &Principal,
        d: &Draft,
        version: Option<Version>,
        doc: &Document,
    ) -> ResourceError {
        if !versioned(d.kind) {
            // A request that is no file came through the API: say its operation.
            let how = match Operation::update(d.kind) {
                Some(op) if doc.file().is_none() => op.as_str().to_string(),
                _ => format!("`kiln {} update {}`", cli_noun(d.kind), doc.name()),
            };
            return ResourceError::Exists(format!(
                "{} {} already exists with different content: change it with {how}",
                kind_noun(d.kind),
                d.name,
            ));
        }
        let next = match self
            .newest(principal, &Reference::named(d.kind, d.name.clone()))
            .await
        {
            Ok(newest) => newest
                .and_then(|n| n.version)
                .map(|v| v.next_patch().to_string())
                .unwrap_or_default(),
            Err(e) => return e,
        };
        ResourceError::Exists(format!(
            "{} {} {} already exists with different content, and {}s are immutable: \
             give a new semanticVersion (the next free one is {next}), or leave \
             semanticVersion out and kiln takes the next version",
            kind_noun(d.kind),
            d.name,
            version.map(|v| v.to_string()).unwrap_or_default(),
            kind_noun(d.kind),
        ))
    }

    /// Replaces a configuration or pipeline (they are not versioned) with a draft's content;
    /// its ARN stays.
    pub(super) async fn replace(
        &self,
        principal: &Principal,
        mut draft: Draft,
        doc: &Document,
    ) -> Result<Outcome, ResourceError> {
        let kind = draft.kind;
        // An ARN of another account names nothing this principal can update.
        let visible = draft
            .target
            .as_ref()
            .is_none_or(|(_, t)| t.visible_to(principal));
        let arn = arn(principal, kind, &draft.name, None, None);
        let found = if visible {
            self.store.db().get(&arn).await?
        } else {
            None
        };
        let Some(old) = found else {
            return Err(ResourceError::NotFound(format!(
                "no {} named {} to update: create it first",
                kind_noun(kind),
                draft.name
            )));
        };
        let mut old: Resource = self.parse(&old)?;
        // An update replaces the content, not the tags: Image Builder's update requests have
        // none (TagResource changes them).
        if let (Some(tags), Some(o)) = (
            old.request.get("tags").cloned(),
            draft.request.as_object_mut(),
        ) {
            o.entry("tags").or_insert(tags);
        }
        // Named by ARN, it is stored as if named by name: the same content, the same digest.
        if let Some((key, _)) = draft.target.take() {
            if let Some(o) = draft.request.as_object_mut() {
                o.remove(key);
                o.insert("name".into(), Value::String(old.name.clone()));
            }
        }
        draft.digest = content_digest(&draft.request, &[]);
        if old.digest == draft.digest {
            return Ok(Outcome {
                resource: old,
                created: false,
                warnings: draft.warnings,
            });
        }
        old.request = draft.request;
        old.digest = draft.digest;
        old.description = draft.description;
        old.status = draft.status;
        old.uses = draft.uses.clone();
        old.source_file = doc.file().map(|f| f.to_path_buf());
        old.date_updated = Some(Utc::now());
        self.store
            .db()
            .update(
                &arn,
                Update {
                    state: old.status.map(|s| s.as_str().to_string()),
                    summary: Some(to_json(&old.summary())?),
                    body: Some(to_json(&old)?),
                    digest: Some(old.digest.clone()),
                    refs: Some(own_refs(principal, &draft.uses)),
                    ..Update::default()
                },
            )
            .await?;
        Ok(Outcome {
            resource: old,
            created: true,
            warnings: draft.warnings,
        })
    }
}

/// The resource a draft makes in `principal`'s account, at `version`.
fn new_resource(
    principal: &Principal,
    d: &Draft,
    version: Option<Version>,
    doc: &Document,
) -> Resource {
    let build = (d.kind == Kind::Component).then_some(1);
    let mut request = d.request.clone();
    if let (Some(v), Some(o)) = (version, request.as_object_mut()) {
        o.insert("semanticVersion".into(), Value::String(v.to_string()));
    }
    Resource {
        arn: arn(principal, d.kind, &d.name, version.as_ref(), build),
        kind: d.kind,
        name: d.name.clone(),
        version,
        owner: principal.user.clone(),
        date_created: Utc::now(),
        date_updated: None,
        description: d.description.clone(),
        digest: d.digest.clone(),
        request,
        source_file: doc.file().map(|f| f.to_path_buf()),
        component_type: d.component_type,
        platform: d.platform.clone(),
        data: d.data.clone(),
        status: d.status,
        uses: d.uses.clone(),
    }
}

/// The references the store checks deletes against: those in the principal's own account (and
/// kiln's). What another account shares stays its owner's to delete: a grantee's recipe that
/// names it must neither keep the owner from deleting it nor be named to the owner; it then
/// fails to build as after the owner revoked the share.
fn own_refs(principal: &Principal, uses: &[String]) -> Vec<String> {
    uses.iter()
        .filter(|u| {
            super::sharing::account_of(u)
                .is_none_or(|a| a == principal.account || a == crate::managed::MANAGED_ACCOUNT)
        })
        .cloned()
        .collect()
}

/// A client token another account used: refused without naming what it made.
fn token_taken(token: Option<&str>) -> ResourceError {
    ResourceError::TokenMismatch(format!(
        "client token {} was used with a different request: use a new token; nothing was \
         changed",
        token.unwrap_or_default()
    ))
}
