//! What every page shares: the frame (navigation, account, theme, sign-out) and the error page.

use askama::Template;
use axum::http::StatusCode;
use axum::response::Response;

use super::json::escape;
use super::{html, redirect, Ctx, PageError};

/// The cookie that keeps a browser's theme.
pub const THEME_COOKIE: &str = "kiln_theme";

/// A theme by its cookie value; `None` follows the system's.
pub fn theme(value: &str) -> Option<&'static str> {
    match value {
        "light" => Some("light"),
        "dark" => Some("dark"),
        _ => None,
    }
}

/// The navigation entry a page is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// Pipelines and their pages.
    Pipelines,
    /// Images.
    Images,
    /// Components.
    Components,
    /// Recipes, configurations, lifecycle policies, topics.
    Resources,
    /// The create-pipeline wizard.
    Wizard,
    /// A page of none of them.
    None,
}

/// The frame around a page.
pub struct Frame {
    /// The page's title.
    pub title: String,
    /// Where it is in the navigation.
    pub nav: Nav,
    /// `light`, `dark`, or empty for the system's.
    pub theme: &'static str,
    /// The session's CSRF token.
    pub csrf: String,
    /// The signed-in account.
    pub account: String,
    /// Its user.
    pub user: String,
    /// The page's own path, for the theme form to come back to.
    pub here: String,
}

impl Frame {
    /// True for the navigation entry `name` of the page.
    pub fn is(&self, name: &str) -> bool {
        let n = match self.nav {
            Nav::Pipelines => "pipelines",
            Nav::Images => "images",
            Nav::Components => "components",
            Nav::Resources => "resources",
            Nav::Wizard => "wizard",
            Nav::None => "",
        };
        n == name
    }

    /// The theme a click on the theme button switches to.
    pub fn other_theme(&self) -> &'static str {
        if self.theme == "dark" {
            "light"
        } else {
            "dark"
        }
    }

    /// The headers htmx sends with every request: the CSRF token.
    pub fn hx_headers(&self) -> String {
        serde_json::json!({ "X-CSRF-Token": self.csrf }).to_string()
    }
}

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage {
    frame: Frame,
    status: u16,
    code: String,
    message: String,
}

/// A page that says what went wrong, with the refusal's code; a bare fragment for htmx.
pub fn error_page(ctx: &Ctx, e: PageError) -> Response {
    let (status, code, message) = match e {
        PageError::Api(e) => (e.status, e.code.to_string(), e.message),
        PageError::NotFound(m) => (404, "NotFound".into(), m),
        PageError::Render(m) => {
            tracing::error!(error = %m, "a console page did not render");
            (
                500,
                "ServiceException".into(),
                "the page did not render; the server's log says why".into(),
            )
        }
    };
    let status_code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if ctx.htmx {
        let body = format!(
            "<p role=\"alert\" class=\"refused\"><strong>{}</strong>: {}</p>",
            escape(&code),
            escape(&message)
        );
        return html(status_code, body);
    }
    let page = ErrorPage {
        frame: ctx.frame(code.to_string(), Nav::None),
        status,
        code,
        message,
    };
    match page.render() {
        Ok(b) => html(status_code, b),
        Err(_) => super::plain(status_code, "the error page did not render"),
    }
}

/// Keeps the theme a browser chose, and goes back to the page it was chosen on.
pub fn set_theme(ctx: &Ctx) -> Response {
    let chosen = ctx.f("theme").and_then(theme).unwrap_or("");
    super::set_cookie(
        redirect(&super::local(ctx.f("back"))),
        &format!(
            "{THEME_COOKIE}={chosen}; Path=/console; Max-Age=31536000; SameSite=Strict; HttpOnly"
        ),
    )
}

/// Renders a page template into a 200 answer.
pub fn page(t: &impl Template) -> Result<Response, PageError> {
    Ok(html(StatusCode::OK, t.render()?))
}
