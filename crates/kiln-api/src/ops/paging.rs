//! `maxResults` and `nextToken`: a token names the last item of its page (and its position,
//! for when that item is gone), so paging always advances and never repeats an item.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

use crate::error::ApiError;

/// Items per page when the request does not say.
pub const DEFAULT_PAGE: usize = 25;

/// One page of a list.
#[derive(Debug)]
pub struct Page<T> {
    /// Its items.
    pub items: Vec<T>,
    /// The token of the next page, when there is one.
    pub next: Option<String>,
}

/// The page of `items` (in their list order, each with a stable key) that `input`'s
/// `maxResults` and `nextToken` ask for.
pub fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> &str,
    input: &Value,
) -> Result<Page<T>, ApiError> {
    let max = input
        .get("maxResults")
        .and_then(Value::as_u64)
        .map(|n| n.clamp(1, 100) as usize)
        .unwrap_or(DEFAULT_PAGE);
    let start = match input.get("nextToken").and_then(Value::as_str) {
        None => 0,
        Some(token) => {
            let (offset, last) = decode(token).ok_or_else(|| {
                ApiError::new(
                    "InvalidPaginationTokenException",
                    "nextToken: not a token this list gave; start again without it",
                )
            })?;
            match items.iter().position(|i| key(i) == last) {
                Some(p) => p + 1,
                // The item itself was deleted: what followed it moved up by one.
                None => offset.saturating_sub(1).min(items.len()),
            }
        }
    };
    let total = items.len();
    let end = (start + max).min(total);
    let mut items: Vec<T> = items.into_iter().skip(start).take(end - start).collect();
    let next = if end < total {
        items.last().map(|l| encode(end, key(l)))
    } else {
        None
    };
    items.shrink_to_fit();
    Ok(Page { items, next })
}

fn encode(offset: usize, last: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{offset}\n{last}"))
}

fn decode(token: &str) -> Option<(usize, String)> {
    let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (offset, last) = text.split_once('\n')?;
    Some((offset.parse().ok()?, last.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pages_cover_every_item_once_and_advance_past_deletions() {
        let items: Vec<String> = (0..30).map(|i| format!("a{i:02}")).collect();
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let input = match &token {
                Some(t) => json!({"maxResults": 7, "nextToken": t}),
                None => json!({"maxResults": 7}),
            };
            let p = page(items.clone(), |s| s.as_str(), &input).unwrap();
            seen.extend(p.items);
            match p.next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(seen, items);
        // The last item of a page deleted before the next page is asked for: its position says
        // where to go on.
        let first = page(items.clone(), |s| s.as_str(), &json!({"maxResults": 5})).unwrap();
        let rest: Vec<String> = items.iter().filter(|s| *s != "a04").cloned().collect();
        let second = page(
            rest,
            |s| s.as_str(),
            &json!({"maxResults": 5, "nextToken": first.next.unwrap()}),
        )
        .unwrap();
        assert_eq!(second.items[0], "a05");
        assert!(page(items, |s| s.as_str(), &json!({"nextToken": "%%"})).is_err());
    }
}
