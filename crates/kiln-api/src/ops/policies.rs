//! PutComponentPolicy, PutImageRecipePolicy, PutContainerRecipePolicy, PutImagePolicy and
//! their Get*: resource policies that share a resource with other accounts, through
//! kiln-core's `Resources` (docs/sharing.md).

use kiln_core::principal::Principal;
use kiln_core::resources::sharing::arn_member;
use kiln_store::Kind;
use serde_json::{json, Value};

use super::{required, Op};
use crate::error::ApiError;
use crate::App;

/// The kind a policy operation is about, and whether it puts.
fn kind_of(op: Op) -> (Kind, bool) {
    use Op::*;
    match op {
        PutComponentPolicy => (Kind::Component, true),
        PutImageRecipePolicy => (Kind::ImageRecipe, true),
        GetImageRecipePolicy => (Kind::ImageRecipe, false),
        PutContainerRecipePolicy => (Kind::ContainerRecipe, true),
        GetContainerRecipePolicy => (Kind::ContainerRecipe, false),
        PutImagePolicy => (Kind::Image, true),
        GetImagePolicy => (Kind::Image, false),
        _ => (Kind::Component, false),
    }
}

/// One of the eight operations.
pub async fn run(
    app: &App,
    principal: &Principal,
    op: Op,
    input: Value,
) -> Result<Value, ApiError> {
    let (kind, put) = kind_of(op);
    let member = arn_member(kind);
    let arn = required(&input, member)?;
    if put {
        let policy = required(&input, "policy")?;
        app.resources
            .put_policy(principal, kind, arn, policy)
            .await?;
        Ok(json!({ member: arn }))
    } else {
        let policy = app.resources.get_policy(principal, kind, arn).await?;
        Ok(json!({ "policy": policy }))
    }
}
