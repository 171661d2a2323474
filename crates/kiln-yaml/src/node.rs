//! The node tree.

use std::fmt;

/// A position in a source text: line and column, both counted from 1, columns in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    /// Line, from 1.
    pub line: u32,
    /// Column in characters, from 1.
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// A range of a source text; `end` is exclusive and may equal `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// First character.
    pub start: Pos,
    /// One past the last character.
    pub end: Pos,
}

impl Span {
    /// A span that covers a single position.
    pub fn at(pos: Pos) -> Self {
        Span {
            start: pos,
            end: pos,
        }
    }
}

/// How a scalar was written; quoting decides whether `123` is a number or a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScalarStyle {
    /// Unquoted.
    Plain,
    /// `'...'`.
    SingleQuoted,
    /// `"..."`.
    DoubleQuoted,
    /// `|` block.
    Literal,
    /// `>` block.
    Folded,
}

/// A scalar's text and style. Its type (null, bool, int, float, string) is resolved on demand
/// with the YAML 1.2 core schema, because the same text can be a number for one field and a
/// string for another (`schemaVersion: 1.0`, `permissions: 0777`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scalar {
    /// The scalar's content, after YAML unescaping and folding.
    pub text: String,
    /// How it was written.
    pub style: ScalarStyle,
}

impl Scalar {
    /// True when the scalar was written without quotes or block indicators.
    pub fn is_plain(&self) -> bool {
        self.style == ScalarStyle::Plain
    }

    /// True when this is a YAML null (`~`, `null`, or nothing at all).
    pub fn is_null(&self) -> bool {
        self.is_plain() && matches!(self.text.as_str(), "" | "~" | "null" | "Null" | "NULL")
    }

    /// The boolean this plain scalar denotes, if any.
    pub fn as_bool(&self) -> Option<bool> {
        if !self.is_plain() {
            return None;
        }
        match self.text.as_str() {
            "true" | "True" | "TRUE" => Some(true),
            "false" | "False" | "FALSE" => Some(false),
            _ => None,
        }
    }

    /// The integer this plain scalar denotes, if any (decimal, `0o` octal or `0x` hex).
    pub fn as_int(&self) -> Option<i64> {
        if !self.is_plain() {
            return None;
        }
        parse_int(&self.text)
    }

    /// The number this plain scalar denotes, if any.
    pub fn as_float(&self) -> Option<f64> {
        if !self.is_plain() {
            return None;
        }
        if let Some(i) = parse_int(&self.text) {
            return Some(i as f64);
        }
        let t = self.text.as_str();
        match t {
            ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Some(f64::INFINITY),
            "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
            ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
            _ => {}
        }
        let looks_numeric = !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
            && t.chars().any(|c| c.is_ascii_digit());
        if looks_numeric {
            t.parse().ok()
        } else {
            None
        }
    }

    /// What a reader would call this scalar's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        if self.is_null() {
            "null"
        } else if self.as_bool().is_some() {
            "a boolean"
        } else if self.as_int().is_some() {
            "an integer"
        } else if self.as_float().is_some() {
            "a number"
        } else {
            "a string"
        }
    }
}

fn parse_int(t: &str) -> Option<i64> {
    let (neg, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let value = if let Some(oct) = digits.strip_prefix("0o") {
        i64::from_str_radix(oct, 8).ok()?
    } else if let Some(hex) = digits.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()?
    } else {
        return None;
    };
    Some(if neg { -value } else { value })
}

/// A mapping, in document order. Keys are nodes so that errors can point at them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Map {
    /// Key/value pairs as written.
    pub entries: Vec<(Node, Node)>,
}

impl Map {
    /// The value for a scalar key written exactly as `key`.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|(_, v)| v)
    }

    /// The key node and value for a scalar key written exactly as `key`.
    pub fn entry(&self, key: &str) -> Option<(&Node, &Node)> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_scalar().is_some_and(|s| s.text == key))
            .map(|(k, v)| (k, v))
    }

    /// Keys that are scalars, with their nodes, in order.
    pub fn keys(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.entries
            .iter()
            .filter_map(|(k, _)| k.as_scalar().map(|s| (s.text.as_str(), k)))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What a node holds.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar (including null).
    Scalar(Scalar),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping.
    Map(Map),
}

/// One YAML node with the place it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The content.
    pub kind: NodeKind,
    /// Where it was written.
    pub span: Span,
    /// For collections written in flow style (`{...}`, `[...]`), the source text as written.
    /// This is how an unquoted `{{ name }}` (which YAML reads as a nested map) is recognised.
    pub flow_source: Option<String>,
}

impl Node {
    /// A scalar node.
    pub fn scalar(text: impl Into<String>, style: ScalarStyle, span: Span) -> Self {
        Node {
            kind: NodeKind::Scalar(Scalar {
                text: text.into(),
                style,
            }),
            span,
            flow_source: None,
        }
    }

    /// A null node at a place.
    pub fn null(span: Span) -> Self {
        Node::scalar("", ScalarStyle::Plain, span)
    }

    /// The scalar, if this is one (null included).
    pub fn as_scalar(&self) -> Option<&Scalar> {
        match &self.kind {
            NodeKind::Scalar(s) => Some(s),
            _ => None,
        }
    }

    /// The mapping, if this is one.
    pub fn as_map(&self) -> Option<&Map> {
        match &self.kind {
            NodeKind::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The sequence, if this is one.
    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.kind {
            NodeKind::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// True for a YAML null.
    pub fn is_null(&self) -> bool {
        self.as_scalar().is_some_and(Scalar::is_null)
    }

    /// A scalar's text when it is not null: what a string field accepts (numbers and booleans
    /// written plainly are read as their text, the way AWSTOE reads `schemaVersion: 1.0`).
    pub fn as_text(&self) -> Option<&str> {
        match self.as_scalar() {
            Some(s) if !s.is_null() => Some(&s.text),
            _ => None,
        }
    }

    /// What a reader would call this node's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar(s) => s.type_name(),
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }

    /// True when this is a flow mapping whose source starts with `{{`: the mark of a template
    /// expression that needed quotes.
    pub fn is_unquoted_template(&self) -> bool {
        self.flow_source
            .as_deref()
            .is_some_and(|s| s.starts_with("{{"))
    }

    /// Plain JSON for this node, resolving scalar types with the core schema.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            NodeKind::Scalar(s) => {
                if s.is_null() {
                    Value::Null
                } else if let Some(b) = s.as_bool() {
                    Value::Bool(b)
                } else if let Some(i) = s.as_int() {
                    Value::from(i)
                } else if let Some(f) = s.as_float().and_then(serde_json::Number::from_f64) {
                    Value::Number(f)
                } else {
                    Value::String(s.text.clone())
                }
            }
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(m) => Value::Object(
                m.entries
                    .iter()
                    .map(|(k, v)| {
                        let key = k
                            .as_scalar()
                            .map(|s| s.text.clone())
                            .unwrap_or_else(|| k.to_json().to_string());
                        (key, v.to_json())
                    })
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(t: &str) -> Scalar {
        Scalar {
            text: t.into(),
            style: ScalarStyle::Plain,
        }
    }

    #[test]
    fn core_schema_resolution() {
        assert!(plain("~").is_null());
        assert!(plain("").is_null());
        assert_eq!(plain("true").as_bool(), Some(true));
        assert_eq!(plain("yes").as_bool(), None);
        assert_eq!(plain("0777").as_int(), Some(777));
        assert_eq!(plain("0o17").as_int(), Some(15));
        assert_eq!(plain("-0x10").as_int(), Some(-16));
        assert_eq!(plain("1.0").as_float(), Some(1.0));
        assert_eq!(plain("1.0").as_int(), None);
        assert_eq!(plain("1.2.3").as_float(), None);
        assert_eq!(plain("abc").type_name(), "a string");
        let quoted = Scalar {
            text: "12".into(),
            style: ScalarStyle::DoubleQuoted,
        };
        assert_eq!(quoted.as_int(), None);
        assert_eq!(quoted.type_name(), "a string");
    }
}
