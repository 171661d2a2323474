//! `GET /kiln/logs?imageBuildVersionArn=ARN`: an image's build log as Server-Sent Events,
//! outside the Image Builder model. Each line is one event whose id is its line number; a
//! client that reconnects with `Last-Event-ID` (or `from=N`) gets the lines after it, none
//! lost or repeated. An `end` event with the image's final state closes the stream.

use std::convert::Infallible;
use std::sync::Arc;

use axum::http::request::Parts;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use kiln_core::build::log::Follower;
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
    // The first line not seen yet: after the last event id, else `from`, else the start.
    let from = parts
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|n| n + 1)
        .or_else(|| get("from").and_then(|f| f.parse().ok()))
        .unwrap_or(0);
    let follower = Follower::new(&rec.logs, from);
    let arn = rec.arn.clone();
    let events = futures_util::stream::unfold(
        (follower, app, principal, arn, false),
        |(mut f, app, principal, arn, ended)| async move {
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
            let event = match line {
                Some((n, text)) => Event::default().id(n.to_string()).data(text),
                None => {
                    let state = match app.records.get(&arn).await {
                        Ok(Some(r)) => r.state.as_str().to_string(),
                        _ => "DELETED".into(),
                    };
                    return Some((
                        Ok::<Event, Infallible>(Event::default().event("end").data(state)),
                        (f, app, principal, arn, true),
                    ));
                }
            };
            Some((Ok(event), (f, app, principal, arn, false)))
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
