//! The SQLite store on real files in temporary directories.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use kiln_store::{
    Created, Filter, Kind, Order, Row, SqliteStore, StateStore, StoreError, Update, SCHEMA_VERSION,
};
use sqlx::ConnectOptions;
use tempfile::TempDir;

const PREFIX: &str = "arn:aws:imagebuilder:local:000000000000";

fn image(name: &str, version: [u32; 3], build: u32) -> Row {
    let [major, minor, patch] = version;
    Row {
        kind: Kind::Image,
        arn: format!(
            "{PREFIX}:image/{}/{major}.{minor}.{patch}/{build}",
            name.to_lowercase()
        ),
        name: name.to_owned(),
        version: Some(version),
        build: Some(build),
        owner: "Self".to_owned(),
        state: Some("AVAILABLE".to_owned()),
        pipeline: None,
        digest: format!("digest-{name}-{major}.{minor}.{patch}-{build}"),
        created_ms: 1_000,
        updated_ms: 0,
        summary: format!(r#"{{"name":"{name}"}}"#),
        body: format!(r#"{{"name":"{name}","build":{build}}}"#),
    }
}

fn resource(kind: Kind, name: &str, version: Option<[u32; 3]>) -> Row {
    let v = version.map_or(String::new(), |[a, b, c]| format!("/{a}.{b}.{c}"));
    Row {
        kind,
        arn: format!("{PREFIX}:{}/{}{v}", kind.as_str(), name.to_lowercase()),
        name: name.to_owned(),
        version,
        build: None,
        owner: "Self".to_owned(),
        state: None,
        pipeline: None,
        digest: format!("digest-{name}"),
        created_ms: 5,
        updated_ms: 0,
        summary: "{}".to_owned(),
        body: format!(r#"{{"name":"{name}"}}"#),
    }
}

async fn new_store() -> (TempDir, SqliteStore) {
    let dir = TempDir::new().unwrap();
    let store = SqliteStore::open(&dir.path().join("kiln.db"))
        .await
        .unwrap();
    (dir, store)
}

fn arns(rows: &[Row]) -> Vec<String> {
    rows.iter().map(|r| r.arn.clone()).collect()
}

async fn new_row(store: &SqliteStore, row: Row, refs: &[&str]) -> Row {
    let refs = refs.iter().map(|r| r.to_string()).collect();
    match store.create(row, refs, None).await.unwrap() {
        Created::New(row) => row,
        other => panic!("expected a new row, got {other:?}"),
    }
}

/// Every file the store keeps next to the database, for checking that a test changed none.
fn snapshot(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[tokio::test]
async fn created_rows_read_back_with_body_and_list_without() {
    let (_dir, store) = new_store().await;
    let mut row = image("Web", [1, 2, 3], 1);
    row.pipeline = Some(format!("{PREFIX}:image-pipeline/nightly"));
    let stored = new_row(&store, row.clone(), &[]).await;
    assert!(stored.updated_ms > 0, "the store sets updated_ms");
    assert_eq!(
        Row {
            updated_ms: 0,
            ..stored.clone()
        },
        row
    );

    let got = store.get(&row.arn).await.unwrap().unwrap();
    assert_eq!(got, stored);
    assert_eq!(store.get(&format!("{}x", row.arn)).await.unwrap(), None);
    // ARNs are compared exactly.
    assert_eq!(store.get(&row.arn.to_uppercase()).await.unwrap(), None);

    let listed = store.list(&Filter::default()).await.unwrap();
    assert_eq!(
        listed,
        vec![Row {
            body: String::new(),
            ..stored
        }]
    );

    let recipe = new_row(&store, resource(Kind::ImageRecipe, "r", None), &[]).await;
    assert_eq!(recipe.version, None);
    assert_eq!(store.get(&recipe.arn).await.unwrap(), Some(recipe));
}

#[tokio::test]
async fn list_filters_orders_and_pages() {
    let (_dir, store) = new_store().await;
    let pipeline = format!("{PREFIX}:image-pipeline/nightly");
    let mut rows = Vec::new();
    for (i, (name, version, build, state, owner, made_by_pipeline)) in [
        ("Web", [1, 0, 0], 1, "AVAILABLE", "Self", false),
        ("Web", [1, 0, 0], 2, "FAILED", "Self", true),
        ("web", [1, 2, 0], 1, "AVAILABLE", "Self", true),
        ("WEB", [2, 0, 0], 1, "BUILDING", "Self", false),
        ("Web", [10, 0, 0], 1, "AVAILABLE", "other", false),
        ("db", [1, 0, 0], 1, "AVAILABLE", "Self", false),
        ("Zeta", [0, 0, 1], 1, "CANCELLED", "Self", true),
    ]
    .into_iter()
    .enumerate()
    {
        let mut row = image(name, version, build);
        row.state = Some(state.to_owned());
        row.owner = owner.to_owned();
        row.pipeline = made_by_pipeline.then(|| pipeline.clone());
        // Creation order differs from version order, so that the orders can be told apart.
        row.created_ms = 10_000 - 100 * i as i64;
        rows.push(new_row(&store, row, &[]).await);
    }
    new_row(
        &store,
        resource(Kind::Component, "web", Some([1, 0, 0])),
        &[],
    )
    .await;
    let a = |i: usize| rows[i].arn.clone();

    let images = Filter {
        kind: Some(Kind::Image),
        ..Filter::default()
    };
    // Version order: name ignoring case, then the newest version and build first.
    let all = store.list(&images).await.unwrap();
    assert_eq!(arns(&all), vec![a(5), a(4), a(3), a(2), a(1), a(0), a(6)]);
    assert!(all.iter().all(|r| r.body.is_empty()));
    assert_eq!(store.count(&images).await.unwrap(), 7);
    assert_eq!(store.count(&Filter::default()).await.unwrap(), 8);

    let list = |filter: Filter| {
        let store = store.clone();
        async move {
            let rows = store.list(&filter).await.unwrap();
            let count = store.count(&filter).await.unwrap();
            (arns(&rows), count)
        }
    };
    let web = || Filter {
        kind: Some(Kind::Image),
        name: Some("wEB".to_owned()),
        ..Filter::default()
    };
    assert_eq!(list(web()).await, (vec![a(4), a(3), a(2), a(1), a(0)], 5));
    let (names, _) = list(Filter {
        name: Some("WEB".to_owned()),
        ..Filter::default()
    })
    .await;
    assert_eq!(
        names.len(),
        6,
        "without a kind, the component named web is listed too"
    );
    assert_eq!(
        list(Filter {
            version: [Some(1), None, None],
            ..web()
        })
        .await,
        (vec![a(2), a(1), a(0)], 3)
    );
    assert_eq!(
        list(Filter {
            version: [Some(1), Some(0), None],
            ..web()
        })
        .await,
        (vec![a(1), a(0)], 2)
    );
    assert_eq!(
        list(Filter {
            version: [Some(1), Some(0), Some(0)],
            build: Some(2),
            ..web()
        })
        .await,
        (vec![a(1)], 1)
    );
    assert_eq!(
        list(Filter {
            version: [None, Some(0), Some(0)],
            ..images.clone()
        })
        .await,
        (vec![a(5), a(4), a(3), a(1), a(0)], 5)
    );
    assert_eq!(
        list(Filter {
            states: vec!["FAILED".to_owned(), "BUILDING".to_owned()],
            ..images.clone()
        })
        .await,
        (vec![a(3), a(1)], 2)
    );
    assert_eq!(
        list(Filter {
            owner: Some("other".to_owned()),
            ..Filter::default()
        })
        .await,
        (vec![a(4)], 1)
    );
    assert_eq!(
        list(Filter {
            pipeline: Some(pipeline.clone()),
            ..Filter::default()
        })
        .await,
        (vec![a(2), a(1), a(6)], 3)
    );
    assert_eq!(
        list(Filter {
            kind: Some(Kind::Component),
            ..Filter::default()
        })
        .await
        .1,
        1
    );
    assert_eq!(
        list(Filter {
            name: Some("nothing".to_owned()),
            ..Filter::default()
        })
        .await,
        (vec![], 0)
    );

    // Newest and oldest by creation time; ties broken by ARN.
    let newest = Filter {
        order: Order::Newest,
        ..images.clone()
    };
    assert_eq!(
        list(newest.clone()).await.0,
        (0..7).map(a).collect::<Vec<_>>()
    );
    assert_eq!(
        list(Filter {
            order: Order::Oldest,
            ..images.clone()
        })
        .await
        .0,
        (0..7).rev().map(a).collect::<Vec<_>>()
    );

    // Pages: count ignores limit and offset.
    assert_eq!(
        list(Filter {
            limit: Some(3),
            ..newest.clone()
        })
        .await,
        (vec![a(0), a(1), a(2)], 7)
    );
    assert_eq!(
        list(Filter {
            limit: Some(3),
            offset: 3,
            ..newest.clone()
        })
        .await,
        (vec![a(3), a(4), a(5)], 7)
    );
    assert_eq!(
        list(Filter {
            offset: 5,
            ..newest.clone()
        })
        .await,
        (vec![a(5), a(6)], 7)
    );
    assert_eq!(
        list(Filter {
            limit: Some(0),
            ..newest
        })
        .await,
        (vec![], 7)
    );
}

#[tokio::test]
async fn lists_keep_to_an_arn_prefix() {
    let (_dir, store) = new_store().await;
    let mine = new_row(
        &store,
        resource(Kind::Component, "web", Some([1, 0, 0])),
        &[],
    )
    .await;
    let mut theirs = resource(Kind::Component, "web", Some([2, 0, 0]));
    theirs.arn = "arn:aws:imagebuilder:local:111111111111:component/web/2.0.0".to_owned();
    let theirs = new_row(&store, theirs, &[]).await;
    let web = |prefix: Option<&str>| Filter {
        name: Some("web".to_owned()),
        arn_prefix: prefix.map(str::to_owned),
        ..Filter::default()
    };
    let listed = |f: Filter| {
        let store = store.clone();
        async move {
            let rows = store.list(&f).await.unwrap();
            (arns(&rows), store.count(&f).await.unwrap())
        }
    };
    assert_eq!(listed(web(None)).await.1, 2);
    assert_eq!(
        listed(web(Some(&format!("{PREFIX}:")))).await,
        (vec![mine.arn], 1)
    );
    assert_eq!(
        listed(web(Some("arn:aws:imagebuilder:local:111111111111:"))).await,
        (vec![theirs.arn], 1)
    );
    assert_eq!(
        listed(web(Some("arn:aws:imagebuilder:local:222222222222:"))).await,
        (vec![], 0)
    );
}

#[tokio::test]
async fn pages_follow_the_order_of_the_whole_list() {
    let (_dir, store) = new_store().await;
    let mut rows = Vec::new();
    for (i, name) in ["b", "A", "a", "Ä", "ä", "B", "z"].into_iter().enumerate() {
        for build in 1..=2 {
            let mut row = image(name, [1, i as u32 % 2, 0], build);
            row.arn = format!("{PREFIX}:image/{i}-{name}/{build}");
            row.created_ms = (i as i64 * 7) % 4;
            rows.push(row);
        }
        let mut unversioned = resource(Kind::ImageRecipe, name, None);
        unversioned.arn = format!("{PREFIX}:image-recipe/{i}-{name}");
        rows.push(unversioned);
    }
    assert_eq!(store.import(rows).await.unwrap(), 21);
    for order in [Order::Version, Order::Newest, Order::Oldest] {
        let all = store
            .list(&Filter {
                order,
                ..Filter::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 21);
        let mut paged = Vec::new();
        for page in 0..8 {
            paged.extend(
                store
                    .list(&Filter {
                        order,
                        limit: Some(3),
                        offset: page * 3,
                        ..Filter::default()
                    })
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(arns(&paged), arns(&all), "{order:?}");
    }
}

#[tokio::test]
async fn creating_an_existing_row_returns_it() {
    let (_dir, store) = new_store().await;
    let first = new_row(&store, image("web", [1, 0, 0], 1), &[]).await;

    let mut again = image("web", [1, 0, 0], 1);
    again.body = "{\"other\":true}".to_owned();
    match store.create(again.clone(), vec![], None).await {
        Err(StoreError::AlreadyExists { existing }) => assert_eq!(*existing, first),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    // Same kind, name (in another case), version and build under another ARN.
    again.arn = format!("{PREFIX}:image/elsewhere/1.0.0/1");
    again.name = "WEB".to_owned();
    let err = store.create(again, vec![], None).await.unwrap_err();
    match &err {
        StoreError::AlreadyExists { existing } => assert_eq!(**existing, first),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert!(err.to_string().contains(&first.arn), "{err}");
    assert_eq!(store.count(&Filter::default()).await.unwrap(), 1);
    assert_eq!(store.get(&first.arn).await.unwrap(), Some(first));
}

#[tokio::test]
async fn client_tokens_make_create_idempotent() {
    let (_dir, store) = new_store().await;
    let token = Some("token-1".to_owned());
    let row = resource(Kind::ImageRecipe, "r", Some([1, 0, 0]));
    let Created::New(first) = store
        .create(row.clone(), vec![], token.clone())
        .await
        .unwrap()
    else {
        panic!("first create is new");
    };

    // The same request again, even under another ARN: the first row.
    let mut retry = row.clone();
    retry.arn.push_str("-retry");
    assert_eq!(
        store
            .create(retry.clone(), vec![], token.clone())
            .await
            .unwrap(),
        Created::Existing(first.clone())
    );
    assert_eq!(store.get(&retry.arn).await.unwrap(), None);

    // Another request with the same token.
    let mut other = retry.clone();
    other.digest = "another digest".to_owned();
    let err = store
        .create(other, vec![], token.clone())
        .await
        .unwrap_err();
    match &err {
        StoreError::TokenMismatch { token, arn } => {
            assert_eq!(token, "token-1");
            assert_eq!(arn, &first.arn);
        }
        other => panic!("expected TokenMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("use a new token"), "{err}");

    // Tokens are per kind.
    let component = resource(Kind::Component, "r", Some([1, 0, 0]));
    assert!(matches!(
        store
            .create(component, vec![], token.clone())
            .await
            .unwrap(),
        Created::New(_)
    ));

    // Once the row is deleted, its token starts over.
    store.delete(&first.arn).await.unwrap();
    assert!(matches!(
        store.create(retry, vec![], token).await.unwrap(),
        Created::New(_)
    ));
}

fn make_image(
    name: &'static str,
) -> impl Fn(u32) -> Result<(String, String, String), StoreError> + Send + Sync {
    move |build| {
        Ok((
            format!("{PREFIX}:image/{name}/1.0.0/{build}"),
            format!("{{\"build\":{build}}}"),
            format!("{{\"build\":{build},\"body\":true}}"),
        ))
    }
}

#[tokio::test]
async fn create_build_takes_the_next_number() {
    let (_dir, store) = new_store().await;
    let make = make_image("web");
    let template = image("Web", [1, 0, 0], 0);
    for expected in 1..=3 {
        let row = store
            .create_build(template.clone(), vec![], &make)
            .await
            .unwrap();
        assert_eq!(row.build, Some(expected));
        assert_eq!(row.arn, format!("{PREFIX}:image/web/1.0.0/{expected}"));
        assert_eq!(row.summary, format!("{{\"build\":{expected}}}"));
        assert_eq!(store.get(&row.arn).await.unwrap(), Some(row));
    }
    // Names compare without case.
    let mut upper = template.clone();
    upper.name = "WEB".to_owned();
    assert_eq!(
        store
            .create_build(upper, vec![], &make)
            .await
            .unwrap()
            .build,
        Some(4)
    );
    // Another version starts at 1.
    let other = image("Web", [1, 0, 1], 0);
    let row = store
        .create_build(other, vec![], &|build| {
            Ok((
                format!("{PREFIX}:image/web/1.0.1/{build}"),
                "{}".to_owned(),
                "{}".to_owned(),
            ))
        })
        .await
        .unwrap();
    assert_eq!(row.build, Some(1));
    // Gaps are not filled: the highest number counts.
    store
        .import(vec![image("web", [1, 0, 0], 9)])
        .await
        .unwrap();
    assert_eq!(
        store
            .create_build(template, vec![], &make)
            .await
            .unwrap()
            .build,
        Some(10)
    );
}

/// Twenty builds of one version, as one process of a race would take them.
async fn take_builds(store: SqliteStore, n: usize) -> Vec<u32> {
    let make = make_image("race");
    let mut builds = Vec::new();
    for _ in 0..n {
        let row = store
            .create_build(image("race", [1, 0, 0], 0), vec![], &make)
            .await
            .unwrap();
        builds.push(row.build.unwrap());
    }
    builds
}

fn assert_one_to_forty(builds: Vec<u32>) {
    let distinct: BTreeSet<u32> = builds.iter().copied().collect();
    assert_eq!(builds.len(), 40, "{builds:?}");
    assert_eq!(distinct, (1..=40).collect(), "{builds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_get_distinct_builds() {
    let (_dir, store) = new_store().await;
    let a = tokio::spawn(take_builds(store.clone(), 20));
    let b = tokio::spawn(take_builds(store.clone(), 20));
    let mut builds = a.await.unwrap();
    builds.extend(b.await.unwrap());
    assert_one_to_forty(builds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_on_one_file_get_distinct_builds() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("kiln.db");
    let one = SqliteStore::open(&path).await.unwrap();
    let two = SqliteStore::open(&path).await.unwrap();
    let a = tokio::spawn(take_builds(one.clone(), 20));
    let b = tokio::spawn(take_builds(two.clone(), 20));
    let mut builds = a.await.unwrap();
    builds.extend(b.await.unwrap());
    assert_one_to_forty(builds);
    let listed = one.list(&Filter::default()).await.unwrap();
    assert_eq!(listed.len(), 40);
}

const CHILD_DB: &str = "KILN_STORE_TEST_CHILD_DB";

/// The other process of `two_processes_get_distinct_builds`; does nothing in a normal run.
#[tokio::test]
async fn child_takes_builds() {
    let Some(path) = std::env::var_os(CHILD_DB) else {
        return;
    };
    let store = SqliteStore::open(Path::new(&path)).await.unwrap();
    // Start together with the parent, so that the two really race.
    std::fs::write(format!("{}.child-ready", path.display()), "").unwrap();
    wait_for(&format!("{}.go", path.display())).await;
    let builds = take_builds(store, 20).await;
    println!("BUILDS {builds:?}");
}

async fn wait_for(path: &str) {
    for _ in 0..30_000 {
        if Path::new(path).exists() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("{path} did not appear");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_get_distinct_builds() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("kiln.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "child_takes_builds",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DB, &path)
        .output();
    let parent = async {
        wait_for(&format!("{}.child-ready", path.display())).await;
        std::fs::write(format!("{}.go", path.display()), "").unwrap();
        take_builds(store.clone(), 20).await
    };
    let (child, mut builds) = tokio::join!(child, parent);
    let child = child.unwrap();
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&child.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("BUILDS ").map(|(_, builds)| builds))
        .unwrap_or_else(|| panic!("the child printed no builds: {stdout}"));
    let theirs: Vec<u32> = serde_json::from_str(line).unwrap();
    builds.extend(theirs);
    assert_one_to_forty(builds);
}

#[tokio::test]
async fn update_changes_fields_and_refs() {
    let (_dir, store) = new_store().await;
    let recipe = format!("{PREFIX}:image-recipe/r/1.0.0");
    let mut row = image("web", [1, 0, 0], 1);
    row.state = Some("PENDING".to_owned());
    let stored = new_row(&store, row, &[&recipe]).await;

    let updated = store
        .update(
            &stored.arn,
            Update {
                state: Some("AVAILABLE".to_owned()),
                body: Some("{\"done\":true}".to_owned()),
                refs: Some(vec![format!("{PREFIX}:image-recipe/r/2.0.0")]),
                ..Update::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.state.as_deref(), Some("AVAILABLE"));
    assert_eq!(updated.body, "{\"done\":true}");
    assert_eq!(updated.summary, stored.summary, "fields left None stay");
    assert_eq!(updated.digest, stored.digest);
    assert!(updated.updated_ms >= stored.updated_ms);
    assert_eq!(store.get(&stored.arn).await.unwrap(), Some(updated.clone()));
    assert_eq!(
        store
            .referrers(&format!("{PREFIX}:image-recipe/"))
            .await
            .unwrap(),
        vec![(stored.arn.clone(), format!("{PREFIX}:image-recipe/r/2.0.0"))]
    );

    let again = store
        .update(
            &stored.arn,
            Update {
                summary: Some("{\"s\":1}".to_owned()),
                digest: Some("new".to_owned()),
                ..Update::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (again.summary.as_str(), again.digest.as_str()),
        ("{\"s\":1}", "new")
    );
    assert_eq!(again.body, updated.body);
    assert_eq!(
        store
            .referrers(&format!("{PREFIX}:image-recipe/"))
            .await
            .unwrap()
            .len(),
        1,
        "refs: None keeps the references"
    );

    match store.update("arn:nothing", Update::default()).await {
        Err(StoreError::NotFound { arn }) => assert_eq!(arn, "arn:nothing"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn delete_refuses_rows_in_use() {
    let (_dir, store) = new_store().await;
    let recipe = new_row(
        &store,
        resource(Kind::ImageRecipe, "r", Some([1, 0, 0])),
        &[],
    )
    .await;
    let pipeline = new_row(
        &store,
        resource(Kind::ImagePipeline, "p", None),
        &[&recipe.arn, &recipe.arn],
    )
    .await;
    let image = new_row(&store, image("web", [1, 0, 0], 1), &[&recipe.arn]).await;

    let err = store.delete(&recipe.arn).await.unwrap_err();
    match &err {
        StoreError::InUse { arn, users } => {
            assert_eq!(arn, &recipe.arn);
            // Sorted: "image-pipeline/" comes before "image/".
            assert_eq!(users, &vec![pipeline.arn.clone(), image.arn.clone()]);
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&image.arn) && message.contains(&pipeline.arn),
        "{message}"
    );
    assert!(store.get(&recipe.arn).await.unwrap().is_some());

    store.delete(&image.arn).await.unwrap();
    match store.delete(&recipe.arn).await {
        Err(StoreError::InUse { users, .. }) => assert_eq!(users, vec![pipeline.arn.clone()]),
        other => panic!("expected InUse, got {other:?}"),
    }
    store.delete(&pipeline.arn).await.unwrap();
    assert!(
        store.referrers("").await.unwrap().is_empty(),
        "references go with their row"
    );
    store.delete(&recipe.arn).await.unwrap();
    assert_eq!(store.get(&recipe.arn).await.unwrap(), None);
    assert_eq!(store.count(&Filter::default()).await.unwrap(), 0);

    match store.delete(&recipe.arn).await {
        Err(StoreError::NotFound { arn }) => assert_eq!(arn, recipe.arn),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn a_row_referring_to_itself_can_be_deleted() {
    let (_dir, store) = new_store().await;
    let row = resource(Kind::Component, "c", Some([1, 0, 0]));
    let arn = row.arn.clone();
    new_row(&store, row, &[&arn]).await;
    store.delete(&arn).await.unwrap();
}

#[tokio::test]
async fn referrers_match_by_prefix() {
    let (_dir, store) = new_store().await;
    let component = format!("{PREFIX}:component/foo");
    let a = new_row(
        &store,
        resource(Kind::ImageRecipe, "a", Some([1, 0, 0])),
        &[
            &format!("{component}/1.x.x"),
            &format!("{PREFIX}:component/foobar/1.0.0/1"),
        ],
    )
    .await;
    let b = new_row(
        &store,
        resource(Kind::ImageRecipe, "b", Some([1, 0, 0])),
        &[&format!("{component}/1.0.0/1")],
    )
    .await;

    let found = store.referrers(&format!("{component}/")).await.unwrap();
    assert_eq!(
        found,
        vec![
            (b.arn.clone(), format!("{component}/1.0.0/1")),
            (a.arn.clone(), format!("{component}/1.x.x")),
        ]
    );
    assert_eq!(store.referrers(&component).await.unwrap().len(), 3);
    assert!(store.referrers("arn:other").await.unwrap().is_empty());
    assert_eq!(store.referrers("").await.unwrap().len(), 3);
    // Deleting a wildcard target is not blocked by delete (only exact references are): the
    // caller checks wildcards with referrers.
    let exact = new_row(
        &store,
        resource(Kind::Component, "foo", Some([1, 0, 0])),
        &[],
    )
    .await;
    assert_eq!(exact.arn, format!("{component}/1.0.0"));
    store.delete(&exact.arn).await.unwrap();
}

#[tokio::test]
async fn cancel_is_flagged_on_the_row() {
    let (_dir, store) = new_store().await;
    let row = new_row(&store, image("web", [1, 0, 0], 1), &[]).await;
    assert!(!store.cancel_requested(&row.arn).await.unwrap());
    assert!(store.request_cancel(&row.arn).await.unwrap());
    assert!(store.cancel_requested(&row.arn).await.unwrap());
    // Another handle (another process) sees it.
    let other = SqliteStore::open(store.path()).await.unwrap();
    assert!(other.cancel_requested(&row.arn).await.unwrap());
    assert!(!store.request_cancel("arn:missing").await.unwrap());
    assert!(!store.cancel_requested("arn:missing").await.unwrap());
}

#[tokio::test]
async fn import_stores_many_rows_once() {
    let (_dir, store) = new_store().await;
    let mut old = image("web", [1, 0, 0], 1);
    old.updated_ms = 42;
    let recipe = format!("{PREFIX}:image-recipe/r/1.0.0");
    let rows = vec![
        (old.clone(), vec![recipe.clone()]),
        (image("web", [1, 0, 0], 2), vec![]),
    ];
    assert_eq!(store.import_with_refs(rows.clone()).await.unwrap(), 2);
    assert_eq!(
        store.get(&old.arn).await.unwrap(),
        Some(old.clone()),
        "import keeps updated_ms"
    );
    assert_eq!(
        store.referrers(&recipe).await.unwrap(),
        vec![(old.arn.clone(), recipe)]
    );
    // Again: nothing new.
    assert_eq!(store.import_with_refs(rows).await.unwrap(), 0);
    // A clash on the build key stores nothing of the batch.
    let mut clash = image("web", [1, 0, 0], 1);
    clash.arn.push_str("-other");
    match store.import(vec![image("web", [1, 0, 0], 3), clash]).await {
        Err(StoreError::AlreadyExists { existing }) => assert_eq!(*existing, old),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(store.count(&Filter::default()).await.unwrap(), 2);
}

#[tokio::test]
async fn ten_thousand_images() {
    let (_dir, store) = new_store().await;
    let body = format!(r#"{{"log":"{}"}}"#, "x".repeat(4_000));
    let summary = format!(r#"{{"summary":"{}"}}"#, "s".repeat(280));
    let mut rows = Vec::new();
    for i in 0..10_000u32 {
        // 100 names x 10 versions x 10 builds.
        let mut row = image(
            &format!("Image{}", i / 100),
            [1, (i / 10) % 10, 0],
            i % 10 + 1,
        );
        row.created_ms = i64::from(i);
        row.body = body.clone();
        row.summary = summary.clone();
        rows.push(row);
    }
    let started = Instant::now();
    assert_eq!(store.import(rows).await.unwrap(), 10_000);
    eprintln!("import of 10,000 rows: {:?}", started.elapsed());

    let arn = format!("{PREFIX}:image/image42/1.3.0/7");
    let started = Instant::now();
    let row = store.get(&arn).await.unwrap().unwrap();
    eprintln!("get: {:?}", started.elapsed());
    assert_eq!((row.name.as_str(), row.body.len()), ("Image42", body.len()));

    let started = Instant::now();
    let one_name = store
        .list(&Filter {
            kind: Some(Kind::Image),
            name: Some("image42".to_owned()),
            ..Filter::default()
        })
        .await
        .unwrap();
    eprintln!("list of one name: {:?}", started.elapsed());
    assert_eq!(one_name.len(), 100);
    assert_eq!(one_name[0].version, Some([1, 9, 0]));
    assert_eq!(one_name[0].build, Some(10));

    let started = Instant::now();
    let one_version = store
        .list(&Filter {
            kind: Some(Kind::Image),
            name: Some("IMAGE42".to_owned()),
            version: [Some(1), Some(3), None],
            ..Filter::default()
        })
        .await
        .unwrap();
    eprintln!("list of one version: {:?}", started.elapsed());
    assert_eq!(one_version.len(), 10);
    assert!(one_version.iter().all(|r| r.version == Some([1, 3, 0])));

    let started = Instant::now();
    let all = store
        .list(&Filter {
            kind: Some(Kind::Image),
            ..Filter::default()
        })
        .await
        .unwrap();
    eprintln!("list of all: {:?}", started.elapsed());
    assert_eq!(all.len(), 10_000);
    assert!(all
        .iter()
        .all(|r| r.body.is_empty() && r.summary == summary));
    assert_eq!(all[0].arn, format!("{PREFIX}:image/image0/1.9.0/10"));

    let started = Instant::now();
    let newest = store
        .list(&Filter {
            order: Order::Newest,
            limit: Some(20),
            ..Filter::default()
        })
        .await
        .unwrap();
    eprintln!("newest 20: {:?}", started.elapsed());
    assert_eq!(newest[0].created_ms, 9_999);
    assert_eq!(store.count(&Filter::default()).await.unwrap(), 10_000);
}

#[tokio::test]
async fn new_stores_get_a_marker_and_old_ones_are_given_one() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("home/kiln.db");
    let marker = dir.path().join("home/kiln.db.created");
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.path(), path);
    let created = std::fs::read_to_string(&marker).unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created.trim()).is_ok(),
        "{created}"
    );
    store.close().await;

    std::fs::remove_file(&marker).unwrap();
    let store = SqliteStore::open(&path).await.unwrap();
    assert!(marker.exists(), "an older store without a marker gets one");
    store.check().await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn a_vanished_store_is_reported_not_recreated() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("kiln.db");
    let store = SqliteStore::open(&path).await.unwrap();
    new_row(&store, image("web", [1, 0, 0], 1), &[]).await;
    store.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }

    let err = SqliteStore::open(&path).await.unwrap_err();
    match &err {
        StoreError::Missing { path: p, created } => {
            assert_eq!(p, &path);
            assert!(!created.is_empty());
        }
        other => panic!("expected Missing, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("kiln.db.created") && message.contains("restore"),
        "{message}"
    );
    assert!(!path.exists(), "the store was not recreated");
}

async fn set_schema_version(path: &Path, version: i64) {
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .unwrap();
    sqlx::query("UPDATE kiln_schema SET version = ?")
        .bind(version)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::Connection::close(conn).await.unwrap();
}

#[tokio::test]
async fn a_store_of_a_newer_kiln_is_left_alone() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("kiln.db");
    let store = SqliteStore::open(&path).await.unwrap();
    new_row(&store, image("web", [1, 0, 0], 1), &[]).await;
    store.close().await;
    set_schema_version(&path, 99).await;
    let before = snapshot(&path);

    let err = SqliteStore::open(&path).await.unwrap_err();
    match &err {
        StoreError::TooNew {
            found, supported, ..
        } => assert_eq!((*found, *supported), (99, SCHEMA_VERSION)),
        other => panic!("expected TooNew, got {other:?}"),
    }
    assert!(err.to_string().contains("upgrade kiln"), "{err}");
    assert_eq!(snapshot(&path), before, "the file is byte-identical");
    assert!(!Path::new(&format!("{}.before-schema-100", path.display())).exists());
}

#[tokio::test]
async fn a_file_of_garbage_is_corrupt_and_kept() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("kiln.db");
    let garbage: Vec<u8> = (0..16_384u32).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();

    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(err.is_corrupt(), "expected Corrupt, got {err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()) && message.contains("before-schema"),
        "{message}"
    );
    assert_eq!(snapshot(&path), garbage);
}

#[tokio::test]
async fn another_programs_database_is_not_taken_over() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("kiln.db");
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    sqlx::query("CREATE TABLE notes (text TEXT)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::Connection::close(conn).await.unwrap();
    let before = snapshot(&path);
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(err.is_corrupt(), "expected Corrupt, got {err:?}");
    assert_eq!(snapshot(&path), before);
}

#[tokio::test]
async fn a_damaged_page_is_reported_by_check() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("kiln.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let mut rows = Vec::new();
    for i in 0..300 {
        let mut row = image("web", [1, 0, 0], i + 1);
        row.body = format!(r#"{{"log":"{}"}}"#, "y".repeat(3_000));
        rows.push(row);
    }
    store.import(rows.clone()).await.unwrap();
    store.check().await.unwrap();
    store.close().await;
    assert!(
        !Path::new(&format!("{}-wal", path.display())).exists(),
        "closing the store checkpoints its journal into the file"
    );

    let mut bytes = snapshot(&path);
    let pages = bytes.len() / 4096;
    assert!(pages > 100, "{pages} pages");
    let middle = pages / 2 * 4096;
    bytes[middle..middle + 4096].fill(0xff);
    std::fs::write(&path, &bytes).unwrap();

    match SqliteStore::open(&path).await {
        Err(err) => assert!(err.is_corrupt(), "expected Corrupt, got {err:?}"),
        Ok(store) => {
            let err = store.check().await.unwrap_err();
            assert!(err.is_corrupt(), "expected Corrupt, got {err:?}");
            assert!(
                err.to_string().contains("restore it from a backup"),
                "{err}"
            );
            // Reads that meet the damage say so too.
            let mut damaged = 0;
            for row in &rows {
                match store.get(&row.arn).await {
                    Ok(_) => {}
                    Err(err) if err.is_corrupt() => damaged += 1,
                    Err(err) => panic!("expected Corrupt, got {err:?}"),
                }
            }
            eprintln!("{damaged} rows unreadable");
            store.close().await;
        }
    }
    assert_eq!(snapshot(&path), bytes, "the damaged file is unchanged");
}

/// Unmounts a tmpfs when the test ends, also when it fails.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Mount {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs (needs root) failed: {status}"
        );
        Mount(dir.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut command = std::process::Command::new("umount");
            if lazy {
                command.arg("-l");
            }
            command.arg(&self.0).status().is_ok_and(|s| s.success())
        };
        if !umount(false) && !umount(true) {
            eprintln!("cannot unmount {}", self.0.display());
        }
    }
}

#[tokio::test]
async fn a_full_disk_stores_nothing_and_loses_nothing() {
    let dir = TempDir::new().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _mount = Mount::tmpfs(&mnt, "2m");

    let store = SqliteStore::open(&mnt.join("kiln.db")).await.unwrap();
    let mut earlier = Vec::new();
    for build in 1..=5 {
        earlier.push(new_row(&store, image("web", [1, 0, 0], build), &[]).await);
    }

    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        while file.write_all(&[0]).is_ok() {}
        let _ = file.sync_all();
    }

    let mut big = image("web", [1, 0, 0], 6);
    big.body = format!(r#"{{"log":"{}"}}"#, "z".repeat(256 * 1024));
    let err = store.create(big.clone(), vec![], None).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Full { .. }),
        "expected Full, got {err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("no space left") && message.contains("kiln.db"),
        "{message}"
    );
    assert_eq!(store.get(&big.arn).await.unwrap(), None);
    for row in &earlier {
        assert_eq!(store.get(&row.arn).await.unwrap().as_ref(), Some(row));
    }
    assert_eq!(store.count(&Filter::default()).await.unwrap(), 5);

    std::fs::remove_file(&filler).unwrap();
    let stored = new_row(&store, big.clone(), &[]).await;
    assert_eq!(store.get(&big.arn).await.unwrap(), Some(stored));
    assert_eq!(store.count(&Filter::default()).await.unwrap(), 6);
    store.check().await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn shared_handles_work_as_trait_objects() {
    let (_dir, store) = new_store().await;
    let store: Arc<dyn StateStore> = Arc::new(store);
    let row = image("web", [1, 0, 0], 1);
    let Created::New(stored) = store.create(row.clone(), vec![], None).await.unwrap() else {
        panic!("new row");
    };
    assert_eq!(store.get(&row.arn).await.unwrap(), Some(stored));
}
