//! `GET /registry/token`: kiln serve as the token service of docker-registry's `auth: token`
//! (the Docker registry token authentication specification). The client's HTTP Basic
//! credentials are an account id with a password of `kiln registry login`, or kiln's own
//! service credential; the answer is `{token, access_token, expires_in, issued_at}` with the
//! access kiln-core's grants give (docs/registry-auth.md).

use std::sync::Arc;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use kiln_core::registry_auth::grants::{self, Requester, Scope};
use kiln_core::registry_auth::jwt::{self, Claims};
use kiln_core::registry_auth::keys::TokenKey;
use kiln_core::registry_auth::{password, SERVICE_USER};
use kiln_core::state::Store;
use subtle::ConstantTimeEq;

use crate::auth::KeyStore;

/// The token endpoint's path (outside the Image Builder API's operations).
pub const PATH: &str = "/registry/token";
/// Tokens live 5 minutes unless the server is told otherwise: a grant or revoke takes
/// effect within that time.
pub const DEFAULT_LIFETIME_SECONDS: u64 = 300;

/// The token service: its key, issuer, token lifetime, the accounts' keys and the store.
pub struct TokenService {
    key: TokenKey,
    issuer: String,
    lifetime_seconds: u64,
    keys: Arc<dyn KeyStore>,
    store: Store,
}

impl TokenService {
    /// A token service signing with `key` as `issuer`.
    pub fn new(
        key: TokenKey,
        issuer: impl Into<String>,
        lifetime_seconds: u64,
        keys: Arc<dyn KeyStore>,
        store: Store,
    ) -> TokenService {
        TokenService {
            key,
            issuer: issuer.into(),
            lifetime_seconds: lifetime_seconds.max(1),
            keys,
            store,
        }
    }

    /// Answers one token request.
    pub async fn serve(&self, parts: &Parts) -> Response {
        match self.token(parts).await {
            Ok(body) => (
                StatusCode::OK,
                [(header::CACHE_CONTROL, "no-store")],
                axum::Json(body),
            )
                .into_response(),
            Err(refusal) => refusal.into_response(),
        }
    }

    async fn token(&self, parts: &Parts) -> Result<serde_json::Value, Refusal> {
        let pairs = crate::query::pairs(parts.uri.query().unwrap_or(""));
        let one = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let service = one("service").filter(|s| !s.is_empty()).ok_or_else(|| {
            Refusal::bad("`service` is missing: the registry's `auth.token.service` names it")
        })?;
        let mut scopes = Vec::new();
        for (_, value) in pairs.iter().filter(|(k, _)| k == "scope") {
            // Several scopes may come space-separated in one parameter.
            for s in value.split(' ').filter(|s| !s.is_empty()) {
                scopes.push(Scope::parse(s).ok_or_else(|| {
                    Refusal::bad(format!(
                        "scope `{s}` is not TYPE:NAME:ACTIONS (like repository:golden/app:pull)"
                    ))
                })?);
            }
        }
        let who = self.requester(parts)?;
        let access = grants::grant(&self.store, &who, service, &scopes)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "registry token: reading the records failed");
                Refusal::internal()
            })?;
        let now = chrono::Utc::now();
        let iat = now.timestamp();
        let sub = match &who {
            Requester::Account(a) => a.clone(),
            Requester::Service => SERVICE_USER.to_string(),
        };
        tracing::info!(
            subject = %sub,
            service = %service,
            asked = scopes.len(),
            granted = ?access.iter().map(|a| format!("{}:{}", a.name, a.actions.join(","))).collect::<Vec<_>>(),
            "registry token issued"
        );
        let claims = Claims {
            iss: self.issuer.clone(),
            sub,
            aud: service.clone(),
            exp: iat + self.lifetime_seconds as i64,
            // A registry whose clock is a little behind still takes the token.
            nbf: iat - 5,
            iat,
            jti: uuid::Uuid::new_v4().to_string(),
            access,
        };
        let token = jwt::sign(&self.key, &claims).map_err(|e| {
            tracing::warn!(error = %e, "registry token: signing failed");
            Refusal::internal()
        })?;
        Ok(serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": self.lifetime_seconds,
            "issued_at": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }))
    }

    /// Who the Basic credentials say asks; never logs the password.
    fn requester(&self, parts: &Parts) -> Result<Requester, Refusal> {
        let (user, pass) = basic(parts).ok_or_else(|| {
            Refusal::unauthorized(
                "kiln's registry token service needs credentials: log in with the account id and \
                 the password `kiln registry login` prints",
            )
        })?;
        if user == SERVICE_USER {
            let expected = self.key.service_password();
            if bool::from(expected.as_bytes().ct_eq(pass.as_bytes())) {
                return Ok(Requester::Service);
            }
            tracing::info!(user = %user, "registry token refused: wrong service credential");
            return Err(Refusal::unauthorized("wrong credentials"));
        }
        let refuse = |why: &str| {
            tracing::info!(user = %user, reason = why, "registry token refused");
            Refusal::unauthorized(why)
        };
        let key_id = password::key_id(&pass)
            .ok_or_else(|| refuse("not a password of `kiln registry login`"))?;
        let key = self
            .keys
            .key(key_id)
            .ok_or_else(|| refuse("the password's access key does not exist (deleted?): run `kiln registry login` again"))?;
        password::verify(
            &pass,
            &user,
            &key.account,
            &key.secret,
            chrono::Utc::now().timestamp(),
        )
        .map_err(|e| refuse(&e.to_string()))?;
        Ok(Requester::Account(key.account))
    }
}

/// The user and password of an `Authorization: Basic` header.
fn basic(parts: &Parts) -> Option<(String, String)> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

/// A refused token request, in the registry protocol's error shape.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn bad(message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "INVALID_REQUEST",
            message: message.into(),
        }
    }

    fn unauthorized(message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::UNAUTHORIZED,
            code: "UNAUTHORIZED",
            message: message.into(),
        }
    }

    fn internal() -> Refusal {
        Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "UNKNOWN",
            message: "the token service failed; its log says why".into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"errors": [{"code": self.code, "message": self.message}]});
        let mut r = Response::new(Body::from(body.to_string()));
        *r.status_mut() = self.status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"kiln registry token service\""),
            );
        }
        r
    }
}
