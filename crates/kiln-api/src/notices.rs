//! What a build's final record tells its topic: the Image object, as GetImage answers it (and
//! as SNS carries Image Builder's notifications), in a Standard Webhooks payload. kiln-core's
//! build calls this through its [`Notices`] hook, so that it needs no view of its own.

use async_trait::async_trait;
use kiln_core::notify::{self, Notices, TopicState, Topics};
use kiln_core::principal::Principal;
use kiln_core::record::ImageRecord;
use kiln_core::resources::Resources;
use kiln_core::state::Store;
use kiln_store::{Kind, Message};

use crate::model::Model;

/// The notices of image builds: `image.available` and `image.failed` to the topic of the
/// build's infrastructure configuration.
pub struct ImageNotices {
    resources: Resources,
    topics: Topics,
}

impl ImageNotices {
    /// Notices over a store.
    pub fn new(store: Store) -> ImageNotices {
        ImageNotices {
            resources: Resources::new(store.clone()),
            topics: Topics::new(store),
        }
    }

    /// The ACTIVE topics the build's infrastructure configurations name.
    async fn topics(&self, principal: &Principal, rec: &ImageRecord) -> Vec<String> {
        let mut out = Vec::new();
        for used in &rec.configurations {
            let Ok(c) = self
                .resources
                .get(principal, used, &[Kind::InfrastructureConfiguration])
                .await
            else {
                continue;
            };
            let Some(arn) = notify::topic_of(&c) else {
                continue;
            };
            match self.topics.by_arn(arn).await {
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
}

#[async_trait]
impl Notices for ImageNotices {
    async fn of_final(&self, rec: &ImageRecord, now_ms: i64) -> Vec<Message> {
        let Some(event) = notify::image_event(rec.state) else {
            return Vec::new();
        };
        let principal = Principal::new(rec.account.clone(), rec.owner.clone());
        let topics = self.topics(&principal, rec).await;
        if topics.is_empty() {
            return Vec::new();
        }
        let image = crate::ops::images::image_object(&self.resources, &principal, rec).await;
        let data = Model::get().project("Image", image);
        topics
            .iter()
            .map(|t| notify::message(t, event, &rec.arn, &data, now_ms))
            .collect()
    }
}
