//! Checks of resource policies and the grants they make.

use super::{arns, image, new_row, resource, Backend, Must};
use crate::{Filter, Kind, Policy, StoreError};

const B: &str = "111111111111";
const C: &str = "222222222222";

fn policy(grantees: &[&str]) -> Policy {
    Policy {
        document: format!(r#"{{"Version":"2012-10-17","n":{}}}"#, grantees.len()),
        grantees: grantees.iter().map(|g| g.to_string()).collect(),
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A policy reads back as put (its grantees once each); a new one replaces it whole; `None`
/// removes it; a row that does not exist has none to put.
pub async fn policies_replace_and_read_back<B2: Backend>(backend: &B2) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let row = new_row(
        store,
        resource(Kind::Component, "web", Some([1, 0, 0])),
        &[],
    )
    .await;
    assert_eq!(store.policy(&row.arn).await.must(), None);
    store
        .put_policy(&row.arn, Some(policy(&[C, B, C])))
        .await
        .must();
    let got = store.policy(&row.arn).await.must().expect("a policy");
    assert_eq!(got.document, policy(&[C, B, C]).document);
    assert_eq!(sorted(got.grantees), [B, C], "each grantee once");
    store.put_policy(&row.arn, Some(policy(&[C]))).await.must();
    let got = store.policy(&row.arn).await.must().expect("a policy");
    assert_eq!(got.grantees, [C], "the new policy replaces the old grants");
    store.put_policy(&row.arn, None).await.must();
    assert_eq!(store.policy(&row.arn).await.must(), None);
    match store
        .put_policy(&format!("{}-missing", row.arn), Some(policy(&[B])))
        .await
        .must_fail()
    {
        StoreError::NotFound { .. } => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// `Filter::shared_with` selects the rows granted to an account, with the other filters, in
/// lists and counts; a revoked grant selects nothing.
pub async fn shared_with_selects_granted_rows<B2: Backend>(backend: &B2) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let web = new_row(
        store,
        resource(Kind::Component, "web", Some([1, 0, 0])),
        &[],
    )
    .await;
    let _db = new_row(store, resource(Kind::Component, "db", Some([1, 0, 0])), &[]).await;
    let img = new_row(store, image("web", [1, 0, 0], 1), &[]).await;
    store.put_policy(&web.arn, Some(policy(&[B]))).await.must();
    store
        .put_policy(&img.arn, Some(policy(&[B, C])))
        .await
        .must();
    let shared = |account: &str, kind: Option<Kind>| Filter {
        kind,
        shared_with: Some(account.to_owned()),
        ..Filter::default()
    };
    let f = shared(B, Some(Kind::Component));
    assert_eq!(arns(&store.list(&f).await.must()), [web.arn.as_str()]);
    assert_eq!(store.count(&f).await.must(), 1);
    assert_eq!(store.list(&shared(B, None)).await.must().len(), 2);
    assert_eq!(
        arns(&store.list(&shared(C, None)).await.must()),
        [img.arn.as_str()]
    );
    assert!(store
        .list(&shared("333333333333", None))
        .await
        .must()
        .is_empty());
    let named = Filter {
        name: Some("DB".into()),
        ..shared(B, Some(Kind::Component))
    };
    assert!(
        store.list(&named).await.must().is_empty(),
        "db is not shared"
    );
    // Revoking is replacing: the grantee no longer selects it.
    store.put_policy(&web.arn, Some(policy(&[C]))).await.must();
    assert!(store.list(&f).await.must().is_empty());
    assert_eq!(store.count(&f).await.must(), 0);
}

/// Deleting a row removes its policy and grants: a row stored again under the ARN is shared
/// with nobody.
pub async fn deleting_a_row_drops_its_policy<B2: Backend>(backend: &B2) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let row = resource(Kind::ImageRecipe, "base", Some([1, 0, 0]));
    let stored = new_row(store, row.clone(), &[]).await;
    store
        .put_policy(&stored.arn, Some(policy(&[B])))
        .await
        .must();
    store.delete(&stored.arn).await.must();
    let again = new_row(store, row, &[]).await;
    assert_eq!(store.policy(&again.arn).await.must(), None);
    let f = Filter {
        shared_with: Some(B.to_owned()),
        ..Filter::default()
    };
    assert!(store.list(&f).await.must().is_empty());
}
