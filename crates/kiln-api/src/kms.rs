//! kiln's own paths for its local KMS (kiln-kms), outside the Image Builder model, signed like
//! every other request and acting as the request's account:
//!
//! `PUT /kiln/CreateKey` {description?}, `POST /kiln/ListKeys`, `GET /kiln/DescribeKey?keyId=`,
//! `PUT /kiln/DisableKey` {keyId}, `PUT /kiln/EnableKey` {keyId}, `PUT /kiln/CreateGrant`
//! {keyId, granteeAccount}, `PUT /kiln/RevokeGrant` {keyId, granteeAccount}. No operation
//! answers key material: the decryption key for skopeo is `kiln key decryption-key` on the
//! server's machine.

use axum::http::Method;
use kiln_kms::{KeyInfo, KeyState, KeyStore, KmsError};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::ops::view::date;
use crate::{query, App};

/// A key operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsOp {
    /// `PUT /kiln/CreateKey`.
    Create,
    /// `POST /kiln/ListKeys`.
    List,
    /// `GET /kiln/DescribeKey?keyId=`.
    Describe,
    /// `PUT /kiln/DisableKey`.
    Disable,
    /// `PUT /kiln/EnableKey`.
    Enable,
    /// `PUT /kiln/CreateGrant`.
    Grant,
    /// `PUT /kiln/RevokeGrant`.
    Revoke,
}

impl KmsOp {
    const ALL: [(KmsOp, Method, &'static str); 7] = [
        (KmsOp::Create, Method::PUT, "CreateKey"),
        (KmsOp::List, Method::POST, "ListKeys"),
        (KmsOp::Describe, Method::GET, "DescribeKey"),
        (KmsOp::Disable, Method::PUT, "DisableKey"),
        (KmsOp::Enable, Method::PUT, "EnableKey"),
        (KmsOp::Grant, Method::PUT, "CreateGrant"),
        (KmsOp::Revoke, Method::PUT, "RevokeGrant"),
    ];

    /// The operation a method and path ask for, if it is one of these.
    pub fn route(method: &Method, path: &str) -> Option<KmsOp> {
        let name = path.strip_prefix(crate::topics::PREFIX)?;
        Self::ALL
            .iter()
            .find(|(_, m, n)| *n == name && m == method)
            .map(|(op, _, _)| *op)
    }
}

fn members(query_string: &str, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let mut m = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) => o,
            _ => {
                return Err(ApiError::bad_request(
                    "the request body must be a JSON object",
                ))
            }
        }
    };
    for (k, v) in query::pairs(query_string) {
        m.entry(k).or_insert(Value::String(v));
    }
    Ok(m)
}

fn text<'a>(m: &'a Map<String, Value>, key: &str) -> Result<&'a str, ApiError> {
    match m.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(ApiError::invalid(format!("{key}: is required")))
        }
        Some(_) => Err(ApiError::invalid(format!("{key}: must be a string"))),
    }
}

/// A key as answered (never its material).
fn view(k: &KeyInfo) -> Value {
    json!({
        "keyArn": k.arn.to_string(),
        "keyId": k.arn.key_id,
        "accountId": k.arn.account,
        "description": k.description,
        "keyState": k.state.to_string(),
        "creationDate": date(k.created),
        "grants": k.grants,
    })
}

/// The client's mistakes as 4xx Image Builder exceptions; kiln's own failures as 5xx.
fn api_error(e: KmsError) -> ApiError {
    match e {
        KmsError::NoSuchKey(_) => ApiError::not_found(e.to_string()),
        KmsError::NotOwner { .. } | KmsError::NotPermitted { .. } => {
            ApiError::new("ForbiddenException", e.to_string())
        }
        KmsError::BadReference(_) | KmsError::Invalid(_) | KmsError::Disabled(_) => {
            ApiError::invalid(e.to_string())
        }
        other => ApiError::service(other),
    }
}

/// Carries out a key operation for the request's account.
pub fn serve(
    app: &App,
    account: &str,
    op: KmsOp,
    query_string: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let m = members(query_string, body)?;
    let store = KeyStore::new(
        &app.resources.store().home().root,
        app.kms_master_key.clone(),
    );
    let info = match op {
        KmsOp::Create => {
            let description = match m.get("description") {
                None | Some(Value::Null) => "",
                Some(Value::String(s)) => s.as_str(),
                Some(_) => return Err(ApiError::invalid("description: must be a string")),
            };
            store.create(account, description).map_err(api_error)?
        }
        KmsOp::List => {
            let keys = store.list(account).map_err(api_error)?;
            return Ok(json!({"keys": keys.iter().map(view).collect::<Vec<_>>()}));
        }
        KmsOp::Describe => store
            .describe(text(&m, "keyId")?, account)
            .map_err(api_error)?,
        KmsOp::Disable => store
            .set_state(text(&m, "keyId")?, account, KeyState::Disabled)
            .map_err(api_error)?,
        KmsOp::Enable => store
            .set_state(text(&m, "keyId")?, account, KeyState::Enabled)
            .map_err(api_error)?,
        KmsOp::Grant => store
            .grant(text(&m, "keyId")?, account, text(&m, "granteeAccount")?)
            .map_err(api_error)?,
        KmsOp::Revoke => store
            .revoke(text(&m, "keyId")?, account, text(&m, "granteeAccount")?)
            .map_err(api_error)?,
    };
    Ok(json!({"key": view(&info)}))
}
