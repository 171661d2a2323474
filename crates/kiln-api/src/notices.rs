//! What a build's final record tells its topic: the Image object, as GetImage answers it (and
//! as SNS carries Image Builder's notifications), in a Standard Webhooks payload. kiln-core's
//! build calls this through its [`Notices`] hook, so that it needs no view of its own.

use async_trait::async_trait;
use kiln_core::notify::{self, Notices};
use kiln_core::principal::Principal;
use kiln_core::record::ImageRecord;
use kiln_core::resources::Resources;
use kiln_core::state::Store;
use kiln_store::Message;

use crate::model::Model;

/// The notices of image builds: `image.available` and `image.failed` to the topic of the
/// build's infrastructure configuration.
pub struct ImageNotices {
    resources: Resources,
}

impl ImageNotices {
    /// Notices over a store.
    pub fn new(store: Store) -> ImageNotices {
        ImageNotices {
            resources: Resources::new(store),
        }
    }
}

#[async_trait]
impl Notices for ImageNotices {
    async fn of_final(&self, rec: &ImageRecord, now_ms: i64) -> Vec<Message> {
        let Some(event) = notify::image_event(rec.state) else {
            return Vec::new();
        };
        let principal = Principal::new(rec.account.clone(), rec.owner.clone());
        let topics =
            notify::topics_named(self.resources.store(), &principal, &rec.configurations).await;
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
