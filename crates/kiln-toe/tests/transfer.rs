//! WebDownload against a real HTTP server, S3Download and S3Upload against a real S3-compatible
//! server (moto's, installed by `scripts/setup`), and ExecuteDocument from `s3://`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../kiln/tests/common/moto.rs"]
mod moto;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use kiln_s3::S3Client;
use kiln_toe::report::{RunStatus, StepStatus};
use moto::Moto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODY: &str = "downloaded content\n";
const BODY_SHA256: &str = "35b85adf20bea0ee7ade90888c839745854892bfe1b736d356a395fb4574a472";

/// A small HTTP/1.1 server: `/file.txt` (200), `/moved` (302 to /file.txt), `/flaky` (500
/// twice, then 200), anything else 404.
async fn http_server() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let flaky = Arc::new(AtomicUsize::new(0));
    let counter = flaky.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (status, extra, body) = match path.as_str() {
                    "/file.txt" => ("200 OK", String::new(), BODY),
                    "/moved" => ("302 Found", "Location: /file.txt\r\n".to_string(), ""),
                    "/flaky" => {
                        if counter.fetch_add(1, Ordering::SeqCst) < 2 {
                            ("500 Internal Server Error", String::new(), "")
                        } else {
                            ("200 OK", String::new(), BODY)
                        }
                    }
                    _ => ("404 Not Found", String::new(), ""),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}"), flaky)
}

#[tokio::test]
async fn web_download() {
    let (url, flaky) = http_server().await;
    let f = Fixture::new();
    let doc = format!(
        r#"schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: Get
        action: WebDownload
        inputs:
          - source: {url}/file.txt
            destination: dl/named.txt
            checksum: {BODY_SHA256}
            algorithm: SHA256
          - source: {url}/moved
            destination: dl/folder/
          - source: {url}/flaky
            destination: dl/flaky.txt
      - name: Again
        action: WebDownload
        inputs:
          - source: {url}/file.txt
            destination: dl/named.txt
            checksum: {BODY_SHA256}
            algorithm: SHA256
      - name: NoOverwrite
        action: WebDownload
        onFailure: Continue
        inputs:
          - source: {url}/file.txt
            destination: dl/named.txt
            overwrite: false
      - name: BadSum
        action: WebDownload
        onFailure: Continue
        inputs:
          - source: {url}/file.txt
            destination: dl/bad.txt
            checksum: '0000'
            algorithm: MD5
      - name: Missing
        action: WebDownload
        onFailure: Continue
        inputs:
          - source: {url}/nothing-here
            destination: dl/missing.txt
"#
    );
    let r = f.run(&doc).await;
    let get = step(&r, "build", "Get");
    assert_eq!(get.status, StepStatus::Success, "{}", get.failure_message);
    let dl = f.path().join("dl");
    assert_eq!(std::fs::read_to_string(dl.join("named.txt")).unwrap(), BODY);
    assert_eq!(
        std::fs::read_to_string(dl.join("folder/moved")).unwrap(),
        BODY
    );
    assert_eq!(std::fs::read_to_string(dl.join("flaky.txt")).unwrap(), BODY);
    assert_eq!(
        flaky.load(Ordering::SeqCst),
        3,
        "two failures, then success"
    );
    assert_eq!(
        output(get, "destination"),
        "dl/named.txt\ndl/folder/moved\ndl/flaky.txt"
    );
    assert!(f
        .recorder
        .lines()
        .iter()
        .any(|l| l.contains("already has the expected checksum")));
    let s = step(&r, "build", "NoOverwrite");
    assert!(
        s.failure_message.contains("`overwrite` is false"),
        "{}",
        s.failure_message
    );
    let s = step(&r, "build", "BadSum");
    assert!(
        s.failure_message.contains("checksum mismatch"),
        "{}",
        s.failure_message
    );
    assert!(
        !dl.join("bad.txt").exists(),
        "a file that fails its checksum is not kept"
    );
    let s = step(&r, "build", "Missing");
    assert!(
        s.failure_message.contains("HTTP 404"),
        "{}",
        s.failure_message
    );
}

#[tokio::test]
async fn s3_download_upload_and_documents() {
    let moto = Moto::start();
    let http = reqwest::Client::new();
    let put = |key: &str, body: &str| {
        let url = format!("{}/{key}", moto.endpoint);
        let body = body.to_string();
        let http = http.clone();
        async move {
            let r = http.put(url).body(body).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
    };
    put("bucket", "").await;
    put("bucket/single/one.txt", "one").await;
    put("bucket/tree/a.txt", "a").await;
    put("bucket/tree/sub/b.txt", "b").await;
    put(
        "bucket/docs/nested.yaml",
        "schemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: FromS3\n        action: ExecuteBash\n        inputs:\n          commands: ['echo from-s3']\n",
    )
    .await;

    let f = Fixture::new();
    std::fs::create_dir_all(f.path().join("up/deep")).unwrap();
    std::fs::write(f.path().join("up/x.txt"), "x").unwrap();
    std::fs::write(f.path().join("up/deep/y.txt"), "y").unwrap();
    let s3 = Arc::new(S3Client::new(moto.config()));
    let engine = f
        .engine()
        .with_s3(s3.clone())
        .with_loader(kiln_toe::loader::DocumentLoader::new().with_s3(s3.clone()));
    let r = f
        .run_with(
            &engine,
            r#"schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: One
        action: S3Download
        inputs:
          - source: s3://bucket/single/one.txt
            destination: got/one.txt
            expectedBucketOwner: 123456789012
      - name: Prefix
        action: S3Download
        inputs:
          - source: s3://bucket/tree/*
            destination: got/tree/
      - name: Protect
        action: S3Download
        onFailure: Continue
        inputs:
          - source: s3://bucket/single/one.txt
            destination: got/one.txt
            overwrite: false
      - name: UpFile
        action: S3Upload
        inputs:
          - source: up/x.txt
            destination: s3://bucket/uploaded/
      - name: UpFlat
        action: S3Upload
        inputs:
          - source: up/*
            destination: s3://bucket/flat/
      - name: UpRecursive
        action: S3Upload
        inputs:
          - source: up/*
            destination: s3://bucket/rec/
            recurse: true
      - name: Nested
        action: ExecuteDocument
        inputs:
          document: s3://bucket/docs/nested.yaml
"#,
            &[],
            None,
        )
        .await;
    for name in ["One", "Prefix", "UpFile", "UpFlat", "UpRecursive", "Nested"] {
        let s = step(&r, "build", name);
        assert_eq!(
            s.status,
            StepStatus::Success,
            "{name}: {}",
            s.failure_message
        );
    }
    assert_eq!(r.status, RunStatus::Failed, "Protect fails with Continue");
    let s = step(&r, "build", "Protect");
    assert!(
        s.failure_message.contains("`overwrite` is false"),
        "{}",
        s.failure_message
    );
    let got = f.path().join("got");
    assert_eq!(std::fs::read_to_string(got.join("one.txt")).unwrap(), "one");
    assert_eq!(
        std::fs::read_to_string(got.join("tree/a.txt")).unwrap(),
        "a"
    );
    assert_eq!(
        std::fs::read_to_string(got.join("tree/sub/b.txt")).unwrap(),
        "b"
    );

    let keys = |prefix: &'static str| {
        let s3 = s3.clone();
        async move {
            let mut k: Vec<String> = s3
                .list_objects("bucket", prefix, None)
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect();
            k.sort();
            k
        }
    };
    assert_eq!(keys("uploaded/").await, vec!["uploaded/x.txt"]);
    assert_eq!(
        keys("flat/").await,
        vec!["flat/x.txt"],
        "without recurse, subfolders stay"
    );
    assert_eq!(keys("rec/").await, vec!["rec/deep/y.txt", "rec/x.txt"]);
    assert_eq!(
        String::from_utf8(s3.get_object("bucket", "rec/deep/y.txt").await.unwrap()).unwrap(),
        "y"
    );
    let nested = step(&r, "build", "Nested")
        .detailed_output
        .as_ref()
        .unwrap();
    assert_eq!(
        nested[0].documents[0].file_path,
        "s3://bucket/docs/nested.yaml"
    );
}

#[tokio::test]
async fn s3_without_configuration_says_what_to_set() {
    let f = Fixture::new();
    let r = f
        .run("schemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Get\n        action: S3Download\n        inputs:\n          - source: s3://b/k\n            destination: x\n")
        .await;
    let s = step(&r, "build", "Get");
    assert_eq!(s.status, StepStatus::Failed);
    assert!(
        s.failure_message.contains("AWS_ENDPOINT_URL"),
        "{}",
        s.failure_message
    );
}
