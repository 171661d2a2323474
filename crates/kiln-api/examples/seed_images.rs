//! Fills a kiln home's state store with COUNT realistic image records of one account (the
//! records of `kiln_core::sample`, as `bench/images.sh` stores them), for `bench/api.sh`.
//!
//! `cargo run --release -p kiln-api --example seed_images -- KILN_HOME ACCOUNT_ID [COUNT]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use kiln_core::record::{image_arn, row_of, Records};
use kiln_core::sample::image_record;
use kiln_core::state::Store;
use kiln_core::store::Home;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [home, account, rest @ ..] = args.as_slice() else {
        eprintln!("usage: seed_images KILN_HOME ACCOUNT_ID [COUNT]");
        std::process::exit(2);
    };
    let count: usize = rest.first().map_or(10_000, |c| c.parse().expect("COUNT"));
    assert!(
        account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()),
        "ACCOUNT_ID is 12 digits"
    );
    let home = Home::new(home);
    let t = Instant::now();
    let store = Store::open(&home).await.expect("opening the state store");
    let records = Records::new(store.clone());
    // One import instead of COUNT `Records::create` transactions (seconds instead of minutes):
    // every sample record is its own version, so build 1 is the number `create` would give,
    // and the row is the one `create` writes (`row_of` is its encoding).
    let rows: Vec<_> = (0..count)
        .map(|i| {
            let mut r = image_record(i, account);
            r.build = 1;
            r.arn = image_arn(&r.account, &r.name, &r.version, r.build);
            r.logs = records.logs_dir(&r.account, &r.name, &r.version, r.build);
            row_of(&r).unwrap()
        })
        .collect();
    store.db().import(rows).await.expect("storing the records");
    println!(
        "{count} image records of account {account} stored in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}
