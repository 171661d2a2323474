//! `verify` against requests signed as clients sign them: by `aws-sigv4` (the Rust SDK's
//! signer) and by kiln's own signer, and every way a request is refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use http::{HeaderMap, HeaderName, HeaderValue};
use kiln_sigv4::sign::{authorization, sha256_hex, uri_encode, Credentials, Request};
use kiln_sigv4::{verify, AuthError, Incoming, Scope, Verified};

const KEY: &str = "AKIAKILNEXAMPLE23456";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const HOST: &str = "127.0.0.1:8479";
const ENCODED_ARN: &str =
    "arn%3Akiln%3Aimagebuilder%3Alocal%3A123456789012%3Acomponent%2Fx%2F1.0.0%2F1";

/// 2026-12-01T12:00:00Z.
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_126_400)
}

fn secret_of(key: &str) -> Option<String> {
    (key == KEY).then(|| SECRET.to_string())
}

fn scope() -> Scope {
    Scope::imagebuilder("local")
}

/// A request as a server receives it.
struct Req {
    method: &'static str,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Req {
    fn new(method: &'static str, path: &str, query: Option<&str>, body: &[u8]) -> Req {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static(HOST));
        if !body.is_empty() {
            headers.insert("content-type", HeaderValue::from_static("application/json"));
        }
        headers.insert("user-agent", HeaderValue::from_static("test/1.0"));
        Req {
            method,
            path: path.to_string(),
            query: query.map(str::to_string),
            headers,
            body: body.to_vec(),
        }
    }

    fn incoming(&self) -> Incoming<'_> {
        Incoming {
            method: self.method,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
            body: &self.body,
        }
    }

    fn verify_at(&self, now: SystemTime) -> Result<Verified, AuthError> {
        verify(&self.incoming(), &scope(), now, secret_of)
    }

    fn set(&mut self, name: &'static str, value: &str) {
        self.headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).expect("header value"),
        );
    }

    /// Signs as the Rust SDK would, with aws-sigv4's default settings (double-encoded path,
    /// normalised), for `region`.
    fn sign_aws(&mut self, secret: &str, region: &str, service: &str, at: SystemTime) {
        let uri = match &self.query {
            Some(q) => format!("http://{HOST}{}?{q}", self.path),
            None => format!("http://{HOST}{}", self.path),
        };
        let headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").to_string()))
            .collect();
        let identity =
            aws_credential_types::Credentials::new(KEY, secret, None, None, "test").into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(service)
            .time(at)
            .settings(SigningSettings::default())
            .build()
            .expect("params")
            .into();
        let signable = SignableRequest::new(
            self.method,
            uri,
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(&self.body),
        )
        .expect("signable");
        let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
        for (name, value) in instructions.headers() {
            self.headers.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
    }

    /// Signs with kiln's own signer, double-encoding the path as botocore does, over `signed`.
    fn sign_kiln(&mut self, secret: &str, signed: &[&str], at: SystemTime) {
        let at: chrono::DateTime<chrono::Utc> = at.into();
        self.set("x-amz-date", &at.format("%Y%m%dT%H%M%SZ").to_string());
        let headers: Vec<(String, String)> = signed
            .iter()
            .map(|&name| {
                let value = self.headers.get(name).expect("signed header present");
                (name.to_string(), value.to_str().expect("ascii").to_string())
            })
            .collect();
        let query: Vec<(String, String)> = self
            .query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect();
        let path = uri_encode(&self.path, true);
        let hash = sha256_hex(&self.body);
        let creds = Credentials {
            access_key_id: KEY.into(),
            secret_access_key: secret.into(),
            session_token: None,
        };
        let auth = authorization(
            &Request {
                method: self.method,
                path: &path,
                query: &query,
                headers: &headers,
                payload_hash: &hash,
            },
            &creds,
            "local",
            "imagebuilder",
            at,
        );
        self.set("authorization", &auth);
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("utf8");
            out.push(u8::from_str_radix(hex, 16).expect("hex"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf8")
}

fn tag_request() -> Req {
    Req::new(
        "POST",
        &format!("/tags/{ENCODED_ARN}"),
        None,
        br#"{"tags":{"team":"a"}}"#,
    )
}

fn get_image_request() -> Req {
    Req::new(
        "GET",
        "/GetImage",
        Some(&format!("imageBuildVersionArn={ENCODED_ARN}")),
        b"",
    )
}

#[test]
fn aws_sigv4_signed_requests_verify() {
    for mut req in [tag_request(), get_image_request()] {
        req.sign_aws(SECRET, "local", "imagebuilder", t0());
        let v = req.verify_at(t0()).expect("verifies");
        assert_eq!(v.access_key_id, KEY);
    }
}

#[test]
fn kiln_signed_requests_verify() {
    let mut req = tag_request();
    req.sign_kiln(SECRET, &["content-type", "host", "x-amz-date"], t0());
    assert_eq!(req.verify_at(t0()).expect("verifies").access_key_id, KEY);

    let mut req = get_image_request();
    req.sign_kiln(SECRET, &["host", "x-amz-date"], t0());
    assert_eq!(req.verify_at(t0()).expect("verifies").access_key_id, KEY);
}

#[test]
fn query_with_several_pairs_is_canonicalised() {
    let mut req = Req::new(
        "DELETE",
        &format!("/tags/{ENCODED_ARN}"),
        Some("tagKeys=z&tagKeys=x%20y&a=%7E"),
        b"",
    );
    req.sign_kiln(SECRET, &["host", "x-amz-date"], t0());
    req.verify_at(t0()).expect("verifies");
}

#[test]
fn unsigned_headers_may_change_but_signed_ones_may_not() {
    let mut req = tag_request();
    req.sign_aws(SECRET, "local", "imagebuilder", t0());
    // user-agent is not signed by aws-sigv4 (nor by botocore).
    req.set("user-agent", "proxy-rewrote-it");
    req.verify_at(t0()).expect("unsigned header is free");
    req.set("content-type", "text/plain");
    assert_eq!(req.verify_at(t0()), Err(AuthError::SignatureMismatch));
}

#[test]
fn tampered_body_or_path_or_query_is_refused() {
    let mut req = tag_request();
    req.sign_aws(SECRET, "local", "imagebuilder", t0());
    req.body = br#"{"tags":{"team":"b"}}"#.to_vec();
    assert_eq!(req.verify_at(t0()), Err(AuthError::SignatureMismatch));

    let mut req = tag_request();
    req.sign_aws(SECRET, "local", "imagebuilder", t0());
    req.path = req.path.replace("%2Fx%2F", "%2Fy%2F");
    assert_eq!(req.verify_at(t0()), Err(AuthError::SignatureMismatch));

    let mut req = get_image_request();
    req.sign_aws(SECRET, "local", "imagebuilder", t0());
    req.query = Some(format!("imageBuildVersionArn={ENCODED_ARN}2"));
    assert_eq!(req.verify_at(t0()), Err(AuthError::SignatureMismatch));
}

#[test]
fn wrong_secret_is_a_signature_mismatch_and_says_nothing_secret() {
    let mut good = tag_request();
    good.sign_aws(SECRET, "local", "imagebuilder", t0());
    let good_auth = good.headers["authorization"].to_str().expect("ascii");
    let good_sig = good_auth.rsplit('=').next().expect("signature").to_string();

    let mut req = tag_request();
    req.sign_aws("not-the-secret", "local", "imagebuilder", t0());
    let err = req.verify_at(t0()).expect_err("refused");
    assert_eq!(err, AuthError::SignatureMismatch);
    assert_eq!(err.code(), "InvalidSignatureException");
    assert_eq!(err.http_status(), 403);
    assert_eq!(
        err.to_string(),
        "The request signature we calculated does not match the signature you provided. \
         Check your AWS Secret Access Key and signing method."
    );
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains(SECRET));
        assert!(!text.contains(&good_sig));
    }
    let debug = format!("{:?}", good.incoming());
    assert!(!debug.contains(&good_sig), "{debug}");
}

#[test]
fn missing_authorization() {
    let req = tag_request();
    let err = req.verify_at(t0()).expect_err("refused");
    assert_eq!(err, AuthError::MissingAuthorization);
    assert_eq!(err.code(), "MissingAuthenticationTokenException");
    assert_eq!(err.http_status(), 403);
    assert_eq!(err.to_string(), "Missing Authentication Token");
}

#[test]
fn malformed_authorization() {
    for value in [
        "garbage",
        "AWS4-HMAC-SHA256 Credential=AKIA/20261201/local/imagebuilder/aws4_request",
        "AWS4-HMAC-SHA256 Credential=AKIA/20261201/local, SignedHeaders=host;x-amz-date, Signature=00",
        "AWS4-HMAC-SHA256 Credential=/20261201/local/imagebuilder/aws4_request, SignedHeaders=host;x-amz-date, Signature=00",
        "AWS AKIA:abcdef",
    ] {
        let mut req = tag_request();
        req.set("x-amz-date", "20261201T120000Z");
        req.set("authorization", value);
        let err = req.verify_at(t0()).expect_err(value);
        assert_eq!(err.code(), "IncompleteSignatureException", "{value}: {err}");
        assert_eq!(err.http_status(), 403);
    }
    let mut req = tag_request();
    req.set("x-amz-date", "20261201T120000Z");
    req.set(
        "authorization",
        "AWS4-HMAC-SHA256 Credential=AKIA/20261201/local/imagebuilder/aws4_request",
    );
    let msg = req.verify_at(t0()).expect_err("refused").to_string();
    assert!(msg.contains("requires 'Signature' parameter"), "{msg}");
    assert!(msg.contains("requires 'SignedHeaders' parameter"), "{msg}");
}

#[test]
fn missing_or_malformed_date() {
    let mut req = tag_request();
    req.sign_aws(SECRET, "local", "imagebuilder", t0());
    req.headers.remove("x-amz-date");
    let err = req.verify_at(t0()).expect_err("refused");
    assert_eq!(err, AuthError::MissingDate);
    assert_eq!(err.code(), "IncompleteSignatureException");

    req.set("x-amz-date", "2026-12-01T12:00:00Z");
    let err = req.verify_at(t0()).expect_err("refused");
    assert!(matches!(err, AuthError::MalformedDate(_)), "{err:?}");
    assert_eq!(err.code(), "IncompleteSignatureException");
}

#[test]
fn host_and_date_must_be_signed() {
    let mut req = tag_request();
    req.sign_kiln(SECRET, &["content-type", "x-amz-date"], t0());
    let err = req.verify_at(t0()).expect_err("refused");
    assert_eq!(err, AuthError::UnsignedHeader("host"));
    assert_eq!(err.code(), "IncompleteSignatureException");

    let mut req = tag_request();
    req.sign_kiln(SECRET, &["content-type", "host"], t0());
    assert_eq!(
        req.verify_at(t0()),
        Err(AuthError::UnsignedHeader("x-amz-date"))
    );
}

#[test]
fn signed_header_that_is_absent() {
    let mut req = tag_request();
    req.sign_kiln(SECRET, &["content-type", "host", "x-amz-date"], t0());
    req.headers.remove("content-type");
    assert_eq!(
        req.verify_at(t0()),
        Err(AuthError::SignedHeaderAbsent("content-type".into()))
    );
}

#[test]
fn unknown_access_key() {
    let mut req = tag_request();
    req.sign_aws(SECRET, "local", "imagebuilder", t0());
    let err = verify(&req.incoming(), &scope(), t0(), |_| None).expect_err("refused");
    assert_eq!(err, AuthError::UnknownAccessKey);
    assert_eq!(err.code(), "UnrecognizedClientException");
    assert_eq!(err.http_status(), 403);
    assert_eq!(
        err.to_string(),
        "The security token included in the request is invalid."
    );
}

#[test]
fn session_token_is_refused() {
    let mut req = tag_request();
    req.set("x-amz-security-token", "FwoGZXIvYXdzE...");
    req.sign_aws(SECRET, "local", "imagebuilder", t0());
    let err = req.verify_at(t0()).expect_err("refused");
    assert_eq!(err, AuthError::SessionToken);
    assert_eq!(err.code(), "UnrecognizedClientException");
    assert!(err.to_string().contains("long-term access keys only"));
}

#[test]
fn wrong_region_or_service() {
    let mut req = tag_request();
    req.sign_aws(SECRET, "us-east-1", "imagebuilder", t0());
    let err = req.verify_at(t0()).expect_err("refused");
    assert_eq!(err.code(), "InvalidSignatureException");
    assert_eq!(err.http_status(), 403);
    let msg = err.to_string();
    assert!(
        msg.starts_with("Credential should be scoped to a valid region"),
        "{msg}"
    );
    assert!(
        msg.contains("'local'") && msg.contains("'us-east-1'"),
        "{msg}"
    );

    let mut req = tag_request();
    req.sign_aws(SECRET, "local", "s3", t0());
    let err = req.verify_at(t0()).expect_err("refused");
    assert_eq!(err.code(), "InvalidSignatureException");
    assert!(
        err.to_string()
            .contains("Credential should be scoped to correct service: 'imagebuilder'"),
        "{err}"
    );
}

#[test]
fn scope_date_must_be_the_day_of_x_amz_date() {
    let mut req = tag_request();
    req.sign_aws(SECRET, "local", "imagebuilder", t0());
    let auth = req.headers["authorization"]
        .to_str()
        .expect("ascii")
        .replace("/20261201/", "/20261130/");
    req.set("authorization", &auth);
    let err = req.verify_at(t0()).expect_err("refused");
    assert!(matches!(err, AuthError::ScopeDate { .. }), "{err:?}");
    assert_eq!(err.code(), "InvalidSignatureException");
}

#[test]
fn clock_skew_of_fifteen_minutes_either_way() {
    let fifteen = Duration::from_secs(15 * 60);
    let second = Duration::from_secs(1);
    let mut req = tag_request();
    req.sign_aws(SECRET, "local", "imagebuilder", t0());

    // The server's clock ahead of the signer's: the signature ages.
    req.verify_at(t0() + fifteen)
        .expect("15 min old is accepted");
    let err = req.verify_at(t0() + fifteen + second).expect_err("refused");
    assert_eq!(err.code(), "InvalidSignatureException");
    assert_eq!(
        err.to_string(),
        "Signature expired: 20261201T120000Z is now earlier than 20261201T120001Z \
         (20261201T121501Z - 15 min.)"
    );

    // The server's clock behind: the signature is from the future.
    req.verify_at(t0() - fifteen)
        .expect("15 min ahead is accepted");
    let err = req.verify_at(t0() - fifteen - second).expect_err("refused");
    assert_eq!(err.code(), "InvalidSignatureException");
    assert_eq!(
        err.to_string(),
        "Signature not yet current: 20261201T120000Z is still later than 20261201T115959Z \
         (20261201T114459Z + 15 min.)"
    );
}

#[test]
fn content_sha256_header_must_be_the_body_hash() {
    let mut req = tag_request();
    let hash = sha256_hex(&req.body);
    req.set("x-amz-content-sha256", &hash);
    req.sign_aws(SECRET, "local", "imagebuilder", t0());
    req.verify_at(t0()).expect("matching x-amz-content-sha256");

    let mut req = tag_request();
    req.set("x-amz-content-sha256", &sha256_hex(b"other"));
    req.sign_aws(SECRET, "local", "imagebuilder", t0());
    let err = req.verify_at(t0()).expect_err("refused");
    assert_eq!(err, AuthError::ContentSha256Mismatch);
    assert_eq!(err.code(), "InvalidSignatureException");

    let mut req = tag_request();
    req.set("x-amz-content-sha256", "UNSIGNED-PAYLOAD");
    req.sign_kiln(
        SECRET,
        &["content-type", "host", "x-amz-content-sha256", "x-amz-date"],
        t0(),
    );
    assert_eq!(req.verify_at(t0()), Err(AuthError::ContentSha256Mismatch));
}

#[test]
fn odd_authorization_headers_are_refused_without_panicking() {
    let good = "Credential=AKIAKILNEXAMPLE23456/20261201/local/imagebuilder/aws4_request";
    for value in [
        "AWS4-HMAC-SHA256".to_string(),
        "AWS4-HMAC-SHA256 ,,,".to_string(),
        "AWS4-HMAC-SHA256 Credential==, SignedHeaders==, Signature==".to_string(),
        format!("AWS4-HMAC-SHA256 {good}, SignedHeaders=;;, Signature=zz"),
        format!("AWS4-HMAC-SHA256 {good}, SignedHeaders=host;;x-amz-date, Signature=00"),
        format!("AWS4-HMAC-SHA256 {good}, SignedHeaders=Host;X-Amz-Date, Signature=00"),
        format!("AWS4-HMAC-SHA256 {good}, SignedHeaders=host;x-amz-date;bad header, Signature=00"),
        format!("AWS4-HMAC-SHA256 {good}, SignedHeaders=host;x-amz-date, Signature="),
        format!("AWS4-HMAC-SHA256 {good}, SignedHeaders=host;x-amz-date, Signature=00"),
        format!("AWS4-HMAC-SHA256  {good},SignedHeaders=host;x-amz-date,Signature=00"),
    ] {
        let mut req = tag_request();
        req.set("x-amz-date", "20261201T120000Z");
        req.set("authorization", &value);
        let err = req.verify_at(t0()).expect_err(&value);
        assert_eq!(err.http_status(), 403, "{value}");
    }
    // Odd paths the server might hand over.
    for path in ["*", "", "/a/../../b", "//x//y", "/%zz", "/caf%C3%A9"] {
        let mut req = Req::new("GET", path, None, b"");
        req.sign_kiln(SECRET, &["host", "x-amz-date"], t0());
        let _ = req.verify_at(t0());
    }
}

#[test]
fn incoming_from_http_parts_keeps_the_raw_path_and_query() {
    let mut signed = get_image_request();
    signed.sign_aws(SECRET, "local", "imagebuilder", t0());
    let mut builder = http::Request::builder()
        .method("GET")
        .uri(format!("/GetImage?imageBuildVersionArn={ENCODED_ARN}"));
    for (k, v) in &signed.headers {
        builder = builder.header(k, v);
    }
    let (parts, ()) = builder.body(()).expect("request").into_parts();
    let incoming = Incoming::from_parts(&parts, b"");
    assert_eq!(incoming.path, "/GetImage");
    assert_eq!(
        incoming.query,
        Some(format!("imageBuildVersionArn={ENCODED_ARN}").as_str())
    );
    verify(&incoming, &scope(), t0(), secret_of).expect("verifies");
}
