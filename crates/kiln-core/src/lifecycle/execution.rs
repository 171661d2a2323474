//! Lifecycle executions: what one run of a policy did to each image, kept in the store as
//! rows of kind `lifecycle-execution` (the row's `pipeline` column holds the policy's ARN, the
//! column that says what made a row).

use chrono::{DateTime, Utc};
use kiln_store::{Filter, Kind, Order};
use serde::{Deserialize, Serialize};

use super::policy::ActionType;
use crate::principal::Principal;
use crate::resources::ResourceError;
use crate::state::{to_json, Store};

/// How an execution ended (Image Builder's `LifecycleExecutionStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionStatus {
    /// Every action it took succeeded (skipped images count as handled).
    Success,
    /// An action failed; the resources say which.
    Failed,
}

impl ExecutionStatus {
    /// Image Builder's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Success => "SUCCESS",
            ExecutionStatus::Failed => "FAILED",
        }
    }
}

/// How one image's action went (Image Builder's `LifecycleExecutionResourceStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResourceStatus {
    /// Done (or, in a dry run, would be done).
    Success,
    /// Not done, and why is in `reason` (something still uses the image).
    Skipped,
    /// Tried and failed; `reason` says what is left.
    Failed,
}

impl ResourceStatus {
    /// Image Builder's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceStatus::Success => "SUCCESS",
            ResourceStatus::Skipped => "SKIPPED",
            ResourceStatus::Failed => "FAILED",
        }
    }
}

/// What an execution did to one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionResource {
    /// The image build's ARN.
    pub image_arn: String,
    /// The action the rules chose.
    pub action: ActionType,
    /// Which rule chose it, and why.
    pub action_reason: String,
    /// How it went.
    pub status: ResourceStatus,
    /// Why it was skipped or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The regions the image was in.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Its container images' references (skopeo's `oci:DIR:TAG`, `HOST/REPO:TAG`).
    #[serde(default)]
    pub image_uris: Vec<String>,
    /// What a DELETE removed (`REGION: WHAT`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// When its action started.
    pub start_time: DateTime<Utc>,
    /// When it ended.
    pub end_time: DateTime<Utc>,
}

/// One run of a lifecycle policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    /// `lce-` and a UUID, as Image Builder names them.
    pub id: String,
    /// The policy.
    pub policy_arn: String,
    /// The account.
    pub account: String,
    /// A dry run: nothing was changed, the resources say what would have been.
    #[serde(default)]
    pub dry_run: bool,
    /// How it ended.
    pub status: ExecutionStatus,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it started.
    pub start_time: DateTime<Utc>,
    /// When it ended.
    pub end_time: DateTime<Utc>,
    /// Every image an action was chosen for, in the order they were handled.
    pub resources: Vec<ExecutionResource>,
}

impl Execution {
    /// A new execution id (`lce-` and a UUID).
    pub fn new_id() -> String {
        format!("lce-{}", uuid::Uuid::new_v4())
    }

    /// The store key of an execution of an account.
    pub fn key(account: &str, id: &str) -> String {
        format!(
            "arn:kiln:imagebuilder:{}:{account}:{}/{id}",
            crate::principal::LOCAL_REGION,
            Kind::LifecycleExecution
        )
    }

    /// Whether any image was acted on (Image Builder's `hasImpactedResources`).
    pub fn has_impacted_resources(&self) -> bool {
        self.resources
            .iter()
            .any(|r| r.status == ResourceStatus::Success)
    }
}

/// The short form an execution's row keeps for lists.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    id: String,
    policy_arn: String,
    status: ExecutionStatus,
    images: Vec<String>,
}

/// Executions kept in a store.
#[derive(Debug, Clone)]
pub struct Executions {
    store: Store,
}

impl Executions {
    /// The executions of a store.
    pub fn new(store: Store) -> Self {
        Executions { store }
    }

    /// Stores a finished execution.
    pub async fn save(&self, e: &Execution) -> Result<(), ResourceError> {
        let key = Execution::key(&e.account, &e.id);
        let mut row = crate::state::row(Kind::LifecycleExecution, key, e.id.clone());
        row.owner = e.account.clone();
        row.state = Some(e.status.as_str().to_string());
        row.pipeline = Some(e.policy_arn.clone());
        row.digest = e.id.clone();
        row.created_ms = crate::state::millis(e.start_time);
        row.summary = to_json(&Summary {
            id: e.id.clone(),
            policy_arn: e.policy_arn.clone(),
            status: e.status,
            images: e.resources.iter().map(|r| r.image_arn.clone()).collect(),
        })?;
        row.body = to_json(e)?;
        self.store.db().create(row, Vec::new(), None).await?;
        Ok(())
    }

    /// One execution of `principal`'s account.
    pub async fn get(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<Option<Execution>, ResourceError> {
        let Some(row) = self
            .store
            .db()
            .get(&Execution::key(&principal.account, id))
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(self.store.decode(
            &row.body,
            &format!("the lifecycle execution {id}"),
        )?))
    }

    /// The executions of a policy, newest first.
    pub async fn of_policy(
        &self,
        principal: &Principal,
        policy_arn: &str,
    ) -> Result<Vec<Execution>, ResourceError> {
        self.list(principal, Some(policy_arn), None).await
    }

    /// The executions that acted on an image, newest first.
    pub async fn of_image(
        &self,
        principal: &Principal,
        image_arn: &str,
    ) -> Result<Vec<Execution>, ResourceError> {
        self.list(principal, None, Some(image_arn)).await
    }

    /// When a policy last ran (Image Builder's `dateLastRun`).
    pub async fn last_run(
        &self,
        principal: &Principal,
        policy_arn: &str,
    ) -> Result<Option<DateTime<Utc>>, ResourceError> {
        let f = Filter {
            kind: Some(Kind::LifecycleExecution),
            pipeline: Some(policy_arn.to_string()),
            arn_prefix: Some(principal.arn_prefix()),
            order: Order::Newest,
            limit: Some(1),
            ..Filter::default()
        };
        let rows = self.store.db().list(&f).await?;
        Ok(rows
            .first()
            .and_then(|r| DateTime::<Utc>::from_timestamp_millis(r.created_ms)))
    }

    async fn list(
        &self,
        principal: &Principal,
        policy: Option<&str>,
        image: Option<&str>,
    ) -> Result<Vec<Execution>, ResourceError> {
        let f = Filter {
            kind: Some(Kind::LifecycleExecution),
            pipeline: policy.map(str::to_string),
            arn_prefix: Some(principal.arn_prefix()),
            order: Order::Newest,
            ..Filter::default()
        };
        let mut out = Vec::new();
        for row in self.store.db().list(&f).await? {
            if let Some(image) = image {
                let s: Summary = self
                    .store
                    .decode(&row.summary, &format!("the summary of {}", row.arn))?;
                if !s.images.iter().any(|i| i == image) {
                    continue;
                }
            }
            if let Some(row) = self.store.db().get(&row.arn).await? {
                out.push(
                    self.store
                        .decode(&row.body, &format!("the lifecycle execution {}", row.name))?,
                );
            }
        }
        Ok(out)
    }
}
