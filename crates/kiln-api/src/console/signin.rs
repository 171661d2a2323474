//! `/console/signin` and `/console/signout`.

use askama::Template;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::Response;

use super::session::{COOKIE, LIFETIME_SECS};
use super::{first, html, local, redirect, set_cookie, Console, PREFIX};

#[derive(Template)]
#[template(path = "console/signin.html")]
struct SignIn<'a> {
    theme: &'a str,
    next: &'a str,
    access_key_id: &'a str,
    problem: &'a str,
}

fn form(theme: Option<&str>, next: &str, id: &str, problem: &str, status: StatusCode) -> Response {
    let page = SignIn {
        theme: theme.unwrap_or(""),
        next,
        access_key_id: id,
        problem,
    };
    match page.render() {
        Ok(b) => html(status, b),
        Err(_) => super::plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the sign-in page did not render",
        ),
    }
}

/// The sign-in form, and signing in with it.
pub fn serve(
    console: &Console,
    parts: &Parts,
    query: &[(String, String)],
    posted: &[(String, String)],
    theme: Option<&'static str>,
    now: i64,
) -> Response {
    let next = local(first(query, "next").or_else(|| first(posted, "next")));
    if parts.method != Method::POST {
        return form(theme, &next, "", "", StatusCode::OK);
    }
    let id = first(posted, "accessKeyId").unwrap_or("").trim();
    let secret = first(posted, "secretAccessKey").unwrap_or("");
    let Some(cookie) = console.sessions.sign_in(id, secret, now) else {
        // The id is kept in the form; which of the two was wrong is not said.
        tracing::info!(access_key_id = %id, "console sign-in refused");
        return form(
            theme,
            &next,
            id,
            "That access key id and secret do not match a key of this server. Check both and try again.",
            StatusCode::UNAUTHORIZED,
        );
    };
    tracing::info!(access_key_id = %id, "console sign-in");
    let secure = if console.tls { "; Secure" } else { "" };
    set_cookie(
        redirect(&next),
        &format!(
            "{COOKIE}={cookie}; Path={PREFIX}; Max-Age={LIFETIME_SECS}; HttpOnly; SameSite=Strict{secure}"
        ),
    )
}

/// Ends the browser's session (the cookie is cleared; a copy of it stays valid until it
/// expires or its access key is deleted, as a signed token does).
pub fn sign_out() -> Response {
    set_cookie(
        redirect(&format!("{PREFIX}/signin")),
        &format!("{COOKIE}=; Path={PREFIX}; Max-Age=0; HttpOnly; SameSite=Strict"),
    )
}
