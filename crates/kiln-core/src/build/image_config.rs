//! The OCI configuration of a build's image: the parent's, with the recipe's `imageConfig` on
//! top, kiln's labels, and a history entry per layer.

use chrono::{TimeZone, Utc};

use crate::parent::Parent;
use crate::recipe::Recipe;
use crate::record::ImageRecord;
use crate::store::StoredLayer;

use super::components::Component;

/// The image configuration of `rec`'s image.
pub(crate) fn image_settings(
    recipe: &Recipe,
    rec: &ImageRecord,
    parent: &Parent,
    components: &[Component],
    chain: &[StoredLayer],
    epoch: i64,
) -> kiln_image::ImageSettings {
    let created = Utc.timestamp_opt(epoch, 0).single().unwrap_or(rec.created);
    let pc = parent.config.as_ref().and_then(|c| c.config().clone());
    let c = &recipe.image_config;
    let mut env: Vec<String> = pc
        .as_ref()
        .and_then(|p| p.env().clone())
        .unwrap_or_default();
    for e in &c.env {
        let key = e.split('=').next().unwrap_or("");
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
    if env.is_empty() {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    let mut labels = pc
        .as_ref()
        .and_then(|p| p.labels().clone())
        .unwrap_or_default();
    labels.extend(c.labels.clone());
    labels.insert("org.opencontainers.image.title".into(), recipe.name.clone());
    labels.insert(
        "org.opencontainers.image.version".into(),
        recipe.semantic_version.to_string(),
    );
    if !recipe.description.is_empty() {
        labels.insert(
            "org.opencontainers.image.description".into(),
            recipe.description.clone(),
        );
    }
    labels.insert(
        "org.opencontainers.image.base.name".into(),
        recipe.parent.to_string(),
    );
    labels.insert("dev.kiln.image.arn".into(), rec.arn.clone());
    let mut history: Vec<kiln_image::HistoryEntry> = parent
        .layers
        .iter()
        .map(|_| kiln_image::HistoryEntry {
            created_by: format!("kiln parent {}", recipe.parent),
            comment: None,
            empty_layer: false,
        })
        .collect();
    for c in components.iter().filter(|c| c.has_layer) {
        history.push(kiln_image::HistoryEntry {
            created_by: format!("kiln component {} (build, validate)", c.name),
            comment: Some(c.source.clone()),
            empty_layer: false,
        });
    }
    history.truncate(chain.len());
    kiln_image::ImageSettings {
        entrypoint: c
            .entrypoint
            .clone()
            .or_else(|| pc.as_ref().and_then(|p| p.entrypoint().clone())),
        cmd: c
            .cmd
            .clone()
            .or_else(|| pc.as_ref().and_then(|p| p.cmd().clone())),
        env,
        working_dir: c
            .working_dir
            .clone()
            .or_else(|| pc.as_ref().and_then(|p| p.working_dir().clone())),
        user: c
            .user
            .clone()
            .or_else(|| pc.as_ref().and_then(|p| p.user().clone())),
        labels: labels.into_iter().collect(),
        exposed_ports: c.exposed_ports.clone(),
        architecture: "amd64".into(),
        os: "linux".into(),
        created,
        history,
    }
}
