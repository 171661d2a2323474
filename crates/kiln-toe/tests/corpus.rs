//! The conformance corpus: real AWSTOE documents from the user guide and the AWS samples.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use kiln_toe::load::load_file;

fn corpus() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/awstoe");
    let mut files = Vec::new();
    for dir in ["user-guide", "user-guide-steps", "samples"] {
        for e in std::fs::read_dir(root.join(dir)).expect("corpus folder") {
            files.push(e.expect("entry").path());
        }
    }
    files.sort();
    files
}

const KNOWN_BAD: [&str; 2] = [
    "Components_Windows_chef-recipe-execution-windows_component.yml",
    "toe-use-documents-01.yaml",
];

#[test]
fn every_document_validates_except_the_known_bad_ones() {
    let files = corpus();
    assert_eq!(files.len(), 123, "the corpus has 24 + 87 + 12 documents");
    let mut failures = Vec::new();
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        let result = load_file(f);
        match (KNOWN_BAD.contains(&name), result) {
            (false, Err(d)) => failures.push(format!("{name} should be valid:\n{d}")),
            (true, Ok(_)) => failures.push(format!("{name} should be rejected")),
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn rendered_errors(name: &str, dir: &str) -> (String, usize) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/awstoe")
        .join(dir)
        .join(name);
    let d = load_file(&path).expect_err("known bad");
    (d.to_string(), d.error_count())
}

#[test]
fn unterminated_quote_is_reported_with_its_position() {
    let (text, n) = rendered_errors(KNOWN_BAD[0], "samples");
    assert_eq!(n, 1);
    assert!(
        text.contains("Components_Windows_chef-recipe-execution-windows_component.yml:50:63: error: invalid YAML"),
        "{text}"
    );
}

#[test]
fn the_syntax_template_gets_every_error_reported() {
    let (text, n) = rendered_errors(KNOWN_BAD[1], "user-guide");
    let expect = [
        "toe-use-documents-01.yaml:3:16: error: `schemaVersion` must be 1.0, not `string`",
        "toe-use-documents-01.yaml:6:11: error: unknown phase `string`",
        "toe-use-documents-01.yaml:9:19: error: phase `string`, step `string`: unknown action `string`",
        "toe-use-documents-01.yaml:10:27: error: phase `string`, step `string`: `timeoutSeconds` must be an integer",
        "toe-use-documents-01.yaml:11:22: error: phase `string`, step `string`: `onFailure` must be Abort, Continue or Ignore",
        "toe-use-documents-01.yaml:12:24: error: phase `string`, step `string`: `maxAttempts` must be an integer",
    ];
    for e in expect {
        assert!(text.contains(e), "missing `{e}` in:\n{text}");
    }
    assert_eq!(n, expect.len(), "{text}");
}

#[test]
fn schema_version_as_integer_is_accepted() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/awstoe/user-guide/create-component-yaml-01.yaml");
    let loaded = load_file(&path).expect("valid");
    assert_eq!(loaded.document.name, "update-linux-os");
}

#[test]
fn octal_permissions_read_as_chmod_digits() {
    use kiln_toe::load::parse_permissions;
    // `permissions: 0777` and `permissions: 777` in the guide's examples mean the same.
    assert_eq!(parse_permissions("0777"), parse_permissions("777"));
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/awstoe/user-guide-steps/toe-action-modules-35.yaml");
    assert!(load_file(&path).is_ok());
}
