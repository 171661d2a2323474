//! Requests from text, the principal's account, field paths and error codes, on a store in a
//! temporary folder (no root needed).

use std::path::Path;

use kiln_store::{Kind, Update};
use kiln_toe::loader::ComponentResolver;
use tempfile::TempDir;

use super::*;
use crate::request::{Document, Operation, Request};
use crate::store::Home;

const DOC: &str = "name: t\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: A\n        action: ExecuteBash\n        inputs:\n          commands: [echo a]\n";

fn alice() -> Principal {
    Principal::new("111111111111", "alice")
}

fn bob() -> Principal {
    Principal::new("222222222222", "bob")
}

async fn resources() -> (TempDir, Resources) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Home::new(dir.path())).await.unwrap();
    (dir, Resources::new(store))
}

/// A request as an API receives it: JSON, no folder.
fn api(operation: Operation, json: serde_json::Value) -> Request {
    let name = format!("the {operation} request");
    Request::new(
        operation,
        Document::parse(name, json.to_string(), None).unwrap(),
    )
}

fn component(name: &str, extra: serde_json::Value) -> Request {
    let mut body = serde_json::json!({"name": name, "platform": "Linux", "data": DOC});
    if let (Some(o), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    api(Operation::CreateComponent, body)
}

async fn create(res: &Resources, who: &Principal, r: Request) -> Resource {
    res.apply(who, r).await.unwrap().resource
}

async fn fails(res: &Resources, who: &Principal, r: Request) -> ResourceError {
    res.apply(who, r).await.unwrap_err()
}

fn fields(e: &ResourceError) -> Vec<Option<&str>> {
    e.problems().iter().map(|p| p.field.as_deref()).collect()
}

#[tokio::test]
async fn a_request_without_a_folder_reads_no_local_file() {
    let (dir, res) = resources().await;
    std::fs::write(dir.path().join("doc.yaml"), DOC).unwrap();
    let abs = dir.path().join("doc.yaml").display().to_string();
    for uri in [abs.clone(), format!("file://{abs}"), "doc.yaml".into()] {
        let r = api(
            Operation::CreateComponent,
            serde_json::json!({"name": "c", "platform": "Linux", "uri": uri}),
        );
        let e = fails(&res, &alice(), r).await;
        assert_eq!(e.code(), ErrorCode::InvalidParameterValue, "{e}");
        assert_eq!(fields(&e), [Some("uri")], "{e}");
        assert!(e.to_string().contains("kiln reads no files"), "{e}");
    }
    let all = res
        .list(&alice(), &[Kind::Component], &ListOptions::default())
        .await
        .unwrap();
    assert!(all.is_empty(), "{all:?}");

    // The same request as a file next to the document reads it.
    let text = serde_json::json!({"name": "c", "platform": "Linux", "uri": "doc.yaml"});
    let doc = Document::from_file(&dir.path().join("c.json"), text.to_string()).unwrap();
    let made = create(
        &res,
        &alice(),
        Request::new(Operation::CreateComponent, doc),
    )
    .await;
    assert_eq!(made.data.as_deref(), Some(DOC));
    assert_eq!(made.source_file, Some(dir.path().join("c.json")));
}

#[tokio::test]
async fn a_request_without_a_folder_takes_inline_data() {
    let (_dir, res) = resources().await;
    let out = res
        .apply(&alice(), component("hello", serde_json::json!({})))
        .await
        .unwrap();
    assert!(out.created);
    let c = out.resource;
    assert_eq!(
        c.arn,
        "arn:kiln:imagebuilder:local:111111111111:component/hello/1.0.0/1"
    );
    assert_eq!(c.owner, "alice");
    assert_eq!(c.source_file, None);
    assert_eq!(c.component_type, Some(super::ComponentType::Build));
}

#[tokio::test]
async fn a_request_over_the_network_names_no_path_on_the_server() {
    let (_dir, res) = resources().await;
    // kiln writes regions and logs as root, and reads parents' folders: an API caller may
    // name none of them, absolute or not.
    let r = api(
        Operation::CreateDistributionConfiguration,
        serde_json::json!({"name": "d", "distributions": [{"region": "a", "path": "/srv/a"}, {"region": "b", "path": "b"}]}),
    );
    let e = fails(&res, &alice(), r).await;
    assert_eq!(
        fields(&e),
        [Some("distributions[0].path"), Some("distributions[1].path")],
        "{e}"
    );
    for parent in ["oci:images/base", "oci:/etc", "rootfs:/"] {
        let r = api(
            Operation::CreateImageRecipe,
            serde_json::json!({"name": "r", "parentImage": parent, "components": []}),
        );
        let e = fails(&res, &alice(), r).await;
        assert!(fields(&e).contains(&Some("parentImage")), "{e}");
    }
    let r = api(
        Operation::CreateInfrastructureConfiguration,
        serde_json::json!({"name": "i", "logging": {"localPath": "/etc/cron.d"}}),
    );
    let e = fails(&res, &alice(), r).await;
    assert_eq!(fields(&e), [Some("logging.localPath")], "{e}");
}

#[tokio::test]
async fn problems_name_the_field_they_are_about() {
    let (_dir, res) = resources().await;
    let c = create(&res, &alice(), component("base", serde_json::json!({}))).await;
    let text = format!(
        "name: r\nparentImage: bootstrap:debian/bookworm\ncomponents:\n  - componentArn: {}\n    colour: blue\n",
        c.arn
    );
    let doc = Document::parse("r.yaml", text, None).unwrap();
    let e = fails(
        &res,
        &alice(),
        Request::new(Operation::CreateImageRecipe, doc),
    )
    .await;
    assert_eq!(fields(&e), [Some("components[0].colour")], "{e}");
    assert_eq!(
        e.problems()[0].message,
        "unknown key `colour` in a component"
    );

    let r = api(
        Operation::CreateDistributionConfiguration,
        serde_json::json!({"name": "d", "distributions": [{"region": "a"}, {"region": "b", "colour": 1}]}),
    );
    let e = fails(&res, &alice(), r).await;
    assert_eq!(fields(&e), [Some("distributions[1].colour")], "{e}");

    // A problem of the whole request has no field.
    let r = api(
        Operation::CreateDistributionConfiguration,
        serde_json::json!({"name": "d"}),
    );
    let e = fails(&res, &alice(), r).await;
    assert_eq!(fields(&e), [None], "{e}");

    // The component document's own problems are about `data`.
    let r = component(
        "broken",
        serde_json::json!({"data": "name: x\nphases: []\n"}),
    );
    let e = fails(&res, &alice(), r).await;
    assert!(!e.problems().is_empty());
    assert!(
        e.problems()
            .iter()
            .all(|p| p.field.as_deref() == Some("data")),
        "{e}"
    );
    assert!(e
        .to_string()
        .starts_with("the component document is not valid:\n"));
}

#[tokio::test]
async fn a_request_file_is_shown_at_its_line_and_column() {
    let (_dir, res) = resources().await;
    let text =
        "name: bad\nsemanticVersion: 1.0\nplatform: Windows\ncolour: blue\ndata: |\n  name: x\n";
    let doc = Document::from_file(Path::new("requests/bad.yaml"), text).unwrap();
    let e = fails(
        &res,
        &alice(),
        Request::new(Operation::CreateComponent, doc),
    )
    .await;
    let shown = e.to_string();
    assert!(
        shown.starts_with("requests/bad.yaml:2:18: error: "),
        "{shown}"
    );
    assert!(shown.contains(" 3 | platform: Windows\n"), "{shown}");
    assert!(shown.contains("requests/bad.yaml:4:1: error: unknown key `colour`"));
    let rendered: String = e.problems().iter().map(|p| p.rendered.as_str()).collect();
    assert_eq!(rendered, shown);
    assert_eq!(
        fields(&e),
        [Some("semanticVersion"), Some("platform"), Some("colour")]
    );
}

#[tokio::test]
async fn invalid_values_are_invalid_parameter_values() {
    let (_dir, res) = resources().await;
    let e = fails(
        &res,
        &alice(),
        component("c", serde_json::json!({"platform": "Windows"})),
    )
    .await;
    assert_eq!(e.code(), ErrorCode::InvalidParameterValue);
    // An AWS account's resource is not kiln's...
    let e = res
        .get(
            &alice(),
            "arn:aws:imagebuilder:us-east-1:123456789012:component/x/1.0.0",
            &[Kind::Component],
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ResourceError::BadReference(_)), "{e}");
    assert_eq!(e.code(), ErrorCode::InvalidParameterValue);
    // ...while AWS's managed components are, and one kiln does not have is not found.
    let e = res
        .get(
            &alice(),
            "arn:aws:imagebuilder:us-east-1:aws:component/x/1.0.0",
            &[Kind::Component],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ResourceNotFound, "{e}");
}

#[tokio::test]
async fn a_request_that_is_no_mapping_is_an_invalid_request() {
    let (_dir, res) = resources().await;
    let r = api(Operation::CreateComponent, serde_json::json!(["name", "c"]));
    let e = fails(&res, &alice(), r).await;
    assert_eq!(e.code(), ErrorCode::InvalidRequest, "{e}");
    assert_eq!(e.code().http_status(), 400);
}

#[tokio::test]
async fn a_version_out_of_shape_is_an_invalid_version_number() {
    let (_dir, res) = resources().await;
    let e = fails(
        &res,
        &alice(),
        component("c", serde_json::json!({"semanticVersion": "1.0"})),
    )
    .await;
    assert_eq!(e.code(), ErrorCode::InvalidVersionNumber, "{e}");
    // With other problems too, it is an invalid value.
    let both = serde_json::json!({"semanticVersion": "1.0", "platform": "Windows"});
    let e = fails(&res, &alice(), component("c", both)).await;
    assert_eq!(e.code(), ErrorCode::InvalidParameterValue, "{e}");
}

#[tokio::test]
async fn nothing_matching_is_not_found() {
    let (_dir, res) = resources().await;
    let e = res
        .get(&alice(), "nothing/1.0.0", &[Kind::Component])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ResourceNotFound);
    assert_eq!(e.code().http_status(), 404);
    let r = api(
        Operation::UpdateInfrastructureConfiguration,
        serde_json::json!({"name": "nothing"}),
    );
    assert_eq!(
        fails(&res, &alice(), r).await.code(),
        ErrorCode::ResourceNotFound
    );
}

#[tokio::test]
async fn other_content_under_a_taken_name_already_exists() {
    let (_dir, res) = resources().await;
    let v1 = serde_json::json!({"semanticVersion": "1.0.0"});
    create(&res, &alice(), component("c", v1)).await;
    let changed =
        serde_json::json!({"semanticVersion": "1.0.0", "data": DOC.replace("echo a", "echo b")});
    let e = fails(&res, &alice(), component("c", changed)).await;
    assert_eq!(e.code(), ErrorCode::ResourceAlreadyExists, "{e}");
    assert!(e.to_string().contains("immutable"), "{e}");

    let infra = |memory: &str| {
        api(
            Operation::CreateInfrastructureConfiguration,
            serde_json::json!({"name": "small", "memory": memory}),
        )
    };
    create(&res, &alice(), infra("1GiB")).await;
    let e = fails(&res, &alice(), infra("2GiB")).await;
    assert_eq!(e.code(), ErrorCode::ResourceAlreadyExists, "{e}");
    // A request that came through the API is told the operation that changes it.
    assert!(
        e.to_string()
            .ends_with("change it with UpdateInfrastructureConfiguration"),
        "{e}"
    );
    let update = api(
        Operation::UpdateInfrastructureConfiguration,
        serde_json::json!({"name": "small", "memory": "2GiB"}),
    );
    let out = res.apply(&alice(), update).await.unwrap();
    assert!(out.created);
    assert_eq!(out.resource.request["memory"], "2GiB");
}

#[tokio::test]
async fn deleting_what_a_recipe_uses_is_a_dependency_error() {
    let (_dir, res) = resources().await;
    let c = create(&res, &alice(), component("base", serde_json::json!({}))).await;
    let recipe = api(
        Operation::CreateImageRecipe,
        serde_json::json!({"name": "r", "parentImage": "bootstrap:debian/bookworm", "components": [{"componentArn": c.arn}]}),
    );
    let r = create(&res, &alice(), recipe).await;
    let e = res
        .delete(&alice(), &c.arn, &[Kind::Component])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ResourceDependency, "{e}");
    assert!(e.to_string().contains(&r.arn), "{e}");
}

#[tokio::test]
async fn a_client_token_reused_for_another_request_is_a_mismatch() {
    let (_dir, res) = resources().await;
    let token = serde_json::json!({"clientToken": "t-1"});
    let first = create(&res, &alice(), component("one", token.clone())).await;
    let again = create(&res, &alice(), component("one", token.clone())).await;
    assert_eq!(again.arn, first.arn);
    let other = serde_json::json!({"clientToken": "t-1", "data": DOC.replace("echo a", "echo b")});
    let e = fails(&res, &alice(), component("two", other)).await;
    assert_eq!(e.code(), ErrorCode::IdempotentParameterMismatch, "{e}");
    assert!(e.to_string().contains("different request"), "{e}");
    // Another account's use of the token is not shown, with the same request or another.
    for body in [
        token,
        serde_json::json!({"clientToken": "t-1", "data": DOC.replace("echo a", "echo c")}),
    ] {
        let e = fails(&res, &bob(), component("one", body)).await;
        assert_eq!(e.code(), ErrorCode::IdempotentParameterMismatch, "{e}");
        assert!(!e.to_string().contains(&first.arn), "{e}");
    }
}

#[tokio::test]
async fn a_store_failure_is_a_service_error() {
    let (_dir, res) = resources().await;
    let c = create(&res, &alice(), component("c", serde_json::json!({}))).await;
    let garbled = Update {
        body: Some(r#"{"arn": 7}"#.into()),
        ..Update::default()
    };
    res.store().db().update(&c.arn, garbled).await.unwrap();
    let e = res
        .get(&alice(), &c.arn, &[Kind::Component])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Service, "{e}");
    assert_eq!(e.code().http_status(), 500);
}

#[test]
fn codes_are_the_models_exceptions() {
    let table = [
        (
            ErrorCode::InvalidParameterValue,
            "InvalidParameterValueException",
            400,
        ),
        (ErrorCode::InvalidRequest, "InvalidRequestException", 400),
        (
            ErrorCode::InvalidVersionNumber,
            "InvalidVersionNumberException",
            400,
        ),
        (
            ErrorCode::ResourceNotFound,
            "ResourceNotFoundException",
            404,
        ),
        (
            ErrorCode::ResourceAlreadyExists,
            "ResourceAlreadyExistsException",
            400,
        ),
        (
            ErrorCode::ResourceDependency,
            "ResourceDependencyException",
            400,
        ),
        (
            ErrorCode::IdempotentParameterMismatch,
            "IdempotentParameterMismatchException",
            400,
        ),
        (ErrorCode::Forbidden, "ForbiddenException", 403),
        (ErrorCode::Service, "ServiceException", 500),
    ];
    assert_eq!(table.len(), ErrorCode::ALL.len());
    for (code, name, status) in table {
        assert_eq!((code.as_str(), code.http_status()), (name, status));
    }
}

#[tokio::test]
async fn arns_are_in_the_principals_account() {
    let (_dir, res) = resources().await;
    let c = create(&res, &bob(), component("base", serde_json::json!({}))).await;
    assert!(c.arn.starts_with(&bob().arn_prefix()), "{}", c.arn);
    assert_eq!(c.owner, "bob");
    let wildcard = format!("{}component/base/x.x.x", bob().arn_prefix());
    let recipe = api(
        Operation::CreateImageRecipe,
        serde_json::json!({"name": "r", "parentImage": "bootstrap:debian/bookworm", "components": [{"componentArn": wildcard}]}),
    );
    let r = create(&res, &bob(), recipe).await;
    assert_eq!(
        r.arn,
        "arn:kiln:imagebuilder:local:222222222222:image-recipe/r/1.0.0"
    );
    assert_eq!(r.uses, [wildcard]);
}

#[tokio::test]
async fn another_accounts_resources_are_not_found() {
    let (dir, res) = resources().await;
    let c = create(&res, &alice(), component("base", serde_json::json!({}))).await;
    let kinds = [Kind::Component];
    assert_eq!(res.get(&alice(), &c.arn, &kinds).await.unwrap(), c);
    for reference in [c.arn.as_str(), "base", "base/1.0.0"] {
        let e = res.get(&bob(), reference, &kinds).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::ResourceNotFound, "{reference}: {e}");
    }
    let e = res.delete(&bob(), &c.arn, &kinds).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ResourceNotFound, "{e}");
    let listed = res
        .list(&bob(), &kinds, &ListOptions::default())
        .await
        .unwrap();
    assert!(listed.is_empty(), "{listed:?}");
    assert_eq!(
        res.list(&alice(), &kinds, &ListOptions::default())
            .await
            .unwrap()
            .len(),
        1
    );

    // Nor can another account's recipe use it, or its builds load it.
    let recipe = api(
        Operation::CreateImageRecipe,
        serde_json::json!({"name": "r", "parentImage": "bootstrap:debian/bookworm", "components": [{"componentArn": c.arn}]}),
    );
    let e = fails(&res, &bob(), recipe).await;
    assert_eq!(fields(&e), [Some("components[0]")], "{e}");
    assert!(e.to_string().contains("no component matches"), "{e}");
    let store = Store::open(&Home::new(dir.path())).await.unwrap();
    let theirs = StoreResolver::new(store.clone(), bob());
    assert!(theirs.resolve(&c.arn).await.is_err());
    let own = StoreResolver::new(store, alice());
    assert!(own.resolve(&c.arn).await.unwrap().is_some());

    // Names and versions are per account: bob has his own base 1.0.0, and each sees his own.
    let own = create(&res, &bob(), component("base", serde_json::json!({}))).await;
    assert!(own.arn.starts_with(&bob().arn_prefix()), "{}", own.arn);
    assert_ne!(own.arn, c.arn);
    let b = create(
        &res,
        &bob(),
        component("base", serde_json::json!({"semanticVersion": "2.0.0"})),
    )
    .await;
    assert!(b.arn.starts_with(&bob().arn_prefix()), "{}", b.arn);
    assert_eq!(res.get(&bob(), "base", &kinds).await.unwrap(), b);
    assert_eq!(res.get(&alice(), "base", &kinds).await.unwrap(), c);

    // Configurations of one name in two accounts: an ARN names the one of its account only.
    let small = || {
        api(
            Operation::CreateInfrastructureConfiguration,
            serde_json::json!({"name": "small"}),
        )
    };
    let theirs = create(&res, &alice(), small()).await;
    let mine = create(&res, &bob(), small()).await;
    assert_ne!(theirs.arn, mine.arn);
    let kinds = [Kind::InfrastructureConfiguration];
    let e = res.get(&bob(), &theirs.arn, &kinds).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ResourceNotFound, "{e}");
    assert_eq!(res.get(&bob(), &mine.arn, &kinds).await.unwrap(), mine);
    assert_eq!(res.get(&bob(), "small", &kinds).await.unwrap(), mine);
}

#[tokio::test]
async fn updates_name_their_resource_by_arn_as_image_builder_does() {
    let (_dir, res) = resources().await;
    let infra = |who: &Principal, memory: &str| {
        let r = api(
            Operation::CreateInfrastructureConfiguration,
            serde_json::json!({"name": "Small", "memory": memory}),
        );
        let res = res.clone();
        let who = who.clone();
        async move { create(&res, &who, r).await }
    };
    let mine = infra(&alice(), "1GiB").await;
    let theirs = infra(&bob(), "1GiB").await;
    let by_arn = |arn: &str, memory: &str| {
        api(
            Operation::UpdateInfrastructureConfiguration,
            serde_json::json!({"infrastructureConfigurationArn": arn, "memory": memory}),
        )
    };
    let out = res
        .apply(&alice(), by_arn(&mine.arn, "2GiB"))
        .await
        .unwrap();
    assert!(out.created);
    assert_eq!(out.resource.arn, mine.arn);
    assert_eq!(
        out.resource.request,
        serde_json::json!({"name": "Small", "memory": "2GiB"})
    );
    // The same content named either way changes nothing.
    let again = res
        .apply(&alice(), by_arn(&mine.arn, "2GiB"))
        .await
        .unwrap();
    assert!(!again.created);
    let by_name = api(
        Operation::UpdateInfrastructureConfiguration,
        serde_json::json!({"name": "Small", "memory": "2GiB"}),
    );
    assert!(!res.apply(&alice(), by_name).await.unwrap().created);

    // Another account's ARN names nothing to update, even where a namesake exists.
    let e = fails(&res, &bob(), by_arn(&mine.arn, "3GiB")).await;
    assert_eq!(e.code(), ErrorCode::ResourceNotFound, "{e}");
    let kinds = [Kind::InfrastructureConfiguration];
    assert_eq!(res.get(&bob(), "small", &kinds).await.unwrap(), theirs);

    let both = api(
        Operation::UpdateInfrastructureConfiguration,
        serde_json::json!({"name": "Small", "infrastructureConfigurationArn": mine.arn}),
    );
    let e = fails(&res, &alice(), both).await;
    assert_eq!(fields(&e), [Some("infrastructureConfigurationArn")], "{e}");
    // A create takes no ARN.
    let create_by_arn = api(
        Operation::CreateInfrastructureConfiguration,
        serde_json::json!({"infrastructureConfigurationArn": mine.arn}),
    );
    let e = fails(&res, &alice(), create_by_arn).await;
    assert!(
        fields(&e).contains(&Some("infrastructureConfigurationArn")),
        "{e}"
    );
}

#[tokio::test]
async fn schedules_are_checked_field_by_field_when_a_pipeline_is_stored() {
    let (_dir, res) = resources().await;
    let pipeline = |schedule: serde_json::Value| {
        api(
            Operation::CreateImagePipeline,
            serde_json::json!({"name": "p", "imageRecipeArn": "arn:kiln:imagebuilder:local:111111111111:image-recipe/r/1.0.0",
                "infrastructureConfigurationArn": "arn:kiln:imagebuilder:local:111111111111:infrastructure-configuration/i",
                "schedule": schedule}),
        )
    };
    for (schedule, field, words) in [
        (
            serde_json::json!({"scheduleExpression": "cron(99 0 * * SUN)"}),
            "schedule.scheduleExpression",
            "minutes `99`",
        ),
        (
            serde_json::json!({"scheduleExpression": "cron(0 0 1 * SUN *)"}),
            "schedule.scheduleExpression",
            "day-of-week",
        ),
        (
            serde_json::json!({"scheduleExpression": "rate(0 minutes)"}),
            "schedule.scheduleExpression",
            "rate value",
        ),
        (
            serde_json::json!({"scheduleExpression": "cron(0 3 ? * SUN *)", "timezone": "Mars/Olympus"}),
            "schedule.timezone",
            "timezone",
        ),
        (
            serde_json::json!({"scheduleExpression": "rate(1 day)", "autoDisablePolicy": {"failureCount": 11}}),
            "schedule.autoDisablePolicy.failureCount",
            "out of range",
        ),
    ] {
        // The recipe and configuration do not exist either: every problem is reported at once.
        let e = fails(&res, &alice(), pipeline(schedule.clone())).await;
        assert!(fields(&e).contains(&Some(field)), "{schedule}: {e}");
        assert!(e.to_string().contains(words), "{schedule}: {e}");
    }
}

#[tokio::test]
async fn untrusted_components_may_raise_the_servers_floor_but_not_lower_it() {
    use crate::recipe::BuilderKind;
    use crate::trust::{TrustPolicy, UNTRUSTED_COMPONENTS_TAG};
    let (_dir, res) = resources().await;
    let infra = |name: &str, extra: serde_json::Value| {
        let mut body = serde_json::json!({ "name": name });
        if let (Some(o), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        api(Operation::CreateInfrastructureConfiguration, body)
    };
    // The default floor is `vm`: `sandbox` is refused, naming the field or the tag.
    let e = fails(
        &res,
        &alice(),
        infra("low", serde_json::json!({"untrustedComponents": "sandbox"})),
    )
    .await;
    assert_eq!(e.code(), ErrorCode::InvalidParameterValue, "{e}");
    assert_eq!(fields(&e), [Some("untrustedComponents")], "{e}");
    assert!(
        e.to_string()
            .contains("asks for less than this server allows"),
        "{e}"
    );
    let e = fails(
        &res,
        &alice(),
        infra(
            "low",
            serde_json::json!({"tags": {UNTRUSTED_COMPONENTS_TAG: "sandbox"}}),
        ),
    )
    .await;
    assert_eq!(e.code(), ErrorCode::InvalidParameterValue, "{e}");
    assert_eq!(
        fields(&e),
        [Some(format!("tags.{UNTRUSTED_COMPONENTS_TAG}").as_str())],
        "{e}"
    );
    let e = fails(
        &res,
        &alice(),
        infra("odd", serde_json::json!({"untrustedComponents": "chroot"})),
    )
    .await;
    assert!(e.to_string().contains("unknown builder `chroot`"), "{e}");
    // `vm` is always taken, as the field or the tag.
    create(
        &res,
        &alice(),
        infra("high", serde_json::json!({"untrustedComponents": "vm"})),
    )
    .await;
    let tagged = create(
        &res,
        &alice(),
        infra(
            "tagged",
            serde_json::json!({"tags": {UNTRUSTED_COMPONENTS_TAG: "vm"}}),
        ),
    )
    .await;
    // TagResource is checked the same way.
    let e = res
        .set_tags(&alice(), &tagged.arn, |t| {
            t.insert(UNTRUSTED_COMPONENTS_TAG.into(), "sandbox".into());
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidParameterValue, "{e}");
    assert!(e.to_string().contains(UNTRUSTED_COMPONENTS_TAG), "{e}");

    // A server whose floor is `sandbox` takes `sandbox`.
    let lax = res.clone().with_trust(TrustPolicy {
        untrusted_components: BuilderKind::Sandbox,
        ..TrustPolicy::default()
    });
    create(
        &lax,
        &alice(),
        infra("low", serde_json::json!({"untrustedComponents": "sandbox"})),
    )
    .await;
    lax.set_tags(&alice(), &tagged.arn, |t| {
        t.insert(UNTRUSTED_COMPONENTS_TAG.into(), "sandbox".into());
    })
    .await
    .unwrap();

    // A pipeline's build carries the tag into its recipe's infrastructure.
    let c = create(&lax, &alice(), component("c", serde_json::json!({}))).await;
    let recipe = create(
        &lax,
        &alice(),
        api(
            Operation::CreateImageRecipe,
            serde_json::json!({"name": "r", "parentImage": "bootstrap:debian/bookworm", "components": [{"componentArn": c.arn}]}),
        ),
    )
    .await;
    lax.set_tags(&alice(), &tagged.arn, |t| {
        t.insert(UNTRUSTED_COMPONENTS_TAG.into(), "vm".into());
    })
    .await
    .unwrap();
    let pipeline = create(
        &lax,
        &alice(),
        api(
            Operation::CreateImagePipeline,
            serde_json::json!({"name": "p", "imageRecipeArn": recipe.arn, "infrastructureConfigurationArn": tagged.arn}),
        ),
    )
    .await;
    let plan = crate::pipeline::plan(&lax, &alice(), &pipeline.arn)
        .await
        .unwrap();
    assert_eq!(
        plan.build_recipe.infrastructure.untrusted_components,
        Some(BuilderKind::Vm)
    );
}
