//! A lifecycle policy as the engine reads it: Image Builder's request shape, typed.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Months, Utc};
use serde::{Deserialize, Serialize};

use crate::resources::{ErrorCode, Invalid, PipelineStatus, Resource, ResourceError};

/// Which images a policy is about (Image Builder's `resourceType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResourceType {
    /// Images with disk outputs (kiln's AMIs).
    AmiImage,
    /// Images with container outputs (OCI layouts and registries).
    ContainerImage,
}

impl ResourceType {
    /// Image Builder's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::AmiImage => "AMI_IMAGE",
            ResourceType::ContainerImage => "CONTAINER_IMAGE",
        }
    }
}

/// What a rule does to the images it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActionType {
    /// Marks the image DEPRECATED (still usable).
    Deprecate,
    /// Marks it DISABLED: no build takes it as a parent.
    Disable,
    /// Removes its artifacts from every region and marks it DELETED.
    Delete,
}

impl ActionType {
    /// Image Builder's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionType::Deprecate => "DEPRECATE",
            ActionType::Disable => "DISABLE",
            ActionType::Delete => "DELETE",
        }
    }

    /// What the CLI prints for it.
    pub fn verb(self) -> &'static str {
        match self {
            ActionType::Deprecate => "deprecate",
            ActionType::Disable => "disable",
            ActionType::Delete => "delete",
        }
    }
}

impl std::fmt::Display for ActionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// How a rule picks images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FilterType {
    /// Older than `value` `unit`s.
    Age,
    /// All but the newest `value`.
    Count,
}

/// A unit of age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TimeUnit {
    /// Days.
    Days,
    /// Weeks.
    Weeks,
    /// Calendar months.
    Months,
    /// Calendar years.
    Years,
}

impl TimeUnit {
    /// `now` minus `n` of this unit (calendar months and years, as people count them).
    pub fn before(self, now: DateTime<Utc>, n: u32) -> DateTime<Utc> {
        let months = |m: u32| {
            now.checked_sub_months(Months::new(m))
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        };
        match self {
            TimeUnit::Days => now - Duration::days(i64::from(n)),
            TimeUnit::Weeks => now - Duration::weeks(i64::from(n)),
            TimeUnit::Months => months(n),
            TimeUnit::Years => months(n.saturating_mul(12)),
        }
    }
}

/// Which of an image's resources an action extends to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IncludeResources {
    /// Disk files (kiln's AMIs); `false` keeps them when the image is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amis: Option<bool>,
    /// Accepted; kiln's disks have no snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<bool>,
    /// Container images (layout tags, registry manifests); `false` keeps them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<bool>,
}

/// A rule's action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    /// What it does.
    #[serde(rename = "type")]
    pub kind: ActionType,
    /// What it extends to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_resources: Option<IncludeResources>,
}

/// A rule's filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleFilter {
    /// AGE or COUNT.
    #[serde(rename = "type")]
    pub kind: FilterType,
    /// Units of age, or images to keep.
    pub value: u32,
    /// The unit of an AGE rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<TimeUnit>,
    /// AGE: the newest this many images are kept whatever their age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_at_least: Option<u32>,
}

/// `lastLaunched` of an AMI exclusion (kiln knows no launches).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastLaunched {
    /// How many units.
    pub value: u32,
    /// The unit.
    pub unit: TimeUnit,
}

/// `exclusionRules.amis`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AmiExclusion {
    /// Public images are kept (kiln shares nothing: excludes none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_public: Option<bool>,
    /// Images distributed to any of these regions are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// Images shared with these accounts are kept (kiln shares nothing: excludes none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_accounts: Vec<String>,
    /// Images launched lately are kept (kiln knows no launches: excludes none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_launched: Option<LastLaunched>,
    /// Images with any of these tags are kept.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "text_map"
    )]
    pub tag_map: BTreeMap<String, String>,
}

/// What a rule never touches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExclusionRules {
    /// Images with any of these tags are kept.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "text_map"
    )]
    pub tag_map: BTreeMap<String, String>,
    /// Rules about the images' disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amis: Option<AmiExclusion>,
}

/// One rule (`policyDetails[i]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// What it does.
    pub action: Action,
    /// Which images.
    pub filter: RuleFilter,
    /// Which images never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusion_rules: Option<ExclusionRules>,
}

/// A recipe whose images a policy is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecipeSelection {
    /// The recipe's name (its images have it).
    pub name: String,
    /// A version or a filter (`1.x.x`).
    pub semantic_version: String,
}

/// `resourceSelection`: by recipe, or by tag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Selection {
    /// Images of these recipes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipes: Vec<RecipeSelection>,
    /// Images with any of these tags.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "text_map"
    )]
    pub tag_map: BTreeMap<String, String>,
}

/// The fields of a stored policy's request the engine reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fields {
    resource_type: ResourceType,
    policy_details: Vec<Rule>,
    resource_selection: Selection,
    #[serde(default)]
    execution_role: String,
}

/// A lifecycle policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Its ARN.
    pub arn: String,
    /// Its name.
    pub name: String,
    /// The account it belongs to (and whose images it acts on).
    pub account: String,
    /// ENABLED policies run on the schedule; any policy runs on demand.
    pub status: PipelineStatus,
    /// Disk images or container images.
    pub resource_type: ResourceType,
    /// Its rules, in order.
    pub rules: Vec<Rule>,
    /// Which images.
    pub selection: Selection,
    /// Stored, not used: kiln needs no role to act on its own regions.
    pub execution_role: String,
}

impl Policy {
    /// The policy a stored resource holds.
    pub fn from_resource(r: &Resource) -> Result<Policy, ResourceError> {
        let f: Fields = serde_json::from_value(r.request.clone()).map_err(|e| {
            ResourceError::from(Invalid::message(
                ErrorCode::InvalidRequest,
                format!("the lifecycle policy {} cannot be read: {e}", r.arn),
            ))
        })?;
        Ok(Policy {
            arn: r.arn.clone(),
            name: r.name.clone(),
            account: r.arn.split(':').nth(4).unwrap_or_default().to_string(),
            status: r.status.unwrap_or(PipelineStatus::Enabled),
            resource_type: f.resource_type,
            rules: f.policy_details,
            selection: f.resource_selection,
            execution_role: f.execution_role,
        })
    }
}

/// A tag map whose values a YAML file may have written as numbers or booleans (`build: 5`):
/// tags are text.
fn text_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, text)
        })
        .collect())
}
