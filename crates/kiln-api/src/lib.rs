//! `kiln serve`: the EC2 Image Builder REST-JSON API over kiln's resources and builds, so that
//! the AWS CLI, boto3 and Terraform work against a kiln with `--endpoint-url`.
//!
//! Every request is authenticated (SigV4, see [`auth`]), routed to one [`ops::Op`] by method
//! and path as botocore's model gives them, checked against the model's input shape, carried
//! out for the caller's account through kiln-core, and answered with only the members of the
//! model's output shape. Errors are the model's exceptions, 4xx for a client's mistake.

#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod auth;
pub mod builds;
pub mod console;
pub mod error;
pub mod kms;
pub mod logs;
pub mod model;
pub mod notices;
pub mod ops;
pub(crate) mod query;
pub mod ratelimit;
pub mod registry_token;
pub mod tls;
pub mod tokens;
pub mod topics;
pub mod worker_calls;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_core::record::Records;
use kiln_core::resources::Resources;
use serde_json::Value;

pub use auth::Authenticator;
pub use builds::{BuildSettings, Builds};
pub use error::ApiError;

use model::{Location, Model};
use ops::Op;

/// Largest request body kiln reads (a component's document is at most 16,000 characters).
pub const MAX_BODY: usize = 1 << 20;
/// How long a client may take to send its body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// What every request is served with.
pub struct App {
    /// The account's resources.
    pub resources: Resources,
    /// Image records.
    pub records: Records,
    /// Builds the server runs.
    pub builds: Builds,
    /// Who a request comes from.
    pub auth: Arc<dyn Authenticator>,
    /// Requests per account.
    pub limiter: ratelimit::Limiter,
    /// Client tokens seen, and what they were answered.
    pub tokens: tokens::Tokens,
    /// The KMS master key file (`kms.masterKey`); `$KILN_HOME/master.key` when `None`.
    pub kms_master_key: Option<std::path::PathBuf>,
    /// The registries' token service (`/registry/token`), when the server is one.
    pub registry_tokens: Option<Arc<registry_token::TokenService>>,
    /// The web console (`/console/`), when the server has one.
    pub console: Option<console::Console>,
}

/// The HTTP service: every path goes through [`handle`].
pub fn router(app: Arc<App>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(app)
}

/// Serves one request.
pub async fn handle(State(app): State<Arc<App>>, req: Request<Body>) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut response = match serve_one(&app, req, &request_id).await {
        Ok(Answer::Json(v)) => (StatusCode::OK, axum::Json(v)).into_response(),
        Ok(Answer::Stream(r)) => r,
        Err(e) => {
            tracing::info!(code = %e.code, status = e.status, "request refused");
            e.into_response()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-amzn-RequestId", v);
    }
    response
}

/// What a request is answered with.
enum Answer {
    /// An operation's response members.
    Json(Value),
    /// A response of kiln's own (the log stream).
    Stream(Response),
}

async fn serve_one(
    app: &Arc<App>,
    req: Request<Body>,
    request_id: &str,
) -> Result<Answer, ApiError> {
    let (parts, body) = req.into_parts();
    let body = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return Err(ApiError::with_status(
                "InvalidRequestException",
                413,
                format!("the request body is over {MAX_BODY} bytes"),
            ))
        }
        Err(_) => {
            return Err(ApiError::with_status(
                "RequestTimeoutException",
                408,
                "the request body did not arrive in time",
            ))
        }
    };
    // Workers prove who they are with their token, not SigV4.
    if parts.uri.path() == kiln_store::remote::PATH {
        return Ok(Answer::Stream(
            worker_calls::serve(app, &parts, &body).await,
        ));
    }
    // The registries' token service takes Basic credentials of its own, not SigV4.
    if let (Some(t), registry_token::PATH) = (&app.registry_tokens, parts.uri.path()) {
        return Ok(Answer::Stream(t.serve(&parts).await));
    }
    // The console signs people in with a cookie of its own, not SigV4.
    if console::owns(parts.uri.path()) {
        return Ok(Answer::Stream(
            console::serve(app.clone(), parts, body).await,
        ));
    }
    let principal = app.auth.authenticate(&parts, &body)?;
    app.limiter.check(&principal.account)?;
    let path = parts.uri.path();
    if path == logs::PATH && parts.method == axum::http::Method::GET {
        return logs::stream(app.clone(), principal, &parts)
            .await
            .map(Answer::Stream);
    }
    if let Some(op) = kms::KmsOp::route(&parts.method, path) {
        let query = parts.uri.query().unwrap_or("");
        return kms::serve(app, &principal.account, op, query, &body).map(Answer::Json);
    }
    if let Some(op) = topics::TopicOp::route(&parts.method, path) {
        let query = parts.uri.query().unwrap_or("");
        return topics::serve(app, &principal, op, query, &body)
            .await
            .map(Answer::Json);
    }
    let (op, path_arn) = Op::route(&parts.method, path).ok_or_else(|| {
        ApiError::with_status(
            "UnknownOperationException",
            404,
            format!("kiln serves no {} {path}", parts.method),
        )
    })?;
    let input = decode(
        op,
        parts.uri.query().unwrap_or(""),
        path_arn.as_deref(),
        &body,
    )?;
    let mut output = app
        .tokens
        .once(&principal, op, &input, || {
            ops::dispatch(app, &principal, op, input.clone())
        })
        .await?;
    if let Some(o) = output.as_object_mut() {
        o.insert("requestId".into(), Value::from(request_id));
    }
    let model = Model::get();
    let output_shape = model.operation(op.name()).and_then(|o| o.output.clone());
    Ok(Answer::Json(match &output_shape {
        Some(shape) => model.project(shape, output),
        None => Value::Object(Default::default()),
    }))
}

/// A request's members as the model gives `op` them: the JSON body, the query string's members
/// and the path's `{resourceArn}` (still percent-encoded), checked against the input shape.
/// Whatever the bytes, this answers a 4xx error or the members; it never panics.
pub fn decode(op: Op, query: &str, path_arg: Option<&str>, body: &[u8]) -> Result<Value, ApiError> {
    let mut input: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the request body is not JSON: {e} (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?
    };
    if !input.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let model = Model::get();
    let Some(input_shape) = model.operation(op.name()).and_then(|o| o.input.clone()) else {
        return Ok(input);
    };
    let Some(shape) = model.shape(&input_shape) else {
        return Ok(input);
    };
    let pairs = query::pairs(query);
    for m in &shape.members {
        let key = m.location_name.as_deref().unwrap_or(&m.name);
        let value = match m.location {
            Location::Query => {
                let values: Vec<&String> = pairs
                    .iter()
                    .filter(|(k, _)| k == key)
                    .map(|(_, v)| v)
                    .collect();
                let list = model
                    .shape(&m.shape)
                    .is_some_and(|s| s.ty == model::ShapeType::List);
                match (values.first(), list) {
                    (None, _) => None,
                    (Some(_), true) => Some(Value::from(
                        values
                            .iter()
                            .map(|v| Value::from(v.as_str()))
                            .collect::<Vec<_>>(),
                    )),
                    (Some(v), false) => Some(Value::from(v.as_str())),
                }
            }
            Location::Uri => path_arg.map(|a| Value::from(query::decode(a))),
            _ => None,
        };
        if let (Some(v), Some(o)) = (value, input.as_object_mut()) {
            o.insert(m.name.clone(), v);
        }
    }
    model
        .check(&input_shape, &input, "")
        .map_err(|e| ApiError::field(op, e))?;
    Ok(input)
}

/// How long a client may take to send a request's headers (the body has [`BODY_TIMEOUT`]).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections (a log stream, say) may go on after the server stops listening.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `shutdown` resolves, then stops taking requests and cancels the running
/// builds (recording each), so that nothing is left half-distributed.
///
/// Connections are HTTP/1.1 with keep-alive; a client that takes longer than
/// [`HEADER_TIMEOUT`] over a request's headers is disconnected, so slow clients cannot hold
/// the server's connections.
pub async fn serve<L>(
    mut listener: L,
    app: Arc<App>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let service = hyper_util::service::TowerToHyperService::new(router(app.clone()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    let deliverer = spawn_deliverer(app.resources.store().clone());
    app.builds.start_workers();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (io, _) = listener.accept() => {
                let conn = http.serve_connection(TokioIo::new(io), service.clone());
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
    app.builds.shutdown().await;
    if let Some(d) = deliverer {
        d.stop().await;
    }
    Ok(())
}

/// Delivers the store's outbox (topics' webhooks) until stopped: what [`serve`] runs beside
/// the API. `None` (logged) when no HTTP client can be made; the messages wait in the store.
pub fn spawn_deliverer(store: kiln_core::state::Store) -> Option<kiln_core::notify::Running> {
    match kiln_core::notify::Deliverer::new(store) {
        Ok(d) => Some(kiln_core::notify::Running::spawn(d)),
        Err(e) => {
            tracing::error!(error = %e, "webhooks are not delivered");
            None
        }
    }
}
