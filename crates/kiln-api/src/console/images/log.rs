//! `GET /console/log?arn=&from=N`: an image's build log as Server-Sent Events for the image's
//! page, the same stream the API serves at `/kiln/logs` but for a signed-in session.

use axum::http::request::Parts;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::IntoResponse;
use kiln_core::build::log::BUILD_LOG;

use super::super::{Ctx, Page};
use crate::error::ApiError;

/// Most lines a page shows when it is first loaded; the rest arrive as events.
const FIRST_LINES: usize = 5000;

/// The whole lines written so far (the last [`FIRST_LINES`] of them, numbered) and the number
/// of the next: what a page shows at once before it follows the rest.
pub fn written(logs: &std::path::Path) -> (Vec<(u64, String)>, u64) {
    let text = std::fs::read_to_string(logs.join(BUILD_LOG)).unwrap_or_default();
    // A line still being written (no newline yet) is left for the stream.
    let whole = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let lines: Vec<&str> = whole.lines().collect();
    let total = lines.len();
    let skip = total.saturating_sub(FIRST_LINES);
    let shown = lines
        .iter()
        .enumerate()
        .skip(skip)
        .map(|(n, l)| (n as u64, (*l).to_string()))
        .collect();
    (shown, total as u64)
}

/// The log from line `from` on (or the line after `Last-Event-ID`), one `line` event per line
/// whose id is its number, then an `end` event with the image's final state.
pub async fn stream(ctx: &Ctx, parts: &Parts) -> Page {
    let arn = ctx
        .q("arn")
        .ok_or_else(|| ApiError::bad_request("arn: is required"))?
        .to_string();
    let rec = crate::ops::images::record(&ctx.app, ctx.principal(), &arn).await?;
    let from = crate::logs::first_line(parts, ctx.q("from"));
    let events = crate::logs::events(
        ctx.app.clone(),
        &rec.logs,
        rec.arn.clone(),
        from,
        Some("line"),
    );
    Ok(super::super::harden(
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response(),
    ))
}
