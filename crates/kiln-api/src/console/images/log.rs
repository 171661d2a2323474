//! `GET /console/log?arn=&from=N`: an image's build log as Server-Sent Events for the image's
//! page, the same stream the API serves at `/kiln/logs` but for a signed-in session.

use axum::http::request::Parts;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::IntoResponse;
use kiln_core::build::log::LogSource;

use super::super::{Ctx, Page};
use crate::error::ApiError;

/// Most lines a page shows when it is first loaded; the rest arrive as events.
const FIRST_LINES: usize = 5000;

/// The whole lines written so far (the last [`FIRST_LINES`] of them, numbered) and the number
/// of the next: what a page shows at once before it follows the rest.
pub async fn written(source: &LogSource) -> (Vec<(u64, String)>, u64) {
    let mut lines = source.lines().await;
    let next = lines.last().map(|(n, _)| n + 1).unwrap_or(0);
    let skip = lines.len().saturating_sub(FIRST_LINES);
    lines.drain(..skip);
    (lines, next)
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
    let source = LogSource::of(ctx.app.records.store(), &rec).await;
    let events = crate::logs::events(ctx.app.clone(), source, rec.arn.clone(), from, Some("line"));
    Ok(super::super::harden(
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response(),
    ))
}
