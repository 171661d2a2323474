//! `clientToken`: a request repeated with its token gets the first answer again; the token with
//! another request is `IdempotentParameterMismatchException`. Tokens are per account and
//! operation, as Image Builder scopes them.
//!
//! The server remembers tokens (and the answers) while it runs, for every operation. Creates of
//! resources are also idempotent across restarts through the store, which keeps each
//! resource's token with its content.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use kiln_core::principal::Principal;
use serde_json::Value;

use crate::error::ApiError;
use crate::ops::Op;

/// How many tokens are kept before the oldest half is forgotten.
const KEPT: usize = 100_000;

/// Tokens seen and their answers.
#[derive(Default)]
pub struct Tokens {
    seen: Mutex<HashMap<String, (String, u64, Value)>>,
    counter: std::sync::atomic::AtomicU64,
}

impl Tokens {
    /// Runs `call` unless `input`'s client token was seen: then answers as before, or refuses
    /// a different request.
    pub async fn once<F, Fut>(
        &self,
        principal: &Principal,
        op: Op,
        input: &Value,
        call: F,
    ) -> Result<Value, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Value, ApiError>>,
    {
        let Some(token) = input.get("clientToken").and_then(Value::as_str) else {
            return call().await;
        };
        let key = format!("{}/{}/{token}", principal.account, op.name());
        let mut request = input.clone();
        if let Some(o) = request.as_object_mut() {
            o.remove("clientToken");
        }
        let digest = kiln_core::store::sha256_hex(request.to_string().as_bytes());
        if let Some((seen, _, answer)) = self.seen.lock().ok().and_then(|s| s.get(&key).cloned()) {
            return if seen == digest {
                Ok(answer)
            } else {
                Err(ApiError::new(
                    "IdempotentParameterMismatchException",
                    format!(
                        "clientToken `{token}` was used with another {} request: use a new token for a new request",
                        op.name()
                    ),
                ))
            };
        }
        let answer = call().await?;
        if let Ok(mut s) = self.seen.lock() {
            let n = self
                .counter
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if s.len() >= KEPT {
                let cut = n.saturating_sub(KEPT as u64 / 2);
                s.retain(|_, (_, at, _)| *at >= cut);
            }
            s.insert(key, (digest, n, answer.clone()));
        }
        Ok(answer)
    }
}
