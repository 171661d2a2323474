//! The operations kiln serves, one module per resource: each takes the request's members as
//! the model names them (body, query and path members together) and returns the response's.

pub(crate) mod images;
mod lifecycle;
mod paging;
mod policies;
mod resources;
pub(crate) mod shared_images;
mod tags;
pub(crate) mod view;

use axum::http::Method;
use serde_json::Value;

use crate::error::ApiError;
use crate::App;
use kiln_core::principal::Principal;

pub use paging::Page;

/// An Image Builder operation kiln answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `PUT /CreateComponent`.
    CreateComponent,
    /// `GET /GetComponent`.
    GetComponent,
    /// `POST /ListComponents`.
    ListComponents,
    /// `POST /ListComponentBuildVersions`.
    ListComponentBuildVersions,
    /// `DELETE /DeleteComponent`.
    DeleteComponent,
    /// `PUT /CreateImageRecipe`.
    CreateImageRecipe,
    /// `GET /GetImageRecipe`.
    GetImageRecipe,
    /// `POST /ListImageRecipes`.
    ListImageRecipes,
    /// `DELETE /DeleteImageRecipe`.
    DeleteImageRecipe,
    /// `PUT /CreateContainerRecipe`.
    CreateContainerRecipe,
    /// `GET /GetContainerRecipe`.
    GetContainerRecipe,
    /// `POST /ListContainerRecipes`.
    ListContainerRecipes,
    /// `DELETE /DeleteContainerRecipe`.
    DeleteContainerRecipe,
    /// `PUT /CreateInfrastructureConfiguration`.
    CreateInfrastructureConfiguration,
    /// `PUT /UpdateInfrastructureConfiguration`.
    UpdateInfrastructureConfiguration,
    /// `GET /GetInfrastructureConfiguration`.
    GetInfrastructureConfiguration,
    /// `POST /ListInfrastructureConfigurations`.
    ListInfrastructureConfigurations,
    /// `DELETE /DeleteInfrastructureConfiguration`.
    DeleteInfrastructureConfiguration,
    /// `PUT /CreateDistributionConfiguration`.
    CreateDistributionConfiguration,
    /// `PUT /UpdateDistributionConfiguration`.
    UpdateDistributionConfiguration,
    /// `GET /GetDistributionConfiguration`.
    GetDistributionConfiguration,
    /// `POST /ListDistributionConfigurations`.
    ListDistributionConfigurations,
    /// `DELETE /DeleteDistributionConfiguration`.
    DeleteDistributionConfiguration,
    /// `PUT /CreateImagePipeline`.
    CreateImagePipeline,
    /// `PUT /UpdateImagePipeline`.
    UpdateImagePipeline,
    /// `GET /GetImagePipeline`.
    GetImagePipeline,
    /// `POST /ListImagePipelines`.
    ListImagePipelines,
    /// `DELETE /DeleteImagePipeline`.
    DeleteImagePipeline,
    /// `PUT /StartImagePipelineExecution`.
    StartImagePipelineExecution,
    /// `POST /ListImagePipelineImages`.
    ListImagePipelineImages,
    /// `PUT /CreateImage`.
    CreateImage,
    /// `GET /GetImage`.
    GetImage,
    /// `POST /ListImages`.
    ListImages,
    /// `POST /ListImageBuildVersions`.
    ListImageBuildVersions,
    /// `PUT /CancelImageCreation`.
    CancelImageCreation,
    /// `PUT /DistributeImage`.
    DistributeImage,
    /// `DELETE /DeleteImage`.
    DeleteImage,
    /// `POST /tags/{resourceArn}`.
    TagResource,
    /// `DELETE /tags/{resourceArn}`.
    UntagResource,
    /// `GET /tags/{resourceArn}`.
    ListTagsForResource,
    /// `PUT /CreateLifecyclePolicy`.
    CreateLifecyclePolicy,
    /// `PUT /UpdateLifecyclePolicy`.
    UpdateLifecyclePolicy,
    /// `GET /GetLifecyclePolicy`.
    GetLifecyclePolicy,
    /// `POST /ListLifecyclePolicies`.
    ListLifecyclePolicies,
    /// `DELETE /DeleteLifecyclePolicy`.
    DeleteLifecyclePolicy,
    /// `POST /ListLifecycleExecutions`.
    ListLifecycleExecutions,
    /// `GET /GetLifecycleExecution`.
    GetLifecycleExecution,
    /// `POST /ListLifecycleExecutionResources`.
    ListLifecycleExecutionResources,
    /// `PUT /CancelLifecycleExecution`.
    CancelLifecycleExecution,
    /// `PUT /PutComponentPolicy`.
    PutComponentPolicy,
    /// `GET /GetComponentPolicy`.
    GetComponentPolicy,
    /// `PUT /PutImageRecipePolicy`.
    PutImageRecipePolicy,
    /// `GET /GetImageRecipePolicy`.
    GetImageRecipePolicy,
    /// `PUT /PutContainerRecipePolicy`.
    PutContainerRecipePolicy,
    /// `GET /GetContainerRecipePolicy`.
    GetContainerRecipePolicy,
    /// `PUT /PutImagePolicy`.
    PutImagePolicy,
    /// `GET /GetImagePolicy`.
    GetImagePolicy,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 57] = [
        Op::CreateComponent,
        Op::GetComponent,
        Op::ListComponents,
        Op::ListComponentBuildVersions,
        Op::DeleteComponent,
        Op::CreateImageRecipe,
        Op::GetImageRecipe,
        Op::ListImageRecipes,
        Op::DeleteImageRecipe,
        Op::CreateContainerRecipe,
        Op::GetContainerRecipe,
        Op::ListContainerRecipes,
        Op::DeleteContainerRecipe,
        Op::CreateInfrastructureConfiguration,
        Op::UpdateInfrastructureConfiguration,
        Op::GetInfrastructureConfiguration,
        Op::ListInfrastructureConfigurations,
        Op::DeleteInfrastructureConfiguration,
        Op::CreateDistributionConfiguration,
        Op::UpdateDistributionConfiguration,
        Op::GetDistributionConfiguration,
        Op::ListDistributionConfigurations,
        Op::DeleteDistributionConfiguration,
        Op::CreateImagePipeline,
        Op::UpdateImagePipeline,
        Op::GetImagePipeline,
        Op::ListImagePipelines,
        Op::DeleteImagePipeline,
        Op::StartImagePipelineExecution,
        Op::ListImagePipelineImages,
        Op::CreateImage,
        Op::GetImage,
        Op::ListImages,
        Op::ListImageBuildVersions,
        Op::CancelImageCreation,
        Op::DeleteImage,
        Op::DistributeImage,
        Op::TagResource,
        Op::UntagResource,
        Op::ListTagsForResource,
        Op::CreateLifecyclePolicy,
        Op::UpdateLifecyclePolicy,
        Op::GetLifecyclePolicy,
        Op::ListLifecyclePolicies,
        Op::DeleteLifecyclePolicy,
        Op::ListLifecycleExecutions,
        Op::GetLifecycleExecution,
        Op::ListLifecycleExecutionResources,
        Op::CancelLifecycleExecution,
        Op::PutComponentPolicy,
        Op::GetComponentPolicy,
        Op::PutImageRecipePolicy,
        Op::GetImageRecipePolicy,
        Op::PutContainerRecipePolicy,
        Op::GetContainerRecipePolicy,
        Op::PutImagePolicy,
        Op::GetImagePolicy,
    ];

    /// The operation's name in the model.
    pub fn name(self) -> &'static str {
        match self {
            Op::CreateComponent => "CreateComponent",
            Op::GetComponent => "GetComponent",
            Op::ListComponents => "ListComponents",
            Op::ListComponentBuildVersions => "ListComponentBuildVersions",
            Op::DeleteComponent => "DeleteComponent",
            Op::CreateImageRecipe => "CreateImageRecipe",
            Op::GetImageRecipe => "GetImageRecipe",
            Op::ListImageRecipes => "ListImageRecipes",
            Op::DeleteImageRecipe => "DeleteImageRecipe",
            Op::CreateContainerRecipe => "CreateContainerRecipe",
            Op::GetContainerRecipe => "GetContainerRecipe",
            Op::ListContainerRecipes => "ListContainerRecipes",
            Op::DeleteContainerRecipe => "DeleteContainerRecipe",
            Op::CreateInfrastructureConfiguration => "CreateInfrastructureConfiguration",
            Op::UpdateInfrastructureConfiguration => "UpdateInfrastructureConfiguration",
            Op::GetInfrastructureConfiguration => "GetInfrastructureConfiguration",
            Op::ListInfrastructureConfigurations => "ListInfrastructureConfigurations",
            Op::DeleteInfrastructureConfiguration => "DeleteInfrastructureConfiguration",
            Op::CreateDistributionConfiguration => "CreateDistributionConfiguration",
            Op::UpdateDistributionConfiguration => "UpdateDistributionConfiguration",
            Op::GetDistributionConfiguration => "GetDistributionConfiguration",
            Op::ListDistributionConfigurations => "ListDistributionConfigurations",
            Op::DeleteDistributionConfiguration => "DeleteDistributionConfiguration",
            Op::CreateImagePipeline => "CreateImagePipeline",
            Op::UpdateImagePipeline => "UpdateImagePipeline",
            Op::GetImagePipeline => "GetImagePipeline",
            Op::ListImagePipelines => "ListImagePipelines",
            Op::DeleteImagePipeline => "DeleteImagePipeline",
            Op::StartImagePipelineExecution => "StartImagePipelineExecution",
            Op::ListImagePipelineImages => "ListImagePipelineImages",
            Op::CreateImage => "CreateImage",
            Op::GetImage => "GetImage",
            Op::ListImages => "ListImages",
            Op::ListImageBuildVersions => "ListImageBuildVersions",
            Op::CancelImageCreation => "CancelImageCreation",
            Op::DeleteImage => "DeleteImage",
            Op::DistributeImage => "DistributeImage",
            Op::TagResource => "TagResource",
            Op::UntagResource => "UntagResource",
            Op::ListTagsForResource => "ListTagsForResource",
            Op::CreateLifecyclePolicy => "CreateLifecyclePolicy",
            Op::UpdateLifecyclePolicy => "UpdateLifecyclePolicy",
            Op::GetLifecyclePolicy => "GetLifecyclePolicy",
            Op::ListLifecyclePolicies => "ListLifecyclePolicies",
            Op::DeleteLifecyclePolicy => "DeleteLifecyclePolicy",
            Op::ListLifecycleExecutions => "ListLifecycleExecutions",
            Op::GetLifecycleExecution => "GetLifecycleExecution",
            Op::ListLifecycleExecutionResources => "ListLifecycleExecutionResources",
            Op::CancelLifecycleExecution => "CancelLifecycleExecution",
            Op::PutComponentPolicy => "PutComponentPolicy",
            Op::GetComponentPolicy => "GetComponentPolicy",
            Op::PutImageRecipePolicy => "PutImageRecipePolicy",
            Op::GetImageRecipePolicy => "GetImageRecipePolicy",
            Op::PutContainerRecipePolicy => "PutContainerRecipePolicy",
            Op::GetContainerRecipePolicy => "GetContainerRecipePolicy",
            Op::PutImagePolicy => "PutImagePolicy",
            Op::GetImagePolicy => "GetImagePolicy",
        }
    }

    /// The HTTP method the model gives it.
    pub fn method(self) -> Method {
        let n = self.name();
        if n.starts_with("Create")
            || n.starts_with("Update")
            || n.starts_with("Start")
            || n.starts_with("Cancel")
            || n.starts_with("Put")
            || self == Op::DistributeImage
        {
            Method::PUT
        } else if n.starts_with("Get") || self == Op::ListTagsForResource {
            Method::GET
        } else if n.starts_with("Delete") || self == Op::UntagResource {
            Method::DELETE
        } else {
            Method::POST
        }
    }

    /// The operation a request's method and path ask for, with the `{resourceArn}` of a tags
    /// path (still percent-encoded).
    pub fn route(method: &Method, path: &str) -> Option<(Op, Option<String>)> {
        if let Some(arn) = path.strip_prefix("/tags/") {
            let op = match *method {
                Method::POST => Op::TagResource,
                Method::DELETE => Op::UntagResource,
                Method::GET => Op::ListTagsForResource,
                _ => return None,
            };
            return Some((op, Some(arn.to_string())));
        }
        let name = path.strip_prefix('/')?;
        Op::ALL
            .into_iter()
            .find(|o| o.name() == name && o.method() == method)
            .map(|o| (o, None))
    }
}

/// Carries out one operation for `principal`; `input` holds every member the model gives the
/// request, checked against its shape.
pub async fn dispatch(
    app: &App,
    principal: &Principal,
    op: Op,
    input: Value,
) -> Result<Value, ApiError> {
    use Op::*;
    match op {
        CreateComponent
        | CreateImageRecipe
        | CreateContainerRecipe
        | CreateInfrastructureConfiguration
        | UpdateInfrastructureConfiguration
        | CreateDistributionConfiguration
        | UpdateDistributionConfiguration
        | CreateImagePipeline
        | UpdateImagePipeline
        | CreateLifecyclePolicy
        | UpdateLifecyclePolicy => resources::apply(app, principal, op, input).await,
        GetComponent
        | GetImageRecipe
        | GetContainerRecipe
        | GetInfrastructureConfiguration
        | GetDistributionConfiguration
        | GetImagePipeline => resources::get(app, principal, op, input).await,
        ListComponents
        | ListComponentBuildVersions
        | ListImageRecipes
        | ListContainerRecipes
        | ListInfrastructureConfigurations
        | ListDistributionConfigurations
        | ListImagePipelines => resources::list(app, principal, op, input).await,
        DeleteComponent
        | DeleteImageRecipe
        | DeleteContainerRecipe
        | DeleteInfrastructureConfiguration
        | DeleteDistributionConfiguration
        | DeleteImagePipeline
        | DeleteLifecyclePolicy => resources::delete(app, principal, op, input).await,
        StartImagePipelineExecution | CreateImage => images::start(app, principal, op, input).await,
        GetImage => images::get(app, principal, input).await,
        ListImages | ListImageBuildVersions | ListImagePipelineImages => {
            images::list(app, principal, op, input).await
        }
        CancelImageCreation => images::cancel(app, principal, input).await,
        DeleteImage => images::delete(app, principal, input).await,
        DistributeImage => images::distribute(app, principal, input).await,
        TagResource | UntagResource | ListTagsForResource => {
            tags::run(app, principal, op, input).await
        }
        GetLifecyclePolicy => lifecycle::get(app, principal, input).await,
        ListLifecyclePolicies => lifecycle::list(app, principal, input).await,
        ListLifecycleExecutions
        | GetLifecycleExecution
        | ListLifecycleExecutionResources
        | CancelLifecycleExecution => lifecycle::executions_op(app, principal, op, input).await,
        PutComponentPolicy
        | GetComponentPolicy
        | PutImageRecipePolicy
        | GetImageRecipePolicy
        | PutContainerRecipePolicy
        | GetContainerRecipePolicy
        | PutImagePolicy
        | GetImagePolicy => policies::run(app, principal, op, input).await,
    }
}

/// A text member of a request.
pub(crate) fn text<'a>(input: &'a Value, key: &str) -> Option<&'a str> {
    input.get(key).and_then(Value::as_str)
}

/// A required text member (the model check has seen it; this is the typed access).
pub(crate) fn required<'a>(input: &'a Value, key: &str) -> Result<&'a str, ApiError> {
    text(input, key).ok_or_else(|| ApiError::bad_request(format!("{key}: is required")))
}
