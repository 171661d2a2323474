//! Grants and the repository guard over a real store: who owns which repository, from the
//! image records' outputs.

use kiln_dist::{Output, OutputKind, Planned};

use super::grants::{grant, Requester, Scope};
use super::guard;
use super::targets::AccountCopy;
use crate::record::tests::record;
use crate::record::{Records, State};
use crate::state::Store;
use crate::store::Home;

const A: &str = "111111111111";
const B: &str = "222222222222";
const HOST: &str = "h:5000";

fn output(location: &str) -> Output {
    Output {
        region: "east".into(),
        kind: OutputKind::OciRegistry,
        location: location.into(),
        tag: "1.0.0-1".into(),
        manifest_digest: "sha256:00".into(),
        tags: vec![],
        sent: None,
    }
}

fn planned(location: &str) -> Planned {
    Planned {
        region: "east".into(),
        kind: OutputKind::OciRegistry,
        location: location.into(),
        tags: vec!["1.0.0".into()],
        digest: None,
    }
}

async fn store_with_images(dir: &std::path::Path) -> Store {
    let store = Store::open(&Home::new(dir)).await.unwrap();
    let recs = Records::new(store.clone());
    let mut a = record("app", "1.0.0", State::Available);
    a.account = A.into();
    let copy = format!("docker://{HOST}/ns/{B}/app");
    a.outputs = vec![output(&format!("docker://{HOST}/ns/app")), output(&copy)];
    a.account_copies = vec![AccountCopy {
        account: B.into(),
        location: copy,
    }];
    recs.create(&mut a).await.unwrap();
    // A failed build holds nothing: its repository is no one's.
    let mut failed = record("gone", "1.0.0", State::Failed);
    failed.account = A.into();
    failed.outputs = vec![output(&format!("docker://{HOST}/ns/gone"))];
    recs.create(&mut failed).await.unwrap();
    store
}

async fn actions(store: &Store, who: Requester, scope: &str) -> Vec<String> {
    let scopes = vec![Scope::parse(scope).unwrap()];
    grant(store, &who, HOST, &scopes)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|a| a.actions)
        .collect()
}

#[tokio::test]
async fn accounts_pull_their_own_images_and_copies_and_never_push() {
    let d = tempfile::tempdir().unwrap();
    let store = store_with_images(d.path()).await;
    let acct = |a: &str| Requester::Account(a.into());
    let own = "repository:ns/app:pull,push";
    assert_eq!(actions(&store, acct(A), own).await, ["pull"]);
    assert!(actions(&store, acct(B), own).await.is_empty());
    let copy = format!("repository:ns/{B}/app:pull");
    assert_eq!(actions(&store, acct(B), &copy).await, ["pull"]);
    assert!(actions(&store, acct(A), &copy).await.is_empty());
    assert!(actions(&store, acct(A), "repository:ns/gone:pull")
        .await
        .is_empty());
    assert!(actions(&store, acct(A), "repository:ns/app:push")
        .await
        .is_empty());
    // Another registry's repository of the same name is not this one.
    let elsewhere = grant(
        &store,
        &acct(A),
        "other:5000",
        &[Scope::parse(own).unwrap()],
    )
    .await
    .unwrap();
    assert!(elsewhere.is_empty());
    // kiln's own distribution gets what it asks for.
    assert_eq!(
        actions(&store, Requester::Service, own).await,
        ["pull", "push"]
    );
}

#[tokio::test]
async fn a_build_cannot_write_into_another_accounts_repository() {
    let d = tempfile::tempdir().unwrap();
    let store = store_with_images(d.path()).await;
    let theirs = [planned(&format!("docker://{HOST}/ns/app"))];
    let e = guard::check(&store, B, &theirs).await.unwrap_err();
    assert!(
        e.contains("holds images of account 111111111111") && e.contains("targetRepository"),
        "{e}"
    );
    assert!(guard::check(&store, A, &theirs).await.is_ok());
    // B's copy is B's: B may write there, a third account may not.
    let copy = [planned(&format!("docker://{HOST}/ns/{B}/app"))];
    assert!(guard::check(&store, B, &copy).await.is_ok());
    assert!(guard::check(&store, "333333333333", &copy).await.is_err());
    // A failed build's repository, and folders, are anyone's.
    assert!(
        guard::check(&store, B, &[planned(&format!("docker://{HOST}/ns/gone"))])
            .await
            .is_ok()
    );
    assert!(guard::check(&store, B, &[planned("/srv/regions/east")])
        .await
        .is_ok());
}

#[tokio::test]
async fn an_image_shared_by_policy_is_pulled_by_its_grantee_until_revoked() {
    let d = tempfile::tempdir().unwrap();
    let store = store_with_images(d.path()).await;
    let carol = || Requester::Account("333333333333".into());
    let scope = "repository:ns/app:pull";
    assert!(actions(&store, carol(), scope).await.is_empty());
    let res = crate::resources::Resources::new(store.clone());
    let owner = crate::principal::Principal::new(A, "alice");
    let arn = crate::record::image_arn(A, "app", &"1.0.0".parse().unwrap(), 1);
    let policy = |who: &str| {
        format!(
            r#"{{"Statement": [{{"Effect": "Allow", "Principal": {{"AWS": "{who}"}}, "Action": "imagebuilder:GetImage"}}]}}"#
        )
    };
    res.put_policy(
        &owner,
        kiln_store::Kind::Image,
        &arn,
        &policy("333333333333"),
    )
    .await
    .unwrap();
    assert_eq!(actions(&store, carol(), scope).await, ["pull"]);
    // Pull only, and only where the image is.
    assert!(actions(&store, carol(), "repository:ns/app:push")
        .await
        .is_empty());
    assert!(actions(&store, carol(), "repository:ns/gone:pull")
        .await
        .is_empty());
    // Revoked by a policy naming someone else.
    res.put_policy(&owner, kiln_store::Kind::Image, &arn, &policy(B))
        .await
        .unwrap();
    assert!(actions(&store, carol(), scope).await.is_empty());
}
