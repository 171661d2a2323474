//! Requests signed by botocore itself (the AWS CLI's and boto3's signer) verify.
//!
//! The vectors are in `fixtures/botocore_vectors.json`, written by
//! `fixtures/make_botocore_vectors.py` at a fixed time; no Python is needed to run this.

use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use kiln_sigv4::{verify, AuthError, Incoming, Scope};
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    botocore: String,
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    name: String,
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    body: String,
    access_key_id: String,
    secret_access_key: String,
    region: String,
    service: String,
    now: u64,
}

fn vectors() -> File {
    let text = include_str!("fixtures/botocore_vectors.json");
    serde_json::from_str(text).expect("fixture parses")
}

fn headers(v: &Vector) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, val) in &v.headers {
        map.append(
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).expect("name"),
            HeaderValue::from_str(val).expect("value"),
        );
    }
    map
}

fn check(v: &Vector, secret: &str) -> Result<String, AuthError> {
    let headers = headers(v);
    let req = Incoming {
        method: &v.method,
        path: &v.path,
        query: v.query.as_deref(),
        headers: &headers,
        body: v.body.as_bytes(),
    };
    let scope = Scope {
        region: v.region.clone(),
        service: v.service.clone(),
    };
    let now = UNIX_EPOCH + Duration::from_secs(v.now);
    verify(&req, &scope, now, |key| {
        (key == v.access_key_id).then(|| secret.to_string())
    })
    .map(|ok| ok.access_key_id)
}

#[test]
fn every_botocore_vector_verifies() {
    let file = vectors();
    assert!(!file.botocore.is_empty());
    let names: Vec<&str> = file.vectors.iter().map(|v| v.name.as_str()).collect();
    for expected in ["tag_resource", "get_component"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    for v in &file.vectors {
        let key = check(v, &v.secret_access_key)
            .unwrap_or_else(|e| panic!("{} (botocore {}): {e}", v.name, file.botocore));
        assert_eq!(key, v.access_key_id);
    }
}

#[test]
fn botocore_vectors_fail_with_another_secret() {
    for v in &vectors().vectors {
        assert_eq!(
            check(v, "another-secret"),
            Err(AuthError::SignatureMismatch),
            "{}",
            v.name
        );
    }
}

#[test]
fn tag_resource_path_is_an_encoded_arn() {
    let file = vectors();
    let v = file
        .vectors
        .iter()
        .find(|v| v.name == "tag_resource")
        .expect("tag_resource vector");
    assert_eq!(v.method, "POST");
    assert!(
        v.path.starts_with("/tags/arn%3Akiln%3Aimagebuilder"),
        "{}",
        v.path
    );
    let v = file
        .vectors
        .iter()
        .find(|v| v.name == "get_component")
        .expect("get_component vector");
    assert_eq!(v.path, "/GetComponent");
    assert!(
        v.query
            .as_deref()
            .is_some_and(|q| q.starts_with("componentBuildVersionArn=arn%3Akiln")),
        "{:?}",
        v.query
    );
}
