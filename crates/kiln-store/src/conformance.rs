//! The behaviour every [`StateStore`] backend must have, as checks that each backend's tests run.
//!
//! A backend implements [`Backend`] (how to get a fresh, empty store and a second handle on it)
//! and invokes [`conformance_tests!`](crate::conformance_tests) in an integration test, which
//! makes one `#[tokio::test]` per check below. A check panics, saying what differed, when the
//! store does not behave as [`StateStore`] documents; the checks use nothing but the trait, so
//! that SQLite and any later backend are held to exactly the same behaviour.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;

use crate::{Created, Filter, Kind, Order, Row, StateStore, StoreError, Update};

mod grants;
mod jobs;
mod leader;
mod queue;
pub use grants::*;
pub use jobs::*;
pub use leader::*;
pub use queue::*;

/// A fresh store under test and what keeps it alive.
pub struct Fresh<G> {
    /// The store, empty.
    pub store: Arc<dyn StateStore>,
    /// Dropped when the check ends, so that the store's files or database live that long.
    pub guard: G,
}

/// How the checks get stores of one backend.
// Not `Send`: a check runs on its test's own runtime and never moves between threads, and
// opening a store need not be `Send` (`SqliteStore::open` is not).
#[async_trait::async_trait(?Send)]
pub trait Backend {
    /// What keeps a store alive and knows where it is: a temporary directory, a scratch
    /// database on a server.
    type Guard;

    /// A new, empty store that no other check uses; panics when it cannot be made.
    async fn fresh(&self) -> Fresh<Self::Guard>;

    /// Another handle on the store behind `guard`, opened as another kiln process opens it
    /// (with connections of its own), for checks that handles see each other's writes and do
    /// not race each other.
    async fn open_again(&self, guard: &Self::Guard) -> Arc<dyn StateStore>;
}

/// Makes one `#[tokio::test]` per check of [`conformance`](crate::conformance), each running
/// that check on the [`Backend`](crate::conformance::Backend) that `$backend` evaluates to.
///
/// Invoke it once per backend at the top level of an integration test (or inside a module per
/// backend, to test several in one binary): every check then shows up as a test of its own
/// name. The invoking crate needs `tokio` with the `macros` and `rt-multi-thread` features.
///
/// ```
/// use std::sync::Arc;
///
/// use kiln_store::conformance::{Backend, Fresh};
/// use kiln_store::{SqliteStore, StateStore};
/// use tempfile::TempDir;
///
/// struct Sqlite;
///
/// #[async_trait::async_trait(?Send)]
/// impl Backend for Sqlite {
///     type Guard = TempDir;
///
///     async fn fresh(&self) -> Fresh<TempDir> {
///         let dir = TempDir::new().unwrap();
///         let store = SqliteStore::open(&dir.path().join("kiln.db")).await.unwrap();
///         Fresh { store: Arc::new(store), guard: dir }
///     }
///
///     async fn open_again(&self, dir: &TempDir) -> Arc<dyn StateStore> {
///         Arc::new(SqliteStore::open(&dir.path().join("kiln.db")).await.unwrap())
///     }
/// }
///
/// kiln_store::conformance_tests!(Sqlite);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! conformance_tests {
    (@each $backend:expr; $runtime:tt; $($check:ident),+ $(,)?) => {
        $(
            #[::tokio::test $runtime]
            async fn $check() {
                $crate::conformance::$check(&$backend).await;
            }
        )+
    };
    ($backend:expr) => {
        $crate::conformance_tests!(@each $backend; ();
            created_rows_read_back_with_body_and_list_without,
            list_filters_and_counts,
            lists_keep_to_an_arn_prefix,
            list_orders_by_version_newest_and_oldest,
            list_pages_and_counts_the_whole_list,
            pages_follow_the_order_of_the_whole_list,
            creating_an_existing_row_returns_it,
            client_tokens_make_create_idempotent,
            create_build_takes_the_next_number,
            create_build_stores_nothing_when_make_fails,
            names_versions_and_builds_are_per_account,
            update_changes_fields_and_refs,
            delete_refuses_rows_in_use,
            a_row_referring_to_itself_can_be_deleted,
            referrers_match_by_prefix,
            cancel_is_flagged_on_the_row,
            import_stores_many_rows_once,
            outbox_messages_are_stored_once_and_come_due_in_order,
            update_stores_its_outbox_in_its_transaction,
            retries_and_drops,
            scheduled_runs_are_claimed_once,
            policies_replace_and_read_back,
            shared_with_selects_granted_rows,
            deleting_a_row_drops_its_policy,
            ten_thousand_images_list_by_name_version_and_time,
        );
        // Two worker threads, so that the callers race in parallel rather than take turns.
        $crate::conformance_tests!(@each $backend; (flavor = "multi_thread", worker_threads = 2);
            concurrent_tasks_get_distinct_builds,
            two_handles_get_distinct_builds,
            two_handles_claim_each_run_once,
        );
    };
}

/// The ARN prefix of the rows the checks make (an account's).
pub const PREFIX: &str = "arn:aws:imagebuilder:local:000000000000";

/// An image row `name` `version` build `build`, AVAILABLE, with a small summary and body (for a
/// backend's own tests, too).
pub fn image(name: &str, version: [u32; 3], build: u32) -> Row {
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

fn arns(rows: &[Row]) -> Vec<String> {
    rows.iter().map(|r| r.arn.clone()).collect()
}

/// Results of store calls that a check needs to succeed (or to fail).
trait Must<T> {
    /// The value; fails the check, at the caller's line, when the store returned an error.
    fn must(self) -> T;
    /// The error; fails the check when the store did what it should have refused.
    fn must_fail(self) -> StoreError;
}

impl<T: Debug> Must<T> for Result<T, StoreError> {
    #[track_caller]
    fn must(self) -> T {
        match self {
            Ok(value) => value,
            Err(e) => panic!("the store failed where it should have succeeded: {e} ({e:?})"),
        }
    }

    #[track_caller]
    fn must_fail(self) -> StoreError {
        match self {
            Ok(value) => panic!("the store succeeded where it should have failed: {value:?}"),
            Err(e) => e,
        }
    }
}

async fn new_row(store: &dyn StateStore, row: Row, refs: &[&str]) -> Row {
    let refs = refs.iter().map(|r| r.to_string()).collect();
    match store.create(row, refs, None).await.must() {
        Created::New(row) => row,
        other => panic!("expected a new row, got {other:?}"),
    }
}

/// The stored row with this ARN, which the check needs to be there.
async fn stored(store: &dyn StateStore, arn: &str) -> Row {
    match store.get(arn).await.must() {
        Some(row) => row,
        None => panic!("{arn} should be stored but get found nothing"),
    }
}

/// The ARNs that `list` returns and what `count` says, for one filter.
async fn listed(store: &dyn StateStore, filter: Filter) -> (Vec<String>, u64) {
    let rows = store.list(&filter).await.must();
    let count = store.count(&filter).await.must();
    (arns(&rows), count)
}

/// `create` stores a row as given but for `updated_ms`, which the store sets; `get` returns it
/// with its body and finds it only by its exact ARN; `list` returns it without its body; a row
/// without a version reads back without one.
pub async fn created_rows_read_back_with_body_and_list_without<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let mut row = image("Web", [1, 2, 3], 1);
    row.pipeline = Some(format!("{PREFIX}:image-pipeline/nightly"));
    let stored_row = new_row(store, row.clone(), &[]).await;
    assert!(stored_row.updated_ms > 0, "the store sets updated_ms");
    assert_eq!(
        Row {
            updated_ms: 0,
            ..stored_row.clone()
        },
        row
    );

    assert_eq!(stored(store, &row.arn).await, stored_row);
    assert_eq!(store.get(&format!("{}x", row.arn)).await.must(), None);
    // ARNs are compared exactly.
    assert_eq!(store.get(&row.arn.to_uppercase()).await.must(), None);

    let listed = store.list(&Filter::default()).await.must();
    assert_eq!(
        listed,
        vec![Row {
            body: String::new(),
            ..stored_row
        }]
    );

    let recipe = new_row(store, resource(Kind::ImageRecipe, "r", None), &[]).await;
    assert_eq!(recipe.version, None);
    assert_eq!(store.get(&recipe.arn).await.must(), Some(recipe));
}

/// Seven images whose creation order differs from their version order and a component named
/// like most of them, for the list checks; returns the images, newest first, and the pipeline
/// that made three of them.
async fn seven_images(store: &dyn StateStore) -> (Vec<Row>, String) {
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
        row.created_ms = 10_000 - 100 * i as i64;
        rows.push(new_row(store, row, &[]).await);
    }
    new_row(
        store,
        resource(Kind::Component, "web", Some([1, 0, 0])),
        &[],
    )
    .await;
    (rows, pipeline)
}

fn images() -> Filter {
    Filter {
        kind: Some(Kind::Image),
        ..Filter::default()
    }
}

/// `arn_prefix` keeps `list` and `count` to the rows of one account's ARNs.
pub async fn lists_keep_to_an_arn_prefix<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let mine = new_row(
        store,
        resource(Kind::Component, "web", Some([1, 0, 0])),
        &[],
    )
    .await;
    let mut theirs = resource(Kind::Component, "web", Some([2, 0, 0]));
    theirs.arn = "arn:aws:imagebuilder:local:111111111111:component/web/2.0.0".to_owned();
    let theirs = new_row(store, theirs, &[]).await;
    let web = |prefix: Option<&str>| Filter {
        name: Some("web".to_owned()),
        arn_prefix: prefix.map(str::to_owned),
        ..Filter::default()
    };
    assert_eq!(listed(store, web(None)).await.1, 2);
    assert_eq!(
        listed(store, web(Some(&format!("{PREFIX}:")))).await,
        (vec![mine.arn], 1)
    );
    assert_eq!(
        listed(store, web(Some("arn:aws:imagebuilder:local:111111111111:"))).await,
        (vec![theirs.arn], 1)
    );
    assert_eq!(
        listed(store, web(Some("arn:aws:imagebuilder:local:222222222222:"))).await,
        (vec![], 0)
    );
}

/// Every field of a [`Filter`] narrows `list` and `count` alike: kind, name ignoring case,
/// each version node on its own, build, owner, any of several states, pipeline.
pub async fn list_filters_and_counts<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let (rows, pipeline) = seven_images(store).await;
    let a = |i: usize| rows[i].arn.clone();
    assert_eq!(store.count(&images()).await.must(), 7);
    assert_eq!(store.count(&Filter::default()).await.must(), 8);

    let web = || Filter {
        kind: Some(Kind::Image),
        name: Some("wEB".to_owned()),
        ..Filter::default()
    };
    assert_eq!(
        listed(store, web()).await,
        (vec![a(4), a(3), a(2), a(1), a(0)], 5)
    );
    let (names, _) = listed(
        store,
        Filter {
            name: Some("WEB".to_owned()),
            ..Filter::default()
        },
    )
    .await;
    assert_eq!(
        names.len(),
        6,
        "without a kind, the component named web is listed too"
    );
    assert_eq!(
        listed(
            store,
            Filter {
                version: [Some(1), None, None],
                ..web()
            }
        )
        .await,
        (vec![a(2), a(1), a(0)], 3)
    );
    assert_eq!(
        listed(
            store,
            Filter {
                version: [Some(1), Some(0), None],
                ..web()
            }
        )
        .await,
        (vec![a(1), a(0)], 2)
    );
    assert_eq!(
        listed(
            store,
            Filter {
                version: [Some(1), Some(0), Some(0)],
                build: Some(2),
                ..web()
            }
        )
        .await,
        (vec![a(1)], 1)
    );
    assert_eq!(
        listed(
            store,
            Filter {
                version: [None, Some(0), Some(0)],
                ..images()
            }
        )
        .await,
        (vec![a(5), a(4), a(3), a(1), a(0)], 5)
    );
    assert_eq!(
        listed(
            store,
            Filter {
                states: vec!["FAILED".to_owned(), "BUILDING".to_owned()],
                ..images()
            }
        )
        .await,
        (vec![a(3), a(1)], 2)
    );
    assert_eq!(
        listed(
            store,
            Filter {
                owner: Some("other".to_owned()),
                ..Filter::default()
            }
        )
        .await,
        (vec![a(4)], 1)
    );
    assert_eq!(
        listed(
            store,
            Filter {
                pipeline: Some(pipeline.clone()),
                ..Filter::default()
            }
        )
        .await,
        (vec![a(2), a(1), a(6)], 3)
    );
    assert_eq!(
        listed(
            store,
            Filter {
                kind: Some(Kind::Component),
                ..Filter::default()
            }
        )
        .await
        .1,
        1
    );
    assert_eq!(
        listed(
            store,
            Filter {
                name: Some("nothing".to_owned()),
                ..Filter::default()
            }
        )
        .await,
        (vec![], 0)
    );
}

/// [`Order::Version`] sorts by name ignoring case, then the newest version and build first;
/// [`Order::Newest`] and [`Order::Oldest`] by creation time; listed rows have no body.
pub async fn list_orders_by_version_newest_and_oldest<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let (rows, _) = seven_images(store).await;
    let a = |i: usize| rows[i].arn.clone();

    let all = store.list(&images()).await.must();
    assert_eq!(arns(&all), vec![a(5), a(4), a(3), a(2), a(1), a(0), a(6)]);
    assert!(all.iter().all(|r| r.body.is_empty()));

    assert_eq!(
        listed(
            store,
            Filter {
                order: Order::Newest,
                ..images()
            }
        )
        .await
        .0,
        (0..7).map(a).collect::<Vec<_>>()
    );
    assert_eq!(
        listed(
            store,
            Filter {
                order: Order::Oldest,
                ..images()
            }
        )
        .await
        .0,
        (0..7).rev().map(a).collect::<Vec<_>>()
    );
}

/// `limit` and `offset` cut pages out of the ordered list, and `count` ignores both (so that a
/// caller can tell how many pages there are).
pub async fn list_pages_and_counts_the_whole_list<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let (rows, _) = seven_images(store).await;
    let a = |i: usize| rows[i].arn.clone();
    let newest = || Filter {
        order: Order::Newest,
        ..images()
    };
    assert_eq!(
        listed(
            store,
            Filter {
                limit: Some(3),
                ..newest()
            }
        )
        .await,
        (vec![a(0), a(1), a(2)], 7)
    );
    assert_eq!(
        listed(
            store,
            Filter {
                limit: Some(3),
                offset: 3,
                ..newest()
            }
        )
        .await,
        (vec![a(3), a(4), a(5)], 7)
    );
    assert_eq!(
        listed(
            store,
            Filter {
                offset: 5,
                ..newest()
            }
        )
        .await,
        (vec![a(5), a(6)], 7)
    );
    assert_eq!(
        listed(
            store,
            Filter {
                limit: Some(0),
                ..newest()
            }
        )
        .await,
        (vec![], 7)
    );
}

/// Pages of every [`Order`], put together, are the whole list in the same order, also for
/// names that differ only in case or are not ASCII, equal creation times and rows without a
/// version (a store that sorts pages differently from whole lists fails this).
pub async fn pages_follow_the_order_of_the_whole_list<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
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
    assert_eq!(store.import(rows).await.must(), 21);
    for order in [Order::Version, Order::Newest, Order::Oldest] {
        let all = store
            .list(&Filter {
                order,
                ..Filter::default()
            })
            .await
            .must();
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
                    .must(),
            );
        }
        assert_eq!(arns(&paged), arns(&all), "{order:?}");
    }
}

/// `create` of a row whose ARN, or whose kind, name (ignoring case), version and build, is
/// stored already gives [`StoreError::AlreadyExists`] with the stored row and changes nothing.
pub async fn creating_an_existing_row_returns_it<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let first = new_row(store, image("web", [1, 0, 0], 1), &[]).await;

    let mut again = image("web", [1, 0, 0], 1);
    again.body = "{\"other\":true}".to_owned();
    match store.create(again.clone(), vec![], None).await {
        Err(StoreError::AlreadyExists { existing }) => assert_eq!(*existing, first),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    // Same kind, name (in another case), version and build under another ARN.
    again.arn = format!("{PREFIX}:image/elsewhere/1.0.0/1");
    again.name = "WEB".to_owned();
    let err = store.create(again, vec![], None).await.must_fail();
    match &err {
        StoreError::AlreadyExists { existing } => assert_eq!(**existing, first),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert!(err.to_string().contains(&first.arn), "{err}");
    assert_eq!(store.count(&Filter::default()).await.must(), 1);
    assert_eq!(store.get(&first.arn).await.must(), Some(first));
}

/// A client token used again with the same digest returns the first row (even for another
/// ARN), with another digest [`StoreError::TokenMismatch`]; tokens are per kind, and deleting
/// the row frees its token.
pub async fn client_tokens_make_create_idempotent<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let token = Some("token-1".to_owned());
    let row = resource(Kind::ImageRecipe, "r", Some([1, 0, 0]));
    let Created::New(first) = store
        .create(row.clone(), vec![], token.clone())
        .await
        .must()
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
            .must(),
        Created::Existing(first.clone())
    );
    assert_eq!(store.get(&retry.arn).await.must(), None);

    // Another request with the same token.
    let mut other = retry.clone();
    other.digest = "another digest".to_owned();
    let err = store.create(other, vec![], token.clone()).await.must_fail();
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
        store.create(component, vec![], token.clone()).await.must(),
        Created::New(_)
    ));

    // Once the row is deleted, its token starts over.
    store.delete(&first.arn).await.must();
    assert!(matches!(
        store.create(retry, vec![], token).await.must(),
        Created::New(_)
    ));
}

/// What `create_build` asks for: an image of `name` 1.0.0 under the number it is given (for a
/// backend's own tests, too).
pub fn make_image(
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

/// `create_build` numbers builds of one kind, name (ignoring case) and version from 1, each
/// version on its own, after the highest stored number (gaps are not filled), and stores what
/// `make` returns for the number.
pub async fn create_build_takes_the_next_number<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let make = make_image("web");
    let template = image("Web", [1, 0, 0], 0);
    for expected in 1..=3 {
        let row = store
            .create_build(template.clone(), vec![], &make)
            .await
            .must();
        assert_eq!(row.build, Some(expected));
        assert_eq!(row.arn, format!("{PREFIX}:image/web/1.0.0/{expected}"));
        assert_eq!(row.summary, format!("{{\"build\":{expected}}}"));
        assert_eq!(store.get(&row.arn).await.must(), Some(row));
    }
    // Names compare without case.
    let mut upper = template.clone();
    upper.name = "WEB".to_owned();
    assert_eq!(
        store.create_build(upper, vec![], &make).await.must().build,
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
        .must();
    assert_eq!(row.build, Some(1));
    // Gaps are not filled: the highest number counts.
    store.import(vec![image("web", [1, 0, 0], 9)]).await.must();
    assert_eq!(
        store
            .create_build(template, vec![], &make)
            .await
            .must()
            .build,
        Some(10)
    );
}

/// Two accounts (the ARN's fifth field) each have their own names, versions and build
/// numbers: neither clashes with, nor learns of, the other's.
pub async fn names_versions_and_builds_are_per_account<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let other = "arn:aws:imagebuilder:local:111111111111";
    let make = make_image("web");
    for _ in 0..2 {
        store
            .create_build(image("web", [1, 0, 0], 0), vec![], &make)
            .await
            .must();
    }
    let mut theirs = image("web", [1, 0, 0], 0);
    theirs.arn = format!("{other}:image/web/1.0.0/0");
    let row = store
        .create_build(theirs, vec![], &|build| {
            Ok((
                format!("{other}:image/web/1.0.0/{build}"),
                "{}".to_owned(),
                "{}".to_owned(),
            ))
        })
        .await
        .must();
    assert_eq!(row.build, Some(1), "the other account's first build is 1");
    // A component of one name, version and build in each account.
    let mut mine = resource(Kind::Component, "c", Some([1, 0, 0]));
    mine.arn.push_str("/1");
    mine.build = Some(1);
    let mut yours = mine.clone();
    yours.arn = mine.arn.replacen(PREFIX, other, 1);
    store.create(mine, vec![], None).await.must();
    let stored = match store.create(yours.clone(), vec![], None).await.must() {
        Created::New(row) => row,
        other => panic!("expected a new row, got {other:?}"),
    };
    assert_eq!(store.get(&yours.arn).await.must(), Some(stored));
}

/// An error of `make` is what `create_build` returns, and it stores nothing: no row, no
/// reference, no build number used up.
pub async fn create_build_stores_nothing_when_make_fails<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let recipe = format!("{PREFIX}:image-recipe/r/1.0.0");
    let failing = |_build: u32| -> Result<(String, String, String), StoreError> {
        Err(StoreError::NotFound {
            arn: "what make could not encode".to_owned(),
        })
    };
    match store
        .create_build(image("web", [1, 0, 0], 0), vec![recipe.clone()], &failing)
        .await
    {
        Err(StoreError::NotFound { arn }) => assert_eq!(arn, "what make could not encode"),
        other => panic!("expected make's NotFound, got {other:?}"),
    }
    assert_eq!(store.count(&Filter::default()).await.must(), 0);
    assert!(
        store.referrers(&recipe).await.must().is_empty(),
        "the failed build's references were not stored"
    );
    let row = store
        .create_build(image("web", [1, 0, 0], 0), vec![], &make_image("web"))
        .await
        .must();
    assert_eq!(row.build, Some(1), "the failed build used up no number");
}

/// N builds of one version, as one of several racing callers takes them.
async fn take_builds(store: Arc<dyn StateStore>, n: usize) -> Vec<u32> {
    let make = make_image("race");
    let mut builds = Vec::new();
    for _ in 0..n {
        let row = store
            .create_build(image("race", [1, 0, 0], 0), vec![], &make)
            .await
            .must();
        match row.build {
            Some(build) => builds.push(build),
            None => panic!("create_build stored {} without a build number", row.arn),
        }
    }
    builds
}

async fn joined(task: tokio::task::JoinHandle<Vec<u32>>) -> Vec<u32> {
    match task.await {
        Ok(builds) => builds,
        // The task's own panic says what failed; it was printed where it happened.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("a task taking builds did not finish: {e}"),
    }
}

fn assert_one_to_forty(builds: Vec<u32>) {
    let distinct: BTreeSet<u32> = builds.iter().copied().collect();
    assert_eq!(builds.len(), 40, "{builds:?}");
    assert_eq!(distinct, (1..=40).collect(), "{builds:?}");
}

/// Two tasks sharing one handle, each taking twenty builds of one version at the same time,
/// get the numbers 1 to 40 between them, none twice.
pub async fn concurrent_tasks_get_distinct_builds<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let a = tokio::spawn(take_builds(fresh.store.clone(), 20));
    let b = tokio::spawn(take_builds(fresh.store.clone(), 20));
    let mut builds = joined(a).await;
    builds.extend(joined(b).await);
    assert_one_to_forty(builds);
}

/// Two handles on one store (as two kiln processes have), each taking twenty builds of one
/// version at the same time, get the numbers 1 to 40 between them, none twice.
pub async fn two_handles_get_distinct_builds<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let other = backend.open_again(&fresh.guard).await;
    let a = tokio::spawn(take_builds(fresh.store.clone(), 20));
    let b = tokio::spawn(take_builds(other, 20));
    let mut builds = joined(a).await;
    builds.extend(joined(b).await);
    assert_one_to_forty(builds);
    let listed = fresh.store.list(&Filter::default()).await.must();
    assert_eq!(listed.len(), 40);
}

/// `update` changes the fields given and keeps the others, replaces the references only when
/// asked, never moves `updated_ms` back, and gives [`StoreError::NotFound`] for a missing row.
pub async fn update_changes_fields_and_refs<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let recipe = format!("{PREFIX}:image-recipe/r/1.0.0");
    let mut row = image("web", [1, 0, 0], 1);
    row.state = Some("PENDING".to_owned());
    let before = new_row(store, row, &[&recipe]).await;

    let updated = store
        .update(
            &before.arn,
            Update {
                state: Some("AVAILABLE".to_owned()),
                body: Some("{\"done\":true}".to_owned()),
                refs: Some(vec![format!("{PREFIX}:image-recipe/r/2.0.0")]),
                ..Update::default()
            },
        )
        .await
        .must();
    assert_eq!(updated.state.as_deref(), Some("AVAILABLE"));
    assert_eq!(updated.body, "{\"done\":true}");
    assert_eq!(updated.summary, before.summary, "fields left None stay");
    assert_eq!(updated.digest, before.digest);
    assert!(updated.updated_ms >= before.updated_ms);
    assert_eq!(store.get(&before.arn).await.must(), Some(updated.clone()));
    assert_eq!(
        store
            .referrers(&format!("{PREFIX}:image-recipe/"))
            .await
            .must(),
        vec![(before.arn.clone(), format!("{PREFIX}:image-recipe/r/2.0.0"))]
    );

    let again = store
        .update(
            &before.arn,
            Update {
                summary: Some("{\"s\":1}".to_owned()),
                digest: Some("new".to_owned()),
                ..Update::default()
            },
        )
        .await
        .must();
    assert_eq!(
        (again.summary.as_str(), again.digest.as_str()),
        ("{\"s\":1}", "new")
    );
    assert_eq!(again.body, updated.body);
    assert_eq!(
        store
            .referrers(&format!("{PREFIX}:image-recipe/"))
            .await
            .must()
            .len(),
        1,
        "refs: None keeps the references"
    );

    match store.update("arn:nothing", Update::default()).await {
        Err(StoreError::NotFound { arn }) => assert_eq!(arn, "arn:nothing"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// `delete` of a row that other rows refer to exactly gives [`StoreError::InUse`] naming them
/// (sorted, each once) and keeps the row; a deleted row's references go with it; a missing row
/// gives [`StoreError::NotFound`].
pub async fn delete_refuses_rows_in_use<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let recipe = new_row(
        store,
        resource(Kind::ImageRecipe, "r", Some([1, 0, 0])),
        &[],
    )
    .await;
    let pipeline = new_row(
        store,
        resource(Kind::ImagePipeline, "p", None),
        &[&recipe.arn, &recipe.arn],
    )
    .await;
    let image = new_row(store, image("web", [1, 0, 0], 1), &[&recipe.arn]).await;

    let err = store.delete(&recipe.arn).await.must_fail();
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
    assert!(store.get(&recipe.arn).await.must().is_some());

    store.delete(&image.arn).await.must();
    match store.delete(&recipe.arn).await {
        Err(StoreError::InUse { users, .. }) => assert_eq!(users, vec![pipeline.arn.clone()]),
        other => panic!("expected InUse, got {other:?}"),
    }
    store.delete(&pipeline.arn).await.must();
    assert!(
        store.referrers("").await.must().is_empty(),
        "references go with their row"
    );
    store.delete(&recipe.arn).await.must();
    assert_eq!(store.get(&recipe.arn).await.must(), None);
    assert_eq!(store.count(&Filter::default()).await.must(), 0);

    match store.delete(&recipe.arn).await {
        Err(StoreError::NotFound { arn }) => assert_eq!(arn, recipe.arn),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// A row's reference to itself does not keep `delete` from deleting it.
pub async fn a_row_referring_to_itself_can_be_deleted<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let row = resource(Kind::Component, "c", Some([1, 0, 0]));
    let arn = row.arn.clone();
    new_row(store, row, &[&arn]).await;
    store.delete(&arn).await.must();
    assert_eq!(store.get(&arn).await.must(), None);
    assert!(
        store.referrers(&arn).await.must().is_empty(),
        "the reference went with the row"
    );
}

/// `referrers` returns the references starting with a prefix (all of them for ""), sorted by
/// reference; `delete` does not resolve wildcard references such as `1.x.x`.
pub async fn referrers_match_by_prefix<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let component = format!("{PREFIX}:component/foo");
    let a = new_row(
        store,
        resource(Kind::ImageRecipe, "a", Some([1, 0, 0])),
        &[
            &format!("{component}/1.x.x"),
            &format!("{PREFIX}:component/foobar/1.0.0/1"),
        ],
    )
    .await;
    let b = new_row(
        store,
        resource(Kind::ImageRecipe, "b", Some([1, 0, 0])),
        &[&format!("{component}/1.0.0/1")],
    )
    .await;

    let found = store.referrers(&format!("{component}/")).await.must();
    assert_eq!(
        found,
        vec![
            (b.arn.clone(), format!("{component}/1.0.0/1")),
            (a.arn.clone(), format!("{component}/1.x.x")),
        ]
    );
    assert_eq!(store.referrers(&component).await.must().len(), 3);
    assert!(store.referrers("arn:other").await.must().is_empty());
    assert_eq!(store.referrers("").await.must().len(), 3);
    // Deleting a wildcard target is not blocked by delete (only exact references are): the
    // caller checks wildcards with referrers.
    let exact = new_row(
        store,
        resource(Kind::Component, "foo", Some([1, 0, 0])),
        &[],
    )
    .await;
    assert_eq!(exact.arn, format!("{component}/1.0.0"));
    store.delete(&exact.arn).await.must();
}

/// `request_cancel` flags a stored row (and says false for a missing one); `cancel_requested`
/// reads the flag, also through another handle, as the build's own process polls it.
pub async fn cancel_is_flagged_on_the_row<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let row = new_row(store, image("web", [1, 0, 0], 1), &[]).await;
    assert!(!store.cancel_requested(&row.arn).await.must());
    assert!(store.request_cancel(&row.arn).await.must());
    assert!(store.cancel_requested(&row.arn).await.must());
    // Another handle (another process) sees it.
    let other = backend.open_again(&fresh.guard).await;
    assert!(other.cancel_requested(&row.arn).await.must());
    assert!(!store.request_cancel("arn:missing").await.must());
    assert!(!store.cancel_requested("arn:missing").await.must());
}

/// `import_with_refs` stores rows with their references and their own `updated_ms`, skips rows
/// whose ARN is stored (so it can run again), and stores nothing of a batch with another clash.
pub async fn import_stores_many_rows_once<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
    let mut old = image("web", [1, 0, 0], 1);
    old.updated_ms = 42;
    let recipe = format!("{PREFIX}:image-recipe/r/1.0.0");
    let rows = vec![
        (old.clone(), vec![recipe.clone()]),
        (image("web", [1, 0, 0], 2), vec![]),
    ];
    assert_eq!(store.import_with_refs(rows.clone()).await.must(), 2);
    assert_eq!(
        store.get(&old.arn).await.must(),
        Some(old.clone()),
        "import keeps updated_ms"
    );
    assert_eq!(
        store.referrers(&recipe).await.must(),
        vec![(old.arn.clone(), recipe)]
    );
    // Again: nothing new.
    assert_eq!(store.import_with_refs(rows).await.must(), 0);
    // A clash on the build key stores nothing of the batch.
    let mut clash = image("web", [1, 0, 0], 1);
    clash.arn.push_str("-other");
    match store.import(vec![image("web", [1, 0, 0], 3), clash]).await {
        Err(StoreError::AlreadyExists { existing }) => assert_eq!(*existing, old),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(store.count(&Filter::default()).await.must(), 2);
}

/// Ten thousand images (100 names, 10 versions, 10 builds, 4 kB bodies): one read back, one
/// name's and one version's builds newest first, all without their bodies, the newest by time,
/// the count, with the time of each printed (`--nocapture`) to compare backends by.
pub async fn ten_thousand_images_list_by_name_version_and_time<B: Backend>(backend: &B) {
    let fresh = backend.fresh().await;
    let store = &*fresh.store;
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
    let started = std::time::Instant::now();
    assert_eq!(store.import(rows).await.must(), 10_000);
    eprintln!("import of 10,000 rows: {:?}", started.elapsed());

    let arn = format!("{PREFIX}:image/image42/1.3.0/7");
    let started = std::time::Instant::now();
    let row = store.get(&arn).await.must().expect("the row");
    eprintln!("get: {:?}", started.elapsed());
    assert_eq!((row.name.as_str(), row.body.len()), ("Image42", body.len()));

    let started = std::time::Instant::now();
    let one_name = store
        .list(&Filter {
            kind: Some(Kind::Image),
            name: Some("image42".to_owned()),
            ..Filter::default()
        })
        .await
        .must();
    eprintln!("list of one name: {:?}", started.elapsed());
    assert_eq!(one_name.len(), 100);
    assert_eq!(one_name[0].version, Some([1, 9, 0]));
    assert_eq!(one_name[0].build, Some(10));

    let started = std::time::Instant::now();
    let one_version = store
        .list(&Filter {
            kind: Some(Kind::Image),
            name: Some("IMAGE42".to_owned()),
            version: [Some(1), Some(3), None],
            ..Filter::default()
        })
        .await
        .must();
    eprintln!("list of one version: {:?}", started.elapsed());
    assert_eq!(one_version.len(), 10);
    assert!(one_version.iter().all(|r| r.version == Some([1, 3, 0])));

    let started = std::time::Instant::now();
    let all = store
        .list(&Filter {
            kind: Some(Kind::Image),
            ..Filter::default()
        })
        .await
        .must();
    eprintln!("list of all: {:?}", started.elapsed());
    assert_eq!(all.len(), 10_000);
    assert!(all
        .iter()
        .all(|r| r.body.is_empty() && r.summary == summary));
    assert_eq!(all[0].arn, format!("{PREFIX}:image/image0/1.9.0/10"));

    let started = std::time::Instant::now();
    let newest = store
        .list(&Filter {
            order: Order::Newest,
            limit: Some(20),
            ..Filter::default()
        })
        .await
        .must();
    eprintln!("newest 20: {:?}", started.elapsed());
    assert_eq!(newest[0].created_ms, 9_999);
    assert_eq!(store.count(&Filter::default()).await.must(), 10_000);
}

#[cfg(test)]
mod tests {
    /// A check that the macro does not list would silently never run for any backend.
    #[test]
    fn the_macro_runs_every_check() {
        let source = include_str!("conformance.rs");
        let checks: Vec<&str> = source
            .lines()
            .filter_map(|line| line.strip_prefix("pub async fn "))
            .filter_map(|rest| rest.split(['<', '(']).next())
            .collect();
        assert!(checks.len() >= 17, "{checks:?}");
        let (_, after) = source
            .split_once("macro_rules! conformance_tests")
            .expect("the macro is in this file");
        let (body, _) = after
            .split_once("\npub const PREFIX")
            .expect("the macro ends before PREFIX");
        let listed: Vec<&str> = body
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .collect();
        for check in checks {
            assert!(listed.contains(&check), "conformance_tests! misses {check}");
        }
    }
}
