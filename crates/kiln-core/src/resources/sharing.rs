//! Sharing between accounts: an owner puts a resource policy ([`super::policy`]) on a
//! component build, a recipe or an image build; the accounts it names may then read it by ARN,
//! see it under `owner=Shared`, and use it in their own recipes and builds. They never write
//! it: only its owner deletes, tags, or puts and reads its policy. An account it is not shared
//! with is told nothing exists, as for any other account's resource.

use kiln_store::{Filter, Kind, Policy, Row};

use super::policy::{self, Target};
use super::{kind_noun, ErrorCode, Invalid, ListOptions, Reference, ResourceError, Resources};
use crate::principal::Principal;
use crate::state::Store;
use crate::store::StoreError;

/// The request member that names the resource of a kind's Put/Get*Policy.
pub fn arn_member(kind: Kind) -> &'static str {
    match kind {
        Kind::ImageRecipe => "imageRecipeArn",
        Kind::ContainerRecipe => "containerRecipeArn",
        Kind::Image => "imageArn",
        _ => "componentArn",
    }
}

/// The account (fifth field) of an ARN.
pub fn account_of(arn: &str) -> Option<&str> {
    arn.strip_prefix("arn:")?.split(':').nth(3)
}

/// Whether `account` may read and use what `arn` names: its own account's resources, kiln's
/// managed components, and what another account's resource policy grants it. A version or
/// wildcard ARN (`image/web/1.0.0`, `component/web/1.x.x`) is allowed when any build or
/// version it matches is shared with the account. For an ARN of the account's own, the
/// answer is yes whether or not the resource exists (the caller finds that out).
///
/// This is the one question other parts ask (the registry token service, for images shared
/// by PutImagePolicy); an ARN kiln cannot read is no.
pub async fn may_use(store: &Store, account: &str, arn: &str) -> Result<bool, StoreError> {
    let kinds = [
        Kind::Component,
        Kind::ImageRecipe,
        Kind::ContainerRecipe,
        Kind::Image,
    ];
    let Ok(r) = Reference::parse(arn, &kinds) else {
        return Ok(false);
    };
    if crate::managed::is_managed(&r) || r.account.as_deref() == Some(account) {
        return Ok(true);
    }
    let Some(owner) = r.account.as_deref() else {
        return Ok(false);
    };
    let f = shared_filter(&r, owner, account);
    Ok(store.db().count(&f).await? > 0)
}

/// The rows of `owner` that a reference names and that are shared with `viewer`.
pub(super) fn shared_filter(r: &Reference, owner: &str, viewer: &str) -> Filter {
    Filter {
        kind: Some(r.kind),
        name: Some(r.name.clone()),
        version: r.version.map(|v| v.nodes()).unwrap_or([None; 3]),
        build: r.build,
        arn_prefix: Some(Principal::new(owner, "").arn_prefix()),
        shared_with: Some(viewer.to_string()),
        ..Filter::default()
    }
}

/// The exact ARN shapes Put/Get*Policy take: a component's or an image's build, a recipe's
/// version.
fn exact(kind: Kind, arn: &str) -> Result<Reference, ResourceError> {
    let member = arn_member(kind);
    let shape = match kind {
        Kind::Component => "component/NAME/X.Y.Z/BUILD",
        Kind::Image => "image/NAME/X.Y.Z/BUILD",
        Kind::ImageRecipe => "image-recipe/NAME/X.Y.Z",
        _ => "container-recipe/NAME/X.Y.Z",
    };
    let wrong = |why: String| {
        ResourceError::from(
            Invalid::message(ErrorCode::InvalidParameterValue, format!("{member}: {why}"))
                .about(member),
        )
    };
    if !arn.starts_with("arn:") {
        return Err(wrong(format!(
            "`{arn}` is not an ARN: give arn:kiln:imagebuilder:REGION:ACCOUNT:{shape}"
        )));
    }
    let r = Reference::parse(arn, &[kind]).map_err(wrong)?;
    let build_needed = matches!(kind, Kind::Component | Kind::Image);
    let exact = r.version.is_some_and(|v| v.is_exact()) && (r.build.is_some() == build_needed);
    if !exact || crate::managed::is_managed(&r) {
        return Err(wrong(format!(
            "`{arn}` does not name one {}: a policy is put on {shape} of your own",
            kind_noun(kind)
        )));
    }
    Ok(r)
}

impl Resources {
    /// PutComponentPolicy, PutImageRecipePolicy, PutContainerRecipePolicy, PutImagePolicy:
    /// checks the policy and replaces the resource's policy with it (which is how sharing is
    /// revoked). Only the owner may.
    pub async fn put_policy(
        &self,
        principal: &Principal,
        kind: Kind,
        arn: &str,
        document: &str,
    ) -> Result<(), ResourceError> {
        let row = self.owned(principal, kind, arn).await?;
        let parsed = policy::parse(
            document,
            Target {
                kind,
                arn: &row.arn,
                owner: &principal.account,
            },
        )
        .map_err(|e| {
            ResourceError::from(
                Invalid::message(ErrorCode::InvalidParameterValue, format!("policy: {e}"))
                    .about("policy"),
            )
        })?;
        let grantees = parsed.grantees();
        tracing::info!(arn = %row.arn, ?grantees, "resource policy put");
        self.store
            .db()
            .put_policy(
                &row.arn,
                Some(Policy {
                    document: document.to_string(),
                    grantees,
                }),
            )
            .await?;
        Ok(())
    }

    /// Get*Policy: the policy as its owner put it. Only the owner may read it.
    pub async fn get_policy(
        &self,
        principal: &Principal,
        kind: Kind,
        arn: &str,
    ) -> Result<String, ResourceError> {
        let row = self.owned(principal, kind, arn).await?;
        match self.store.db().policy(&row.arn).await? {
            Some(p) => Ok(p.document),
            None => Err(ResourceError::NotFound(format!(
                "{} {} has no policy: Put{}Policy gives it one",
                kind_noun(kind),
                row.arn,
                match kind {
                    Kind::ImageRecipe => "ImageRecipe",
                    Kind::ContainerRecipe => "ContainerRecipe",
                    Kind::Image => "Image",
                    _ => "Component",
                }
            ))),
        }
    }

    /// Whether `account` may read and use `arn` ([`may_use`]).
    pub async fn may_get(&self, account: &str, arn: &str) -> Result<bool, ResourceError> {
        Ok(may_use(&self.store, account, arn).await?)
    }

    /// The row an exact ARN names, when `principal` owns it; a resource shared with the
    /// principal is `Forbidden` (it knows it exists), anything else not found.
    async fn owned(
        &self,
        principal: &Principal,
        kind: Kind,
        arn: &str,
    ) -> Result<Row, ResourceError> {
        exact(kind, arn)?;
        let missing =
            || ResourceError::NotFound(format!("no {} has the ARN `{arn}`", kind_noun(kind)));
        if account_of(arn) != Some(principal.account.as_str()) {
            return Err(self.refuse_write(principal, arn, missing()).await?);
        }
        self.store
            .db()
            .get(arn)
            .await?
            .filter(|r| r.kind == kind)
            .ok_or_else(missing)
    }

    /// What a write to another account's `arn` is told: `Forbidden` when it is shared with
    /// the principal, else `otherwise` (not found: its existence is not the principal's to
    /// learn).
    pub async fn refuse_write(
        &self,
        principal: &Principal,
        arn: &str,
        otherwise: ResourceError,
    ) -> Result<ResourceError, ResourceError> {
        if self.may_get(&principal.account, arn).await? {
            Ok(ResourceError::Forbidden(format!(
                "{arn} is shared with account {} by its owner, account {}: only its owner can \
                 change, delete, tag or share it",
                principal.account,
                account_of(arn).unwrap_or("?")
            )))
        } else {
            Ok(otherwise)
        }
    }

    /// Every resource of `kind` shared with `principal`'s account (ListComponents and its kin
    /// with `owner=Shared`), by name then newest version first.
    pub async fn shared(
        &self,
        principal: &Principal,
        kind: Kind,
        o: &ListOptions,
    ) -> Result<Vec<super::Resource>, ResourceError> {
        let f = Filter {
            kind: Some(kind),
            name: o.name.clone(),
            version: o.version.map(|v| v.nodes()).unwrap_or([None; 3]),
            shared_with: Some(principal.account.clone()),
            ..Filter::default()
        };
        let mut out = Vec::new();
        for row in self.store.db().list(&f).await? {
            if let Some(row) = self.store.db().get(&row.arn).await? {
                out.push(self.parse(&row)?);
            }
        }
        Ok(out)
    }
}
