//! Query strings and path segments, percent-decoded.

/// The `key=value` pairs of a query string, decoded (`+` is a space).
pub fn pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(&k.replace('+', " ")), decode(&v.replace('+', " ")))
        })
        .collect()
}

/// Percent-decodes text; a `%` not followed by two hex digits stays as it is.
pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_and_lists_decode() {
        assert_eq!(
            decode("arn%3Akiln%3Aimagebuilder%3Alocal%3A123456789012%3Acomponent%2Fa%2F1.0.0%2F1"),
            "arn:kiln:imagebuilder:local:123456789012:component/a/1.0.0/1"
        );
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%4"), "%4");
        assert_eq!(
            pairs("tagKeys=a&tagKeys=b%20c&x"),
            vec![
                ("tagKeys".into(), "a".into()),
                ("tagKeys".into(), "b c".into()),
                ("x".into(), String::new())
            ]
        );
    }
}
