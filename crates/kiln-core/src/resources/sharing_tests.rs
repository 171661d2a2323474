//! Sharing between accounts on a store in a temporary folder: who may read, use and write a
//! shared component, and revoking by a new policy.

use kiln_store::Kind;
use kiln_toe::loader::ComponentResolver;
use tempfile::TempDir;

use super::*;
use crate::request::{Document, Operation, Request};
use crate::state::Store;
use crate::store::Home;
use crate::trust::{Owner, TrustPolicy};

const DOC: &str = "name: t\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: A\n        action: ExecuteBash\n        inputs:\n          commands: [echo a]\n";

fn alice() -> Principal {
    Principal::new("111111111111", "alice")
}

fn bob() -> Principal {
    Principal::new("222222222222", "bob")
}

fn carol() -> Principal {
    Principal::new("333333333333", "carol")
}

fn grant(to: &Principal) -> String {
    format!(
        r#"{{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow", "Principal": {{"AWS": ["{}"]}}, "Action": ["imagebuilder:GetComponent", "imagebuilder:ListComponents"]}}]}}"#,
        to.account
    )
}

async fn setup() -> (TempDir, Store, Resources, Resource) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Home::new(dir.path())).await.unwrap();
    let res = Resources::new(store.clone());
    let body = serde_json::json!({"name": "web", "platform": "Linux", "data": DOC});
    let request = Request::new(
        Operation::CreateComponent,
        Document::parse("the request", body.to_string(), None).unwrap(),
    );
    let c = res.apply(&alice(), request).await.unwrap().resource;
    (dir, store, res, c)
}

#[tokio::test]
async fn a_shared_component_is_read_and_used_by_the_grantee_and_written_by_its_owner_only() {
    let (_dir, store, res, c) = setup().await;
    let wildcard = format!("{}component/web/1.x.x", alice().arn_prefix());
    assert!(!may_use(&store, &bob().account, &c.arn).await.unwrap());
    assert!(may_use(&store, &alice().account, &c.arn).await.unwrap());
    assert!(res.get(&bob(), &c.arn, &[Kind::Component]).await.is_err());

    res.put_policy(&alice(), Kind::Component, &c.arn, &grant(&bob()))
        .await
        .unwrap();
    assert!(may_use(&store, &bob().account, &c.arn).await.unwrap());
    assert!(may_use(&store, &bob().account, &wildcard).await.unwrap());
    assert!(!may_use(&store, &carol().account, &c.arn).await.unwrap());
    assert!(!may_use(&store, &bob().account, "not an arn").await.unwrap());
    let other = format!("{}component/db/x.x.x", alice().arn_prefix());
    assert!(!may_use(&store, &bob().account, &other).await.unwrap());
    let all = format!("{}component/web/x.x.x", alice().arn_prefix());
    assert!(may_use(&store, &bob().account, &all).await.unwrap());
    assert_eq!(
        res.get(&bob(), &wildcard, &[Kind::Component])
            .await
            .unwrap()
            .arn,
        c.arn
    );
    let shared = res
        .shared(&bob(), Kind::Component, &ListOptions::default())
        .await
        .unwrap();
    assert_eq!(shared.len(), 1);
    assert!(res
        .list(&bob(), &[Kind::Component], &ListOptions::default())
        .await
        .unwrap()
        .is_empty());
    // Builds of bob's resolve it; it stays another account's, so untrusted.
    let resolver = StoreResolver::new(store.clone(), bob());
    assert!(resolver.resolve(&c.arn).await.unwrap().is_some());
    let owner = Owner::of(Some(&c.arn), &bob().account);
    assert!(!TrustPolicy::default().trusts(&owner), "{owner:?}");

    // Only alice writes it.
    let e = res
        .delete(&bob(), &c.arn, &[Kind::Component])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden, "{e}");
    let e = res
        .put_policy(&bob(), Kind::Component, &c.arn, &grant(&carol()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden, "{e}");
    let e = res
        .get_policy(&bob(), Kind::Component, &c.arn)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden, "{e}");
    let e = res.set_tags(&bob(), &c.arn, |_| {}).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden, "{e}");
    for e in [
        res.delete(&carol(), &c.arn, &[Kind::Component])
            .await
            .unwrap_err(),
        res.get_policy(&carol(), Kind::Component, &c.arn)
            .await
            .unwrap_err(),
        res.set_tags(&carol(), &c.arn, |_| {}).await.unwrap_err(),
    ] {
        assert_eq!(e.code(), ErrorCode::ResourceNotFound, "{e}");
    }
    assert_eq!(
        res.get_policy(&alice(), Kind::Component, &c.arn)
            .await
            .unwrap(),
        grant(&bob())
    );

    // A new policy replaces the grant.
    res.put_policy(&alice(), Kind::Component, &c.arn, &grant(&carol()))
        .await
        .unwrap();
    assert!(!may_use(&store, &bob().account, &c.arn).await.unwrap());
    assert!(res.get(&bob(), &c.arn, &[Kind::Component]).await.is_err());
    let gone = resolver.resolve(&c.arn).await.unwrap_err();
    assert!(gone.contains(&c.arn), "{gone}");
}

#[tokio::test]
async fn policies_go_on_exact_arns_with_the_field_named() {
    let (_dir, _store, res, c) = setup().await;
    let version = c.arn.rsplit_once('/').unwrap().0.to_string();
    for arn in [version.as_str(), "web/1.0.0/1"] {
        let e = res
            .put_policy(&alice(), Kind::Component, arn, &grant(&bob()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParameterValue, "{e}");
        assert_eq!(e.problems()[0].field.as_deref(), Some("componentArn"));
    }
    let e = res
        .put_policy(&alice(), Kind::Component, &c.arn, "{}")
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidParameterValue, "{e}");
    assert_eq!(e.problems()[0].field.as_deref(), Some("policy"));
    assert!(e.to_string().contains("Statement"), "{e}");
    let e = res
        .get_policy(&alice(), Kind::Component, &c.arn)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ResourceNotFound, "{e}");
    // A recipe ARN on PutComponentPolicy names no component.
    let recipe = format!("{}image-recipe/web/1.0.0", alice().arn_prefix());
    let e = res
        .put_policy(&alice(), Kind::Component, &recipe, &grant(&bob()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidParameterValue, "{e}");
}
