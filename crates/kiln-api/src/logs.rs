//! `GET /kiln/logs?imageBuildVersionArn=ARN`: an image's build log as Server-Sent Events,
//! outside the Image Builder model. Each line is one event whose id is its line number; a
//! client that reconnects with `Last-Event-ID` (or `from=N`) gets the lines after it, none
//! lost or repeated. An `end` event with the image's final state closes the stream.

use std::convert::Infallible;
use std::sync::Arc;

use axum::http::request::Parts;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use kiln_core::build::log::LogSource;
use kiln_core::principal::Principal;

use crate::error::ApiError;
use crate::{query, App};

/// The path of the log stream.
pub const PATH: &str = "/kiln/logs";

/// Answers a log stream request by a signed-in principal.
pub async fn stream(
    app: Arc<App>,
    principal: Principal,
    parts: &Parts,
) -> Result<Response, ApiError> {
    let pairs = query::pairs(parts.uri.query().unwrap_or(""));
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let arn = get("imageBuildVersionArn")
        .ok_or_else(|| ApiError::bad_request("imageBuildVersionArn: is required"))?;
    let rec = crate::ops::images::record(&app, &principal, &arn).await?;
    let from = first_line(parts, get("from").as_deref());
    let source = LogSource::of(app.records.store(), &rec).await;
    let events = events(app, source, rec.arn.clone(), from, None);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The first line a stream sends: the one after `Last-Event-ID` (a reconnecting
/// EventSource), else `from`, else the start.
pub(crate) fn first_line(parts: &Parts, from: Option<&str>) -> u64 {
    parts
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|n| n + 1)
        .or_else(|| from.and_then(|f| f.parse().ok()))
        .unwrap_or(0)
}

/// The log `source` from line `from` on, one event per line whose id is its number (named
/// `name`, or the default `message` event), then an `end` event with the image's final state.
pub(crate) fn events(
    app: Arc<App>,
    source: LogSource,
    arn: String,
    from: u64,
    name: Option<&'static str>,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> {
    let follower = source.follow(from);
    futures_util::stream::unfold(
        (follower, app, arn, false),
        move |(mut f, app, arn, ended)| async move {
            if ended {
                return None;
            }
            let line = f
                .next(|| {
                    let (app, arn) = (app.clone(), arn.clone());
                    async move {
                        matches!(app.records.get(&arn).await, Ok(Some(r)) if !r.state.is_final())
                    }
                })
                .await;
            match line {
                Some((n, text)) => {
                    let mut event = Event::default().id(n.to_string()).data(text);
                    if let Some(name) = name {
                        event = event.event(name);
                    }
                    Some((Ok(event), (f, app, arn, false)))
                }
                None => {
                    let state = match app.records.get(&arn).await {
                        Ok(Some(r)) => r.state.as_str().to_string(),
                        _ => "DELETED".into(),
                    };
                    Some((
                        Ok(Event::default().event("end").data(state)),
                        (f, app, arn, true),
                    ))
                }
            }
        },
    )
}
