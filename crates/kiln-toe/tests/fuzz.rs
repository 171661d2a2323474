//! Loading never panics, whatever the bytes: random input, and real documents mutated at random.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use kiln_toe::document::Source;
use proptest::prelude::*;

fn load(text: String) {
    let _ = kiln_toe::load::parse(Source {
        name: "fuzz.yaml".into(),
        text,
        dir: None,
    });
}

fn corpus() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/awstoe");
    let mut out = Vec::new();
    for dir in ["user-guide", "user-guide-steps", "samples"] {
        for e in std::fs::read_dir(root.join(dir)).expect("corpus") {
            out.push(std::fs::read_to_string(e.expect("entry").path()).expect("text"));
        }
    }
    out.sort();
    out
}

/// Bytes that move a YAML parser and the validator between states.
const INTERESTING: &[&str] = &[
    "{{",
    "}}",
    "{{ loop.value }}",
    "{{ build.A.outputs.stdout }}",
    ":",
    "- ",
    "\n",
    "  ",
    "'",
    "\"",
    "[",
    "]",
    "{",
    "}",
    "&a ",
    "*a",
    "|",
    ">",
    "#",
    "---",
    "-1",
    "0",
    "99999999999999999999",
    "if:",
    "loop:",
    "for:",
    "forEach:",
    "and:",
    "not:",
    "inputs:",
    "\t",
    "\u{feff}",
];

#[derive(Debug, Clone)]
enum Mutation {
    Insert(usize, usize),
    Delete(usize, usize),
    Replace(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0..INTERESTING.len()).prop_map(|(a, b)| Mutation::Insert(a, b)),
        (any::<usize>(), 1usize..40).prop_map(|(a, b)| Mutation::Delete(a, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Replace(a, b)),
    ]
}

fn apply(doc: &str, muts: &[Mutation]) -> String {
    let mut bytes = doc.as_bytes().to_vec();
    for m in muts {
        let len = bytes.len().max(1);
        match *m {
            Mutation::Insert(at, i) => {
                let at = at % len;
                let at = at.min(bytes.len());
                bytes.splice(at..at, INTERESTING[i].bytes());
            }
            Mutation::Delete(at, n) => {
                let at = (at % len).min(bytes.len());
                let end = (at + n).min(bytes.len());
                bytes.drain(at..end);
            }
            Mutation::Replace(at, b) => {
                if !bytes.is_empty() {
                    let at = at % bytes.len();
                    bytes[at] = b;
                }
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        load(String::from_utf8_lossy(&bytes).into_owned());
    }

    #[test]
    fn mutated_real_documents_never_panic(
        pick in any::<prop::sample::Index>(),
        muts in proptest::collection::vec(mutation(), 1..8),
    ) {
        let docs = corpus();
        let doc = pick.get(&docs);
        load(apply(doc, &muts));
    }
}
