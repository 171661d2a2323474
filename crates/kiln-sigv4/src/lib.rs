//! AWS Signature Version 4 for kiln: signing requests (the S3 client) and verifying them (the
//! Image Builder API server).
//!
//! # Signing
//!
//! [`sign`] is a small header signer: the caller gives the encoded path, the query pairs, the
//! headers to sign and the payload hash, and gets the `Authorization` header.
//!
//! # Verifying
//!
//! [`verify`] takes a request as it arrived ([`Incoming`]: the raw method, path, query,
//! headers and body), the [`Scope`] the server answers for (region `local` unless configured,
//! service `imagebuilder`), the current time and a lookup from access key id to secret. It
//! checks the `Authorization` header's shape, the credential scope and the clock skew (at most
//! [`MAX_SKEW`] either way), then signs the request again with `aws-sigv4` (AWS's own signer)
//! over exactly the headers the client listed in `SignedHeaders`, and compares the two
//! signatures in constant time.
//!
//! The re-signing reproduces botocore, the signer of the AWS CLI and boto3:
//!
//! - the canonical path is the path *as sent*, dot segments and repeated slashes removed
//!   (botocore's rule: aws-sigv4's own keeps a trailing slash after `/.` or `/..`, so kiln does
//!   this step itself), then percent-encoded again (`%3A` becomes `%253A`: `POST /tags/arn%3Akiln%3A...` is signed as
//!   `/tags/arn%253Akiln%253A...`);
//! - the query's pairs are decoded, encoded per RFC 3986 and sorted;
//! - only the headers named in `SignedHeaders` take part (`host` and `x-amz-date` must be among
//!   them), values trimmed with inner runs of spaces collapsed, repeated headers joined by `,`;
//! - the payload hash is the SHA-256 of the body received; an `x-amz-content-sha256` header,
//!   when sent, must be that same hash.
//!
//! Session credentials (`X-Amz-Security-Token`) and presigned URLs (`X-Amz-Signature` in the
//! query) are not accepted: kiln issues long-term access keys only.
//!
//! ```
//! # use std::time::{Duration, SystemTime};
//! use kiln_sigv4::{verify, AuthError, Incoming, Scope};
//!
//! let headers = http::HeaderMap::new();
//! let req = Incoming { method: "GET", path: "/ListComponents", query: None, headers: &headers, body: b"" };
//! let err = verify(&req, &Scope::imagebuilder("local"), SystemTime::now(), |_| None).unwrap_err();
//! assert_eq!(err.code(), "MissingAuthenticationTokenException");
//! assert_eq!(err.http_status(), 403);
//! ```

#![deny(missing_docs)]

pub mod sign;
mod verify;

pub use sign::Credentials;
pub use verify::{verify, AuthError, Incoming, Scope, Verified, MAX_SKEW};
