//! Extracts a layer blob into a new folder (a development aid, for checking that a tree
//! extracted on another host gives the same disk): `cargo run -p kiln-image --example
//! reextract -- BLOB DEST`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let stats = kiln_image::extract_layer(args[0].as_ref(), args[1].as_ref()).unwrap();
    println!("{} entries", stats.entries);
}
