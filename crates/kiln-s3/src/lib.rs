//! A small S3 client for S3-compatible object stores (AWS S3, MinIO, RustFS, moto, Ceph RGW):
//! the few calls the AWSTOE `S3Download`, `S3Upload` and `ExecuteDocument` actions need, signed
//! with AWS Signature Version 4.
#![deny(missing_docs)]

use std::path::Path;

use chrono::Utc;
use tokio::io::AsyncWriteExt;

mod objects;

/// SigV4 signing, which lives in `kiln-sigv4` (the API server verifies with the same crate).
pub use kiln_sigv4::sign as sigv4;

pub use sigv4::Credentials;

/// Errors of S3 calls.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The `s3://` URL is malformed.
    #[error("`{0}` is not an S3 URL of the form s3://BUCKET/KEY")]
    BadUrl(String),
    /// The request could not be sent or its answer read.
    #[error("S3 request to {url} failed: {source}")]
    Http {
        /// The request URL.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The service answered with an error.
    #[error("S3 answered {status} for {method} s3://{bucket}/{key}: {code} {message}")]
    Service {
        /// HTTP method.
        method: String,
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// HTTP status.
        status: u16,
        /// S3 error code (`NoSuchKey`, `AccessDenied`, ...).
        code: String,
        /// S3's message.
        message: String,
    },
    /// A local file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The answer could not be understood.
    #[error("cannot read S3's answer: {0}")]
    Protocol(String),
}

/// Where and how to reach S3.
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); AWS S3 of `region` when `None`.
    pub endpoint: Option<String>,
    /// Signing region.
    pub region: String,
    /// Keys; requests go unsigned when `None`.
    pub credentials: Option<Credentials>,
    /// Address buckets in the path (`ENDPOINT/BUCKET/KEY`), as most S3-compatible servers want.
    pub path_style: bool,
}

impl S3Config {
    /// Reads the standard AWS environment variables: `AWS_ENDPOINT_URL_S3` or
    /// `AWS_ENDPOINT_URL`, `AWS_REGION` or `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let endpoint = var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL"));
        let credentials = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => Some(Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: var("AWS_SESSION_TOKEN"),
            }),
            _ => None,
        };
        S3Config {
            path_style: endpoint.is_some(),
            endpoint,
            region: var("AWS_REGION")
                .or_else(|| var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".to_string()),
            credentials,
        }
    }
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Splits `s3://bucket/key` into bucket and key (the key may be empty).
pub fn parse_url(url: &str) -> Result<(String, String), S3Error> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| S3Error::BadUrl(url.to_string()))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(S3Error::BadUrl(url.to_string()));
    }
    Ok((bucket.to_string(), key.to_string()))
}

/// The key of `rel` under a key prefix taken as a folder (`logs` and `logs/` both give
/// `logs/REL`; an empty prefix gives `REL`).
pub fn key_under(prefix: &str, rel: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('/') {
        format!("{prefix}{rel}")
    } else {
        format!("{prefix}/{rel}")
    }
}

/// An S3 client.
#[derive(Debug, Clone)]
pub struct S3Client {
    config: S3Config,
    http: reqwest::Client,
}

impl S3Client {
    /// A client for a configuration.
    pub fn new(config: S3Config) -> Self {
        S3Client {
            config,
            http: reqwest::Client::new(),
        }
    }

    fn base(&self, bucket: &str) -> (String, String) {
        match &self.config.endpoint {
            Some(ep) if self.config.path_style => (
                ep.trim_end_matches('/').to_string(),
                format!("/{}", sigv4::uri_encode(bucket, false)),
            ),
            Some(ep) => {
                let (scheme, host) = ep.split_once("://").unwrap_or(("https", ep));
                (
                    format!("{scheme}://{bucket}.{}", host.trim_end_matches('/')),
                    String::new(),
                )
            }
            None => (
                format!("https://{bucket}.s3.{}.amazonaws.com", self.config.region),
                String::new(),
            ),
        }
    }

    pub(crate) fn request(
        &self,
        method: reqwest::Method,
        bucket: &str,
        key: &str,
        query: &[(String, String)],
        expected_owner: Option<&str>,
    ) -> (reqwest::RequestBuilder, String) {
        let (origin, bucket_path) = self.base(bucket);
        let path = format!("{bucket_path}/{}", sigv4::uri_encode(key, true));
        let q = sigv4::canonical_query(query);
        let url = if q.is_empty() {
            format!("{origin}{path}")
        } else {
            format!("{origin}{path}?{q}")
        };
        let host = origin.split_once("://").map_or(origin.as_str(), |(_, h)| h);
        let now = Utc::now();
        let mut headers = vec![
            ("host".to_string(), host.to_string()),
            (
                "x-amz-content-sha256".to_string(),
                sigv4::UNSIGNED_PAYLOAD.to_string(),
            ),
            (
                "x-amz-date".to_string(),
                now.format("%Y%m%dT%H%M%SZ").to_string(),
            ),
        ];
        if let Some(owner) = expected_owner {
            headers.push(("x-amz-expected-bucket-owner".to_string(), owner.to_string()));
        }
        let mut builder = self.http.request(method.clone(), &url);
        if let Some(creds) = &self.config.credentials {
            if let Some(token) = &creds.session_token {
                headers.push(("x-amz-security-token".to_string(), token.clone()));
            }
            let auth = sigv4::authorization(
                &sigv4::Request {
                    method: method.as_str(),
                    path: &path,
                    query,
                    headers: &headers,
                    payload_hash: sigv4::UNSIGNED_PAYLOAD,
                },
                creds,
                &self.config.region,
                "s3",
                now,
            );
            builder = builder.header("authorization", auth);
        }
        for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
            builder = builder.header(k, v);
        }
        (builder, url)
    }

    pub(crate) async fn send(
        &self,
        builder: reqwest::RequestBuilder,
        url: &str,
        method: &str,
        bucket: &str,
        key: &str,
    ) -> Result<reqwest::Response, S3Error> {
        let resp = builder.send().await.map_err(|source| S3Error::Http {
            url: url.to_string(),
            source,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Err(S3Error::Service {
            method: method.to_string(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            status,
            code: xml_text(&body, "Code").unwrap_or_default(),
            message: xml_text(&body, "Message").unwrap_or_default(),
        })
    }

    /// Downloads an object into a local file (written to a temporary name, then renamed, so a
    /// failed download never leaves a partial file). Returns its size.
    pub async fn get_object_to_file(
        &self,
        bucket: &str,
        key: &str,
        dest: &Path,
        expected_owner: Option<&str>,
    ) -> Result<u64, S3Error> {
        let (builder, url) = self.request(reqwest::Method::GET, bucket, key, &[], expected_owner);
        let mut resp = self.send(builder, &url, "GET", bucket, key).await?;
        let io = |context: String| move |source| S3Error::Io { context, source };
        let tmp = dest.with_file_name(format!(
            ".{}.kiln-part",
            dest.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("download")
        ));
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(io(format!("creating {}", tmp.display())))?;
        let mut size = 0u64;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    size += chunk.len() as u64;
                    file.write_all(&chunk)
                        .await
                        .map_err(io(format!("writing {}", tmp.display())))?;
                }
                Ok(None) => break,
                Err(source) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(S3Error::Http { url, source });
                }
            }
        }
        file.flush()
            .await
            .map_err(io(format!("writing {}", tmp.display())))?;
        drop(file);
        tokio::fs::rename(&tmp, dest)
            .await
            .map_err(io(format!("renaming into {}", dest.display())))?;
        Ok(size)
    }

    /// Downloads an object into memory (documents, small files).
    pub async fn get_object(&self, bucket: &str, key: &str) -> Result<Vec<u8>, S3Error> {
        let (builder, url) = self.request(reqwest::Method::GET, bucket, key, &[], None);
        let resp = self.send(builder, &url, "GET", bucket, key).await?;
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|source| S3Error::Http { url, source })
    }

    /// Uploads a local file as an object.
    pub async fn put_object_from_file(
        &self,
        bucket: &str,
        key: &str,
        src: &Path,
        expected_owner: Option<&str>,
    ) -> Result<(), S3Error> {
        let data = tokio::fs::read(src).await.map_err(|source| S3Error::Io {
            context: format!("reading {}", src.display()),
            source,
        })?;
        let (builder, url) = self.request(reqwest::Method::PUT, bucket, key, &[], expected_owner);
        let builder = builder
            .header("content-length", data.len().to_string())
            .body(data);
        self.send(builder, &url, "PUT", bucket, key).await?;
        Ok(())
    }

    /// Lists every object under a key prefix (following continuation tokens).
    pub async fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        expected_owner: Option<&str>,
    ) -> Result<Vec<ObjectInfo>, S3Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("list-type".to_string(), "2".to_string()),
                ("prefix".to_string(), prefix.to_string()),
            ];
            if let Some(t) = &token {
                query.push(("continuation-token".to_string(), t.clone()));
            }
            let (builder, url) =
                self.request(reqwest::Method::GET, bucket, "", &query, expected_owner);
            let resp = self.send(builder, &url, "LIST", bucket, prefix).await?;
            let body = resp
                .text()
                .await
                .map_err(|source| S3Error::Http { url, source })?;
            let page = parse_listing(&body)?;
            out.extend(page.objects);
            match page.next {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }
}

struct Listing {
    objects: Vec<ObjectInfo>,
    next: Option<String>,
}

fn parse_listing(xml: &str) -> Result<Listing, S3Error> {
    if !xml.contains("<ListBucketResult") {
        return Err(S3Error::Protocol(
            "not a ListBucketResult document".to_string(),
        ));
    }
    let mut objects = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<Contents>") {
        let end = rest[start..]
            .find("</Contents>")
            .ok_or_else(|| S3Error::Protocol("unterminated <Contents>".to_string()))?
            + start;
        let block = &rest[start..end];
        let key = xml_text(block, "Key")
            .ok_or_else(|| S3Error::Protocol("an object without <Key>".to_string()))?;
        let size = xml_text(block, "Size")
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        objects.push(ObjectInfo { key, size });
        rest = &rest[end..];
    }
    let truncated = xml_text(xml, "IsTruncated").is_some_and(|t| t.trim() == "true");
    let next = xml_text(xml, "NextContinuationToken");
    Ok(Listing {
        objects,
        next: if truncated { next } else { None },
    })
}

/// Replaces XML's predefined entities and character references.
fn xml_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let Some(semi) = after.find(';') else {
            out.push_str(&rest[amp..]);
            return out;
        };
        let entity = &after[..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => out.push(c),
            None => out.push_str(&rest[amp..amp + 2 + semi]),
        }
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    out
}

fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml_unescape(&xml[start..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_under_a_prefix() {
        assert_eq!(key_under("", "a/b"), "a/b");
        assert_eq!(key_under("logs", "a/b"), "logs/a/b");
        assert_eq!(key_under("logs/", "a/b"), "logs/a/b");
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("s3://b/a/b.txt").unwrap(),
            ("b".to_string(), "a/b.txt".to_string())
        );
        assert_eq!(
            parse_url("s3://b").unwrap(),
            ("b".to_string(), String::new())
        );
        assert!(parse_url("s3:///x").is_err());
        assert!(parse_url("http://x").is_err());
    }

    #[test]
    fn listing_xml() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>
<Contents><Key>p/a.txt</Key><Size>3</Size></Contents>
<Contents><Key>p/b &amp; c.txt</Key><Size>10</Size></Contents>
<IsTruncated>true</IsTruncated><NextContinuationToken>tok</NextContinuationToken></ListBucketResult>"#;
        assert_eq!(xml_unescape("a&#x41;&#66;&lt;&bogus;"), "aAB<&bogus;");
        let l = parse_listing(xml).unwrap();
        assert_eq!(l.objects.len(), 2);
        assert_eq!(l.objects[1].key, "p/b & c.txt");
        assert_eq!(l.objects[1].size, 10);
        assert_eq!(l.next.as_deref(), Some("tok"));
    }
}
