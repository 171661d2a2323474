//! The parser must turn any input into a tree or an error, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

/// Characters YAML gives meaning to, so that random input reaches deep parser states.
const ALPHABET: &[u8] = b"ab:-?[]{},&*!|>'\"%@` #\n\t.\\0123456789~";

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = kiln_yaml::parse(&text);
    }

    #[test]
    fn yaml_shaped_text(idx in proptest::collection::vec(0..ALPHABET.len(), 0..400)) {
        let text: String = idx.into_iter().map(|i| ALPHABET[i] as char).collect();
        let _ = kiln_yaml::parse(&text);
    }
}
