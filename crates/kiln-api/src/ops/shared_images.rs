//! Images other accounts share with the caller (PutImagePolicy): GetImage and
//! ListImageBuildVersions by their ARNs read them; nothing else of the owner's is seen.

use kiln_core::principal::Principal;
use kiln_core::record::{ImageQuery, ImageRecord};
use kiln_store::Filter;

use crate::error::ApiError;
use crate::App;

/// Another account's image ARN as a query, or `None` for one of the principal's own (or one
/// that is not an image ARN: the caller's own checks say why).
fn theirs(principal: &Principal, arn: &str) -> Option<ImageQuery> {
    let q: ImageQuery = arn.parse().ok()?;
    let account = q.account.as_deref()?;
    (account != principal.account && q.version.is_some()).then_some(q)
}

/// The rows of `q` shared with `principal`.
fn shared(q: &ImageQuery, principal: &Principal) -> Filter {
    let mut f = kiln_core::record::filter_of(q);
    f.shared_with = Some(principal.account.clone());
    f
}

/// GetImage of another account's image: the newest build the ARN names that is shared with
/// the principal (not found when none is); `None` for the principal's own ARNs.
pub async fn record(
    app: &App,
    principal: &Principal,
    arn: &str,
) -> Result<Option<ImageRecord>, ApiError> {
    let Some(q) = theirs(principal, arn) else {
        return Ok(None);
    };
    let mut f = shared(&q, principal);
    f.limit = Some(1);
    let rows = app.records.summaries(&f).await.map_err(ApiError::service)?;
    let found = match rows.first() {
        Some(s) => app.records.get(&s.arn).await.map_err(ApiError::service)?,
        None => None,
    };
    found
        .map(Some)
        .ok_or_else(|| ApiError::not_found(format!("no image has the ARN `{arn}`")))
}

/// ListImageBuildVersions of another account's version: its builds shared with the principal.
pub fn builds_filter(principal: &Principal, arn: &str) -> Result<Filter, ApiError> {
    match theirs(principal, arn) {
        Some(mut q) => {
            q.build = None;
            Ok(shared(&q, principal))
        }
        None => Err(ApiError::invalid(format!(
            "`{arn}` is not an image version ARN (.../image/NAME/VERSION)"
        ))),
    }
}
