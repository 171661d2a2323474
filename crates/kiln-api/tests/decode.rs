//! Request decoding on hostile input: whatever the bytes, kiln answers the members or a 4xx
//! error (never a panic, never a 5xx an SDK would retry). The fuzz target
//! `fuzz/fuzz_targets/decode_request.rs` explores the same function without bounds; this test
//! runs a fixed, seeded share of it in every CI run.

#![allow(clippy::unwrap_used)]

use kiln_api::decode;
use kiln_api::ops::Op;

/// xorshift64*: the same inputs on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const SEEDS: &[&str] = &[
    r#"{"name":"c","semanticVersion":"1.0.0","platform":"Linux","clientToken":"t","data":"x"}"#,
    r#"{"maxResults":7,"nextToken":"abc","filters":[{"name":"name","values":["a"]}]}"#,
    r#"{"name":"d","distributions":[{"region":"local"}],"clientToken":"t"}"#,
    r#"{"tags":{"a":"b"}}"#,
    r#"{"imagePipelineArn":"arn:kiln:imagebuilder:local:1:image-pipeline/p","clientToken":"t"}"#,
    r#"[]"#,
    r#"{"components":[{"componentArn":5}]}"#,
];

fn check(op: Op, query: &str, arg: Option<&str>, body: &[u8]) {
    if let Err(e) = decode(op, query, arg, body) {
        assert!(
            (400..500).contains(&e.status),
            "{} answered {} {} for {:?}",
            op.name(),
            e.status,
            e.code,
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn mangled_requests_are_answered_with_4xx_errors() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut runs = 0;
    for op in Op::ALL {
        for seed in SEEDS {
            for _ in 0..40 {
                let mut body = seed.as_bytes().to_vec();
                for _ in 0..=rng.below(6) {
                    match rng.below(4) {
                        0 if !body.is_empty() => {
                            let at = rng.below(body.len());
                            body[at] = (rng.next() & 0xff) as u8;
                        }
                        1 => body.truncate(rng.below(body.len() + 1)),
                        2 => {
                            let at = rng.below(body.len() + 1);
                            let bytes = b"{}[]\":,0-e\\\x00\xff";
                            body.insert(at, bytes[rng.below(bytes.len())]);
                        }
                        _ => {
                            let depth = rng.below(300);
                            body = [b"[".repeat(depth), body, b"]".repeat(depth)].concat();
                        }
                    }
                }
                let query = [
                    "",
                    "imageBuildVersionArn=%ZZ",
                    "tagKeys=a&tagKeys=%",
                    "&&=&",
                ][rng.below(4)];
                let arg = [None, Some("arn%3A"), Some("%"), Some("")][rng.below(4)];
                check(op, query, arg, &body);
                runs += 1;
            }
        }
    }
    assert!(runs > 10_000, "{runs}");
}

#[test]
fn wrong_types_name_the_field() {
    let e = decode(
        Op::CreateImageRecipe,
        "",
        None,
        br#"{"name":"r","semanticVersion":"1.0.0","parentImage":"p","clientToken":"t","components":[{"componentArn":5}]}"#,
    )
    .unwrap_err();
    assert_eq!(
        (e.status, e.code.as_str()),
        (400, "InvalidRequestException")
    );
    assert!(
        e.message.starts_with("components[0].componentArn:"),
        "{}",
        e.message
    );
    let e = decode(Op::ListComponents, "", None, br#"{"maxResults":101}"#).unwrap_err();
    assert_eq!(e.code, "InvalidParameterValueException");
    assert!(e.message.starts_with("maxResults:"), "{}", e.message);
    let e = decode(Op::ListComponents, "", None, b"{\"maxResults\":").unwrap_err();
    assert!(e.message.contains("not JSON"), "{}", e.message);
}
