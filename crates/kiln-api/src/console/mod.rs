//! The web console, under `/console/`: server-rendered pages over the same operations the API
//! serves, for the account of the access key a person signed in with.
//!
//! Pages read and change resources through [`crate::ops::dispatch`] with the signed-in
//! principal, so the console sees exactly what the API shows that account: its own resources
//! and those shared with it. Its JavaScript is htmx and a short script of its own for the live log,
//! embedded in the binary ([`assets`]); every page works as plain HTML forms too.
//!
//! Security: a session is a signed cookie (HttpOnly, SameSite=Strict, `Secure` over TLS) naming
//! an access key that is looked up again on every request ([`session`]); every state-changing
//! request is a POST carrying the session's CSRF token, from the console's own origin; every
//! answer forbids framing and scripts from elsewhere.

pub mod assets;
mod components;
mod frame;
mod images;
mod json;
mod pipelines;
mod resources;
pub mod session;
mod signin;
mod wizard;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_core::principal::Principal;
use serde_json::Value;

use crate::error::ApiError;
use crate::ops::Op;
use crate::App;

pub use session::{SessionKey, Sessions};

/// Where the console is served.
pub const PREFIX: &str = "/console";

/// True when `path` is the console's.
pub fn owns(path: &str) -> bool {
    path == PREFIX || path.starts_with("/console/")
}

/// What the console needs besides the API's state.
pub struct Console {
    /// Signing in and checking sessions.
    pub sessions: Sessions,
    /// Whether the server speaks TLS (cookies are then `Secure`).
    pub tls: bool,
}

/// A request to a page, by a signed-in session.
pub(crate) struct Ctx {
    pub app: Arc<App>,
    pub session: session::Session,
    pub theme: Option<&'static str>,
    pub query: Vec<(String, String)>,
    pub form: Vec<(String, String)>,
    /// A fragment asked for by htmx, not a whole page.
    pub htmx: bool,
    /// This request's path and query, for forms that come back to it.
    pub here: String,
}

impl Ctx {
    /// The first query member `k`.
    pub fn q(&self, k: &str) -> Option<&str> {
        first(&self.query, k)
    }

    /// The first form member `k`.
    pub fn f(&self, k: &str) -> Option<&str> {
        first(&self.form, k)
    }

    /// Every form member `k`, in order.
    pub fn fs(&self, k: &str) -> Vec<&str> {
        self.form
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn principal(&self) -> &Principal {
        &self.session.principal
    }

    /// Carries out an API operation for the session's principal, with the input checked
    /// against the model as a request's would be.
    pub async fn call(&self, op: Op, input: Value) -> Result<Value, ApiError> {
        let body = serde_json::to_vec(&input).map_err(ApiError::service)?;
        let input = crate::decode(op, "", None, &body)?;
        crate::ops::dispatch(&self.app, self.principal(), op, input).await
    }

    /// The frame of a page titled `title` under navigation entry `nav`.
    pub fn frame(&self, title: impl Into<String>, nav: frame::Nav) -> frame::Frame {
        frame::Frame {
            title: title.into(),
            nav,
            theme: self.theme.unwrap_or(""),
            csrf: self.session.csrf.clone(),
            account: self.principal().account.clone(),
            user: self.principal().user.clone(),
            here: self.here.clone(),
        }
    }
}

fn first<'a>(pairs: &'a [(String, String)], k: &str) -> Option<&'a str> {
    pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// What a page handler answers.
pub(crate) type Page = Result<Response, PageError>;

/// Why a page could not be shown.
#[derive(Debug)]
pub(crate) enum PageError {
    /// An operation's refusal, shown in the page with its code.
    Api(ApiError),
    /// A page or resource that does not exist.
    NotFound(String),
    /// A template that did not render.
    Render(String),
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError::Api(e)
    }
}

impl From<askama::Error> for PageError {
    fn from(e: askama::Error) -> Self {
        PageError::Render(e.to_string())
    }
}

/// Answers one console request.
pub async fn serve(app: Arc<App>, parts: Parts, body: Bytes) -> Response {
    let Some(console) = app.console.as_ref() else {
        return plain(StatusCode::NOT_FOUND, "this server has no console");
    };
    let path = parts.uri.path().to_string();
    let rest = path.strip_prefix(PREFIX).unwrap_or("");
    if let Some(name) = rest.strip_prefix("/assets/") {
        return assets::serve(name);
    }
    let query = crate::query::pairs(parts.uri.query().unwrap_or(""));
    let form = if parts.method == Method::POST {
        crate::query::pairs(std::str::from_utf8(&body).unwrap_or(""))
    } else {
        Vec::new()
    };
    let theme = session::cookie(&parts.headers, frame::THEME_COOKIE).and_then(|t| frame::theme(&t));
    if parts.method == Method::POST && !same_origin(&parts) {
        return plain(
            StatusCode::FORBIDDEN,
            "this form was sent from another site: open the console's page and send it from there",
        );
    }
    let now = chrono::Utc::now().timestamp();
    if rest == "/signin" {
        return signin::serve(console, &parts, &query, &form, theme, now);
    }
    let session = session::cookie(&parts.headers, session::COOKIE)
        .and_then(|c| console.sessions.session(&c, now));
    let Some(session) = session else {
        if parts.method == Method::GET && !is_htmx(&parts) && rest != "/log" {
            let next = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            return redirect(&format!("{PREFIX}/signin?next={}", encode(&next)));
        }
        return plain(
            StatusCode::UNAUTHORIZED,
            "not signed in, or the session ended: sign in again",
        );
    };
    if parts.method == Method::POST {
        let token = parts
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| first(&form, "csrf").map(str::to_string))
            .unwrap_or_default();
        if !Sessions::csrf_ok(&session, &token) {
            return plain(
                StatusCode::FORBIDDEN,
                "this form's CSRF token is missing or belongs to another session: reload the page and send it again",
            );
        }
    }
    let ctx = Ctx {
        app: app.clone(),
        session,
        theme,
        query,
        form,
        htmx: is_htmx(&parts),
        here: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
    };
    let answer = route(&ctx, &parts.method, rest, &parts).await;
    let answer = match answer {
        Some(a) => a,
        None => Err(PageError::NotFound(format!(
            "the console has no page {} {path}",
            parts.method
        ))),
    };
    match answer {
        Ok(r) => r,
        Err(e) => frame::error_page(&ctx, e),
    }
}

async fn route(ctx: &Ctx, method: &Method, rest: &str, parts: &Parts) -> Option<Page> {
    let get = method == Method::GET;
    let post = method == Method::POST;
    Some(match rest {
        "" | "/" if get => Ok(redirect(&format!("{PREFIX}/pipelines"))),
        "/signout" if post => Ok(signin::sign_out()),
        "/theme" if post => Ok(frame::set_theme(ctx)),
        "/pipelines" if get => pipelines::list(ctx).await,
        "/pipeline" if get => pipelines::detail(ctx).await,
        "/pipeline/run" if post => pipelines::run(ctx).await,
        "/pipeline/status" if post => pipelines::set_status(ctx).await,
        "/images" if get => images::list(ctx).await,
        "/image" if get => images::detail(ctx).await,
        "/log" if get => images::log(ctx, parts).await,
        "/components" if get => components::list(ctx).await,
        "/component" if get => components::detail(ctx).await,
        "/components/new" if get => components::new(ctx).await,
        "/components/new" if post => components::create(ctx).await,
        "/components/validate" if post => components::validate(ctx).await,
        "/wizard" if get || post => wizard::serve(ctx).await,
        "/wizard/schedule" if post => wizard::preview_schedule(ctx).await,
        _ => {
            let kind = rest.strip_prefix('/')?;
            return resources::route(ctx, get, kind).await;
        }
    })
}

fn is_htmx(parts: &Parts) -> bool {
    parts.headers.contains_key("hx-request")
}

/// A POST's Origin (or else Referer) is the console's own: the host it was sent to.
fn same_origin(parts: &Parts) -> bool {
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let from = parts
        .headers
        .get(header::ORIGIN)
        .or_else(|| parts.headers.get(header::REFERER))
        .and_then(|h| h.to_str().ok());
    match from {
        // A browser always sends one of them with a form; a client that sends neither is
        // not a browser a page could have tricked, and still needs the CSRF token.
        None => true,
        Some(o) => {
            let rest = o
                .strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
                .unwrap_or("");
            let authority = rest.split('/').next().unwrap_or("");
            !host.is_empty() && authority.eq_ignore_ascii_case(host)
        }
    }
}

/// Percent-encodes a query value.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The response headers every console answer carries.
pub(crate) fn harden(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// An HTML answer.
pub(crate) fn html(status: StatusCode, body: String) -> Response {
    harden(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
    )
}

/// A plain-text answer (for requests that are not page loads).
pub(crate) fn plain(status: StatusCode, text: &str) -> Response {
    harden(
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text.to_string(),
        )
            .into_response(),
    )
}

/// A redirect to a console page, after a form (303: the browser then GETs it).
pub(crate) fn redirect(to: &str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    harden(r)
}

/// `r` with a `Set-Cookie` of `cookie` (a cookie line the console made, always a valid header).
pub(crate) fn set_cookie(mut r: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// A console path that is safe to send a browser back to (no other site).
pub(crate) fn local(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/console/") && !n.contains("//") && !n.contains('\\') => {
            n.to_string()
        }
        _ => format!("{PREFIX}/pipelines"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_paths_are_places_to_go_back_to() {
        assert_eq!(local(Some("/console/images")), "/console/images");
        assert_eq!(local(Some("//evil.example/")), "/console/pipelines");
        assert_eq!(local(Some("/console//evil.example")), "/console/pipelines");
        assert_eq!(local(Some("https://evil.example/")), "/console/pipelines");
        assert_eq!(local(None), "/console/pipelines");
    }

    #[test]
    fn origins_must_be_the_host() {
        let req = |origin: Option<&str>| {
            let mut b = axum::http::Request::builder()
                .method("POST")
                .uri("/console/theme")
                .header("host", "127.0.0.1:8080");
            if let Some(o) = origin {
                b = b.header("origin", o);
            }
            b.body(()).unwrap().into_parts().0
        };
        assert!(same_origin(&req(Some("http://127.0.0.1:8080"))));
        assert!(!same_origin(&req(Some("http://evil.example"))));
        assert!(!same_origin(&req(Some(
            "http://127.0.0.1:8080.evil.example"
        ))));
        assert!(same_origin(&req(None)));
    }
}
