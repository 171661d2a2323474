//! Reading the operations' JSON answers into what pages show.

use serde_json::Value;

/// The string at `key` of an object, or empty.
pub fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

/// The array at `key`, or none.
pub fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Whose a resource or image is, as the lists say it: `you`, `kiln (built in)`, or
/// `shared by ACCOUNT` (the account in its ARN against the session's `own`).
pub fn owner(arn: &str, own: &str) -> String {
    match arn.split(':').nth(4).unwrap_or("") {
        a if a == own => "you".into(),
        "aws" | "kiln" => "kiln (built in)".into(),
        a => format!("shared by {a}"),
    }
}

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as nested definition lists, every string escaped; ARNs of kinds the console
/// has pages for become links.
pub fn to_html(v: &Value) -> String {
    let mut out = String::new();
    write(&mut out, v, 0);
    out
}

fn write(out: &mut String, v: &Value, depth: usize) {
    match v {
        Value::Object(o) if depth < 8 => {
            if o.is_empty() {
                out.push_str("<span>(none)</span>");
                return;
            }
            out.push_str("<dl class=\"kv\">");
            for (k, v) in o {
                out.push_str("<dt>");
                out.push_str(&escape(k));
                out.push_str("</dt><dd>");
                write(out, v, depth + 1);
                out.push_str("</dd>");
            }
            out.push_str("</dl>");
        }
        Value::Array(a) if depth < 8 => {
            if a.is_empty() {
                out.push_str("<span>(none)</span>");
                return;
            }
            out.push_str("<ol>");
            for v in a {
                out.push_str("<li>");
                write(out, v, depth + 1);
                out.push_str("</li>");
            }
            out.push_str("</ol>");
        }
        Value::String(s) => match link(s) {
            Some(href) => {
                out.push_str(&format!("<a href=\"{}\">{}</a>", escape(&href), escape(s)));
            }
            None if s.contains('\n') => {
                out.push_str(&format!("<pre>{}</pre>", escape(s)));
            }
            None => out.push_str(&escape(s)),
        },
        other => out.push_str(&escape(&other.to_string())),
    }
}

/// The console page of a kiln ARN.
pub fn link(arn: &str) -> Option<String> {
    let kind = arn
        .strip_prefix("arn:")?
        .split(':')
        .nth(4)?
        .split('/')
        .next()?;
    let page = match kind {
        "image-pipeline" => "pipeline",
        "image" => "image",
        "component" => "component",
        "image-recipe" => "recipe",
        "container-recipe" => "container-recipe",
        "infrastructure-configuration" => "infrastructure-configuration",
        "distribution-configuration" => "distribution-configuration",
        "lifecycle-policy" => "lifecycle-policy",
        _ => return None,
    };
    Some(format!("/console/{page}?arn={}", super::encode(arn)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_escaped_and_arns_linked() {
        let h = to_html(&json!({
            "name": "<script>",
            "arn": "arn:kiln:imagebuilder:local:123456789012:image-pipeline/p",
            "list": [1, "a&b"],
        }));
        assert!(h.contains("&lt;script&gt;"), "{h}");
        assert!(!h.contains("<script>"), "{h}");
        assert!(h.contains("href=\"/console/pipeline?arn=arn%3Akiln"), "{h}");
        assert!(h.contains("a&amp;b"), "{h}");
    }
}
