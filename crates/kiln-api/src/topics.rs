//! kiln's own paths for topics, outside the Image Builder model (which has no notifications
//! of its own: AWS sends them through SNS), signed like every other request:
//!
//! `PUT /kiln/CreateTopic`, `GET /kiln/GetTopic?topicArn=`, `POST /kiln/ListTopics`,
//! `DELETE /kiln/DeleteTopic?topicArn=`, `PUT /kiln/RotateTopicSecret`,
//! `GET /kiln/ListTopicMessages?topicArn=`. Members come from the JSON body and the query
//! string alike; errors are Image Builder's exceptions. Secrets are answered by CreateTopic
//! and RotateTopicSecret only, once.

use axum::http::Method;
use kiln_core::notify::{Topic, TopicView, Topics};
use kiln_core::principal::Principal;
use kiln_store::Queued;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::ops::view::date;
use crate::{query, App};

/// Where kiln's own topic operations live.
pub const PREFIX: &str = "/kiln/";

/// A topic operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicOp {
    /// `PUT /kiln/CreateTopic` {name, webhookUrl, secrets?}.
    Create,
    /// `GET /kiln/GetTopic?topicArn=`.
    Get,
    /// `POST /kiln/ListTopics`.
    List,
    /// `DELETE /kiln/DeleteTopic?topicArn=`.
    Delete,
    /// `PUT /kiln/RotateTopicSecret` {topicArn, secret?, removeOld?}.
    Rotate,
    /// `GET /kiln/ListTopicMessages?topicArn=&maxResults=`.
    Messages,
}

impl TopicOp {
    const ALL: [(TopicOp, Method, &'static str); 6] = [
        (TopicOp::Create, Method::PUT, "CreateTopic"),
        (TopicOp::Get, Method::GET, "GetTopic"),
        (TopicOp::List, Method::POST, "ListTopics"),
        (TopicOp::Delete, Method::DELETE, "DeleteTopic"),
        (TopicOp::Rotate, Method::PUT, "RotateTopicSecret"),
        (TopicOp::Messages, Method::GET, "ListTopicMessages"),
    ];

    /// The operation a method and path ask for, if it is one of these.
    pub fn route(method: &Method, path: &str) -> Option<TopicOp> {
        let name = path.strip_prefix(PREFIX)?;
        Self::ALL
            .iter()
            .find(|(_, m, n)| *n == name && m == method)
            .map(|(op, _, _)| *op)
    }
}

/// The request's members: the JSON body's, then the query string's.
fn input(query_string: &str, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let mut members = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) => o,
            Ok(_) => {
                return Err(ApiError::bad_request(
                    "the request body must be a JSON object",
                ))
            }
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "the request body is not JSON: {e}"
                )))
            }
        }
    };
    for (k, v) in query::pairs(query_string) {
        members.entry(k).or_insert(Value::String(v));
    }
    Ok(members)
}

fn text<'a>(m: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!("{key}: must be a string"))),
    }
}

fn required<'a>(m: &'a Map<String, Value>, key: &str) -> Result<&'a str, ApiError> {
    text(m, key)?.ok_or_else(|| ApiError::bad_request(format!("{key}: is required")))
}

/// A topic as answered: never its secrets, only their hints.
fn view(v: &TopicView) -> Value {
    let mut o = json!({
        "arn": v.arn,
        "name": v.name,
        "webhookUrl": v.webhook_url,
        "state": v.state.as_str(),
        "secrets": v.secrets,
        "owner": v.owner,
        "dateCreated": date(v.date_created),
    });
    if let Some(r) = &v.state_reason {
        o["stateReason"] = json!(r);
    }
    if let Some(u) = v.date_updated {
        o["dateUpdated"] = json!(date(u));
    }
    o
}

fn ms_date(ms: i64) -> Value {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| json!(date(t)))
        .unwrap_or(Value::Null)
}

/// A message's delivery as ListTopicMessages answers it.
fn message(q: &Queued) -> Value {
    let when = if q.state == kiln_store::MessageState::Pending {
        "nextAttemptAt"
    } else {
        "endedAt"
    };
    let mut o = json!({
        "messageId": q.message.id,
        "event": q.message.event,
        "state": q.state.as_str().to_ascii_uppercase(),
        "attempts": q.attempts,
        "createdAt": ms_date(q.message.created_ms),
        when: ms_date(q.next_ms),
    });
    if let Some(e) = &q.last_error {
        o["lastError"] = json!(e);
    }
    o
}

/// The answer that hands out secrets: the topic and the full text of `secrets`.
fn with_secrets(topic: &Topic, secrets: &[&kiln_core::notify::Secret]) -> Value {
    json!({
        "topicArn": topic.arn,
        "topic": view(&topic.view()),
        "secrets": secrets.iter().map(|s| s.expose()).collect::<Vec<_>>(),
    })
}

/// Carries out a topic operation for `principal`.
pub async fn serve(
    app: &App,
    principal: &Principal,
    op: TopicOp,
    query_string: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let m = input(query_string, body)?;
    let topics = Topics::new(app.resources.store().clone());
    match op {
        TopicOp::Create => {
            let secrets: Vec<String> = match m.get("secrets") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| i.as_str().map(str::to_string))
                    .collect::<Option<_>>()
                    .ok_or_else(|| ApiError::bad_request("secrets: must be a list of strings"))?,
                Some(_) => return Err(ApiError::bad_request("secrets: must be a list of strings")),
            };
            let topic = topics
                .create(
                    principal,
                    required(&m, "name")?,
                    required(&m, "webhookUrl")?,
                    &secrets,
                )
                .await?;
            tracing::info!(topic = %topic.arn, "topic created");
            Ok(with_secrets(
                &topic,
                &topic.secrets.iter().collect::<Vec<_>>(),
            ))
        }
        TopicOp::Get => {
            let topic = topics.get(principal, required(&m, "topicArn")?).await?;
            Ok(json!({"topic": view(&topic.view())}))
        }
        TopicOp::List => {
            let list: Vec<Value> = topics.list(principal).await?.iter().map(view).collect();
            Ok(json!({"topics": list}))
        }
        TopicOp::Delete => {
            let topic = topics.delete(principal, required(&m, "topicArn")?).await?;
            tracing::info!(topic = %topic.arn, "topic deleted");
            Ok(json!({"topicArn": topic.arn}))
        }
        TopicOp::Rotate => {
            let remove_old = match m.get("removeOld") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(ApiError::bad_request("removeOld: must be a boolean")),
            };
            let topic = topics
                .rotate(
                    principal,
                    required(&m, "topicArn")?,
                    text(&m, "secret")?,
                    remove_old,
                )
                .await?;
            tracing::info!(topic = %topic.arn, secrets = topic.secrets.len(), "topic secret added");
            let newest: Vec<_> = topic.secrets.last().into_iter().collect();
            Ok(with_secrets(&topic, &newest))
        }
        TopicOp::Messages => {
            let topic = topics.get(principal, required(&m, "topicArn")?).await?;
            let bad = || ApiError::invalid("maxResults: must be 1 to 100");
            let limit = match m.get("maxResults") {
                None | Some(Value::Null) => 25,
                Some(Value::String(s)) => s.parse::<u64>().map_err(|_| bad())?,
                Some(Value::Number(n)) => n.as_u64().ok_or_else(bad)?,
                Some(_) => return Err(bad()),
            };
            let limit = u32::try_from(limit)
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(bad)?;
            let queued = app
                .resources
                .store()
                .db()
                .messages(&topic.arn, limit)
                .await
                .map_err(ApiError::service)?;
            Ok(
                json!({"topicArn": topic.arn, "messages": queued.iter().map(message).collect::<Vec<_>>()}),
            )
        }
    }
}
