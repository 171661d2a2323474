//! Topics: where an account's notifications go. A topic is kiln's stand-in for the SNS topic
//! an infrastructure configuration's `snsTopicArn` names: one webhook endpoint, the secrets its
//! deliveries are signed with, and whether the endpoint still wants them.
//!
//! A topic is a row of the state store (`Kind::Topic`), so that an infrastructure
//! configuration's reference to it blocks its deletion the way every other reference does.
//! Its secrets are in the row's body, in `$KILN_HOME/kiln.db`, which kiln keeps mode 0600
//! (`state::Store::open`).

use chrono::{DateTime, Utc};
use kiln_store::{Filter, Kind, Row, StoreError as DbError, Update};
use serde::{Deserialize, Serialize};

use super::sign::Secret;
use crate::principal::Principal;
use crate::resources::{ErrorCode, Invalid, Reference, Resource, ResourceError};
use crate::state::{to_json, Store};

/// Whether a topic's endpoint still takes deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TopicState {
    /// Deliveries go out.
    Active,
    /// The endpoint answered 410 Gone: nothing more is sent until the topic is made again.
    Gone,
}

impl TopicState {
    /// The word the API and the store's `state` column use.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicState::Active => "ACTIVE",
            TopicState::Gone => "GONE",
        }
    }
}

impl std::fmt::Display for TopicState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A topic as stored (its secrets included: see [`TopicView`] for what may be shown).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Topic {
    /// `arn:kiln:imagebuilder:local:ACCOUNT:topic/NAME`.
    pub arn: String,
    /// Its name, as created.
    pub name: String,
    /// Where deliveries are POSTed.
    pub webhook_url: String,
    /// Signing secrets, oldest first; every one signs each delivery.
    pub secrets: Vec<Secret>,
    /// Whether deliveries go out.
    pub state: TopicState,
    /// Why it is GONE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// Who made it (the user name).
    pub owner: String,
    /// When.
    pub date_created: DateTime<Utc>,
    /// When it last changed (a secret added or removed, GONE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_updated: Option<DateTime<Utc>>,
}

/// Only the secrets' hints: a `Topic` in a log line or a panic shows no key.
impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic")
            .field("arn", &self.arn)
            .field("webhook_url", &self.webhook_url)
            .field("secrets", &self.secrets)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// What may be shown of a topic: everything but its secrets' keys (each as a hint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicView {
    /// Its ARN.
    pub arn: String,
    /// Its name.
    pub name: String,
    /// Where deliveries go.
    pub webhook_url: String,
    /// ACTIVE or GONE.
    pub state: TopicState,
    /// Why it is GONE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// `whsec_…LAST4` of each secret, oldest first.
    pub secrets: Vec<String>,
    /// Who made it.
    pub owner: String,
    /// When.
    pub date_created: DateTime<Utc>,
    /// When it last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_updated: Option<DateTime<Utc>>,
}

impl Topic {
    /// What may be shown of it.
    pub fn view(&self) -> TopicView {
        TopicView {
            arn: self.arn.clone(),
            name: self.name.clone(),
            webhook_url: self.webhook_url.clone(),
            state: self.state,
            state_reason: self.state_reason.clone(),
            secrets: self.secrets.iter().map(Secret::hint).collect(),
            owner: self.owner.clone(),
            date_created: self.date_created,
            date_updated: self.date_updated,
        }
    }
}

/// The most secrets a topic keeps: rotation needs two; a few more leave room for slow
/// receivers.
pub const MAX_SECRETS: usize = 5;

/// An invalid field of a topic request.
fn invalid(field: &str, message: impl Into<String>) -> ResourceError {
    Invalid::message(ErrorCode::InvalidParameterValue, message)
        .about(field)
        .into()
}

/// Checks a webhook URL: http or https with a host (loopback allowed: receivers often sit
/// beside kiln).
pub fn check_url(url: &str) -> Result<(), ResourceError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| invalid("webhookUrl", format!("`{url}` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid(
            "webhookUrl",
            format!("`{url}` is not an http:// or https:// URL with a host"),
        ));
    }
    Ok(())
}

/// The topic an infrastructure configuration names (its `snsTopicArn`, resolved when it was
/// stored), as a kiln topic ARN.
pub fn topic_of(configuration: &Resource) -> Option<&str> {
    configuration
        .uses
        .iter()
        .map(String::as_str)
        .find(|u| Reference::parse(u, &[Kind::Topic]).is_ok())
}

/// The ACTIVE topics the infrastructure configurations among `configurations` (ARNs of any
/// kind; the others are passed over) name, in `principal`'s account: where the messages of a
/// build, of a pipeline or of a lifecycle action on an image go.
pub async fn topics_named(
    store: &Store,
    principal: &Principal,
    configurations: &[String],
) -> Vec<String> {
    let resources = crate::resources::Resources::new(store.clone());
    let topics = Topics::new(store.clone());
    let mut out = Vec::new();
    for used in configurations {
        let Ok(c) = resources
            .get(principal, used, &[Kind::InfrastructureConfiguration])
            .await
        else {
            continue;
        };
        let Some(arn) = topic_of(&c) else {
            continue;
        };
        match topics.by_arn(arn).await {
            Ok(Some(t)) if t.state == TopicState::Active => out.push(t.arn),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(topic = %arn, error = %e, "cannot read the topic; no notification")
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// What an `snsTopicArn` names, as a reference to a kiln topic: a kiln topic ARN
/// (`arn:kiln:imagebuilder:REGION:ACCOUNT:topic/NAME`), or the SNS shape AWS users already
/// write (`arn:aws:sns:REGION:ACCOUNT:NAME`), which names the kiln topic NAME of ACCOUNT.
pub fn parse_topic_arn(text: &str) -> Result<Reference, String> {
    let parts: Vec<&str> = text.splitn(6, ':').collect();
    if let ["arn", partition, "sns", _region, account, name] = parts.as_slice() {
        let ok_name = !name.is_empty()
            && name.len() <= 256
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if partition.starts_with("aws") && ok_name {
            return Ok(Reference {
                kind: Kind::Topic,
                account: Some((*account).to_string()),
                name: (*name).to_string(),
                version: None,
                build: None,
            });
        }
        return Err(format!(
            "`{text}` is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)"
        ));
    }
    if !text.starts_with("arn:") {
        return Err(format!(
            "`{text}` is not a topic ARN: give the ARN `kiln topic create` printed, or \
             arn:aws:sns:REGION:ACCOUNT:NAME"
        ));
    }
    Reference::parse(text, &[Kind::Topic])
}

/// An account's topics in the state store.
#[derive(Debug, Clone)]
pub struct Topics {
    store: Store,
}

impl Topics {
    /// The topics of a store.
    pub fn new(store: Store) -> Topics {
        Topics { store }
    }

    /// Makes a topic; with no secrets given, one is generated. The answer holds the secrets:
    /// the only time they are handed out.
    pub async fn create(
        &self,
        principal: &Principal,
        name: &str,
        webhook_url: &str,
        secrets: &[String],
    ) -> Result<Topic, ResourceError> {
        if !crate::recipe::is_name(name) {
            return Err(invalid(
                "name",
                format!("`{name}` is not a valid topic name: use up to 128 letters, digits, `-`, `_` and `.`"),
            ));
        }
        check_url(webhook_url)?;
        if secrets.len() > MAX_SECRETS {
            return Err(invalid(
                "secrets",
                format!("a topic keeps at most {MAX_SECRETS} secrets"),
            ));
        }
        let mut parsed = Vec::new();
        for (i, s) in secrets.iter().enumerate() {
            parsed.push(
                Secret::parse(s).map_err(|e| invalid(&format!("secrets[{i}]"), e.to_string()))?,
            );
        }
        if parsed.is_empty() {
            parsed.push(Secret::generate().map_err(|e| invalid("secrets", e.to_string()))?);
        }
        let topic = Topic {
            arn: crate::resources::arn(principal, Kind::Topic, name, None, None),
            name: name.to_string(),
            webhook_url: webhook_url.to_string(),
            secrets: parsed,
            state: TopicState::Active,
            state_reason: None,
            owner: principal.user.clone(),
            date_created: Utc::now(),
            date_updated: None,
        };
        let mut row = crate::state::row(Kind::Topic, topic.arn.clone(), topic.name.clone());
        row.owner = topic.owner.clone();
        row.state = Some(topic.state.as_str().to_string());
        row.digest = crate::store::sha256_hex(topic.webhook_url.as_bytes());
        row.created_ms = crate::state::millis(topic.date_created);
        row.summary = to_json(&topic.view())?;
        row.body = to_json(&topic)?;
        match self.store.db().create(row, Vec::new(), None).await {
            Ok(_) => Ok(topic),
            Err(DbError::AlreadyExists { .. }) => Err(ResourceError::Exists(format!(
                "topic {name} already exists: `kiln topic get {name}` shows it; delete it first \
                 to make it again"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The topic a reference (its ARN, an SNS-shaped ARN, or its name) names in `principal`'s
    /// account.
    pub async fn get(
        &self,
        principal: &Principal,
        reference: &str,
    ) -> Result<Topic, ResourceError> {
        let r = if reference.starts_with("arn:") {
            parse_topic_arn(reference).map_err(ResourceError::BadReference)?
        } else {
            Reference::named(Kind::Topic, reference)
        };
        let missing = || {
            ResourceError::NotFound(format!(
                "no topic matches `{reference}` (`kiln topic list` shows what exists)"
            ))
        };
        if !r.visible_to(principal) {
            return Err(missing());
        }
        let arn = r.to_arn(principal);
        self.by_arn(&arn).await?.ok_or_else(missing)
    }

    /// A topic by its kiln ARN, of whichever account.
    pub async fn by_arn(&self, arn: &str) -> Result<Option<Topic>, ResourceError> {
        match self.store.db().get(arn).await? {
            Some(row) if row.kind == Kind::Topic => Ok(Some(self.parse(&row)?)),
            _ => Ok(None),
        }
    }

    /// `principal`'s topics, by name.
    pub async fn list(&self, principal: &Principal) -> Result<Vec<TopicView>, ResourceError> {
        let f = Filter {
            kind: Some(Kind::Topic),
            arn_prefix: Some(principal.arn_prefix()),
            ..Filter::default()
        };
        let mut out = Vec::new();
        for row in self.store.db().list(&f).await? {
            out.push(
                self.store
                    .decode(&row.summary, &format!("the summary of {}", row.arn))?,
            );
        }
        Ok(out)
    }

    /// Deletes a topic unless an infrastructure configuration names it; its undelivered
    /// messages are dropped.
    pub async fn delete(
        &self,
        principal: &Principal,
        reference: &str,
    ) -> Result<Topic, ResourceError> {
        let topic = self.get(principal, reference).await?;
        match self.store.db().delete(&topic.arn).await {
            Ok(()) => {}
            Err(DbError::InUse { users, .. }) => {
                return Err(ResourceError::InUse(format!(
                    "topic {} is named by {}: change their snsTopicArn first",
                    topic.arn,
                    users.join(", ")
                )))
            }
            Err(e) => return Err(e.into()),
        }
        let now = crate::state::millis(Utc::now());
        self.store
            .db()
            .drop_topic_messages(&topic.arn, now, "the topic was deleted")
            .await?;
        Ok(topic)
    }

    /// Adds a new secret (generated, or given) to a topic; every secret signs each delivery
    /// until it is removed, so receivers can move over at their pace. With `remove_old`, only
    /// the new one is kept. Returns the topic with the new secret last.
    pub async fn rotate(
        &self,
        principal: &Principal,
        reference: &str,
        secret: Option<&str>,
        remove_old: bool,
    ) -> Result<Topic, ResourceError> {
        let mut topic = self.get(principal, reference).await?;
        let new = match secret {
            Some(s) => Secret::parse(s).map_err(|e| invalid("secret", e.to_string()))?,
            None => Secret::generate().map_err(|e| invalid("secret", e.to_string()))?,
        };
        if remove_old {
            topic.secrets.clear();
        }
        if topic.secrets.contains(&new) {
            return Err(invalid("secret", "the topic has this secret already"));
        }
        topic.secrets.push(new);
        if topic.secrets.len() > MAX_SECRETS {
            return Err(invalid(
                "secret",
                format!(
                    "a topic keeps at most {MAX_SECRETS} secrets: rotate with removeOld once \
                     receivers have the newest"
                ),
            ));
        }
        topic.date_updated = Some(Utc::now());
        self.save(&topic).await?;
        Ok(topic)
    }

    /// Marks a topic GONE (its endpoint answered 410): nothing more is delivered to it.
    pub async fn mark_gone(&self, arn: &str, reason: &str) -> Result<(), ResourceError> {
        let Some(mut topic) = self.by_arn(arn).await? else {
            return Ok(());
        };
        topic.state = TopicState::Gone;
        topic.state_reason = Some(reason.to_string());
        topic.date_updated = Some(Utc::now());
        self.save(&topic).await
    }

    async fn save(&self, topic: &Topic) -> Result<(), ResourceError> {
        self.store
            .db()
            .update(
                &topic.arn,
                Update {
                    state: Some(topic.state.as_str().to_string()),
                    summary: Some(to_json(&topic.view())?),
                    body: Some(to_json(topic)?),
                    ..Update::default()
                },
            )
            .await?;
        Ok(())
    }

    fn parse(&self, row: &Row) -> Result<Topic, ResourceError> {
        Ok(self
            .store
            .decode(&row.body, &format!("the topic {}", row.arn))?)
    }
}
