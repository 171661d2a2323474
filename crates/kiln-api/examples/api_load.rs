//! A load generator for `kiln serve`: N concurrent clients, each on its own HTTP/1.1
//! keep-alive connection, send one operation for a fixed time, every request signed with SigV4
//! by `aws-sigv4` (AWS's own signer), and the answers' latencies are reported per operation and
//! concurrency (p50, p90, p99, max; requests per second; every non-200 counted by status).
//!
//! ```text
//! api_load --endpoint http://127.0.0.1:PORT --account-json ACCOUNT.json \
//!     [--images 10000] [--ops get,list,list25] [--clients 1,8,32] \
//!     [--seconds 10] [--warmup 2] [--json FILE]
//! ```
//!
//! `ACCOUNT.json` is what `kiln account create NAME -o json` prints. The images named are the
//! ones `examples/seed_images.rs` stores (`kiln_core::sample`, build 1 of each), picked at random.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4::SigningParams;
use kiln_core::record::image_arn;
use kiln_core::sample::name_version;
use serde_json::{json, Value};

/// What is asked.
#[derive(Clone, Copy, PartialEq)]
enum Op {
    /// `GET /GetImage?imageBuildVersionArn=ARN`, a random seeded image.
    Get,
    /// `POST /ListImages` with `{}` (the server's default page size).
    List,
    /// `POST /ListImages` with `{"maxResults": 25}`.
    List25,
}

impl Op {
    fn parse(s: &str) -> Op {
        match s {
            "get" => Op::Get,
            "list" => Op::List,
            "list25" => Op::List25,
            _ => panic!("--ops: get, list or list25, not {s}"),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Op::Get => "GetImage",
            Op::List => "ListImages {}",
            Op::List25 => "ListImages {maxResults: 25}",
        }
    }
}

struct Args {
    endpoint: String,
    access_key: String,
    secret: String,
    account: String,
    images: usize,
    ops: Vec<Op>,
    clients: Vec<usize>,
    seconds: f64,
    warmup: f64,
    json: Option<String>,
}

fn args() -> Args {
    let mut a: BTreeMap<String, String> = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let key = k
            .strip_prefix("--")
            .unwrap_or_else(|| panic!("unexpected argument {k}"));
        a.insert(
            key.to_string(),
            it.next().expect("a value after each --option"),
        );
    }
    let account: Value = serde_json::from_slice(
        &std::fs::read(a.get("account-json").expect("--account-json FILE")).expect("reading it"),
    )
    .expect("--account-json: the JSON of `kiln account create -o json`");
    let field = |k: &str| account[k].as_str().expect(k).to_string();
    let list = |k: &str, default: &str| -> Vec<String> {
        a.get(k)
            .map_or(default, String::as_str)
            .split(',')
            .map(str::to_string)
            .collect()
    };
    Args {
        endpoint: a
            .get("endpoint")
            .expect("--endpoint http://ADDR")
            .trim_end_matches('/')
            .to_string(),
        access_key: field("accessKeyId"),
        secret: field("secretAccessKey"),
        account: field("accountId"),
        images: a
            .get("images")
            .map_or(10_000, |n| n.parse().expect("--images")),
        ops: list("ops", "get,list")
            .iter()
            .map(|s| Op::parse(s))
            .collect(),
        clients: list("clients", "1,8,32")
            .iter()
            .map(|n| n.parse().expect("--clients"))
            .collect(),
        seconds: a
            .get("seconds")
            .map_or(10.0, |n| n.parse().expect("--seconds")),
        warmup: a
            .get("warmup")
            .map_or(2.0, |n| n.parse().expect("--warmup")),
        json: a.get("json").cloned(),
    }
}

/// What the clients share.
struct Target {
    endpoint: String,
    host: String,
    access_key: String,
    secret: String,
    /// The seeded images' ARNs, percent-encoded for a query string as botocore encodes them.
    arns: Vec<String>,
}

/// Every character but SigV4's unreserved ones percent-encoded (what botocore sends).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A small PRNG (splitmix64): which image a request names, with no dependency for it.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

/// One request, signed now.
fn signed(http: &reqwest::Client, t: &Target, op: Op, rng: &mut Rng) -> reqwest::RequestBuilder {
    let (method, url, body): (&str, String, Vec<u8>) = match op {
        Op::Get => (
            "GET",
            format!(
                "{}/GetImage?imageBuildVersionArn={}",
                t.endpoint,
                t.arns[rng.below(t.arns.len())]
            ),
            Vec::new(),
        ),
        Op::List => ("POST", format!("{}/ListImages", t.endpoint), b"{}".to_vec()),
        Op::List25 => (
            "POST",
            format!("{}/ListImages", t.endpoint),
            br#"{"maxResults":25}"#.to_vec(),
        ),
    };
    let mut headers = vec![("host".to_string(), t.host.clone())];
    if method == "POST" {
        headers.push(("content-type".into(), "application/json".into()));
    }
    let identity =
        aws_credential_types::Credentials::new(&t.access_key, &t.secret, None, None, "bench")
            .into();
    let params = SigningParams::builder()
        .identity(&identity)
        .region("local")
        .name("imagebuilder")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        method,
        &url,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(&body),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut req = http.request(method.parse().unwrap(), &url);
    // reqwest writes the Host header itself, from the URL: the value signed above.
    for (k, v) in headers.iter().skip(1) {
        req = req.header(k, v);
    }
    for (k, v) in instructions.headers() {
        req = req.header(k, v);
    }
    req.body(body)
}

/// What one client saw in the measured time.
#[derive(Default)]
struct Seen {
    /// Latencies of the 200 answers, in microseconds.
    ok_us: Vec<u32>,
    /// Other answers by status (0: no answer, a connection error).
    errors: BTreeMap<u16, u64>,
}

/// One client: its own connection, requests one after another until `end`; those answered
/// before `measure_from` are not counted (the warm-up).
async fn client(t: Arc<Target>, op: Op, seed: u64, measure_from: Instant, end: Instant) -> Seen {
    // One client, one pooled connection kept alive between requests.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let mut rng = Rng(seed);
    let mut seen = Seen::default();
    while Instant::now() < end {
        let req = signed(&http, &t, op, &mut rng);
        let start = Instant::now();
        let status = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.bytes().await {
                    Ok(_) => status,
                    Err(_) => 0,
                }
            }
            Err(_) => 0,
        };
        let elapsed = start.elapsed();
        if start < measure_from {
            continue;
        }
        if status == 200 {
            seen.ok_us
                .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
        } else {
            *seen.errors.entry(status).or_default() += 1;
        }
    }
    seen
}

/// The `q` quantile (nearest rank) of sorted latencies, in milliseconds.
fn quantile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1e3
}

#[tokio::main]
async fn main() {
    let a = args();
    let host = a
        .endpoint
        .strip_prefix("http://")
        .expect("--endpoint http://ADDR")
        .to_string();
    let arns = (0..a.images)
        .map(|i| {
            let (name, version) = name_version(i);
            encode(&image_arn(&a.account, &name, &version, 1))
        })
        .collect();
    let target = Arc::new(Target {
        endpoint: a.endpoint.clone(),
        host,
        access_key: a.access_key.clone(),
        secret: a.secret.clone(),
        arns,
    });
    let mut rows = Vec::new();
    println!(
        "{:<28} {:>7} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "operation",
        "clients",
        "requests",
        "errors",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms"
    );
    for &op in &a.ops {
        for &n in &a.clients {
            let measure_from = Instant::now() + Duration::from_secs_f64(a.warmup);
            let end = measure_from + Duration::from_secs_f64(a.seconds);
            let tasks: Vec<_> = (0..n)
                .map(|c| {
                    tokio::spawn(client(
                        target.clone(),
                        op,
                        (c as u64 + 1) * 7919,
                        measure_from,
                        end,
                    ))
                })
                .collect();
            let mut ok: Vec<u32> = Vec::new();
            let mut errors: BTreeMap<u16, u64> = BTreeMap::new();
            for t in tasks {
                let s = t.await.unwrap();
                ok.extend(s.ok_us);
                for (k, v) in s.errors {
                    *errors.entry(k).or_default() += v;
                }
            }
            ok.sort_unstable();
            let failed: u64 = errors.values().sum();
            let requests = ok.len() as u64 + failed;
            // Answers per second in the measured time; the last requests end a little after it.
            let rps = requests as f64 / a.seconds;
            let (p50, p90, p99, max) = (
                quantile(&ok, 0.50),
                quantile(&ok, 0.90),
                quantile(&ok, 0.99),
                quantile(&ok, 1.0),
            );
            let by_status: Vec<String> = errors.iter().map(|(s, n)| format!("{s}:{n}")).collect();
            println!(
                "{:<28} {:>7} {:>8} {:>7} {:>8.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}{}",
                op.label(),
                n,
                requests,
                failed,
                rps,
                p50,
                p90,
                p99,
                max,
                if by_status.is_empty() {
                    String::new()
                } else {
                    format!("  (by status, 0 = no answer: {})", by_status.join(" "))
                }
            );
            rows.push(json!({
                "operation": op.label(), "clients": n, "seconds": a.seconds,
                "requests": requests, "errors": errors, "requestsPerSecond": rps,
                "p50Ms": p50, "p90Ms": p90, "p99Ms": p99, "maxMs": max,
            }));
        }
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&rows).unwrap()).unwrap();
    }
}
