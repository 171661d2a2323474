//! Reading typed fields out of a node tree while collecting every problem as a diagnostic:
//! the shared machinery of kiln's own YAML files (recipes, configuration).

use crate::{Diagnostic, Map, Node, Span};

/// The closest of `candidates` to `word`, when it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&w, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Collects diagnostics while typed values are read out of nodes.
#[derive(Debug, Default)]
pub struct Reader {
    /// Everything found so far.
    pub diagnostics: Vec<Diagnostic>,
    context: Option<String>,
}

impl Reader {
    /// A reader with no problems yet.
    pub fn new() -> Self {
        Reader::default()
    }

    /// Sets which part of the file later diagnostics are about (`component 2`), or clears it.
    pub fn set_context(&mut self, context: Option<String>) {
        self.context = context;
    }

    /// True when an error was found.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// Records an error.
    pub fn error(&mut self, span: Span, message: impl Into<String>, hint: Option<String>) {
        let mut d = Diagnostic::error(Some(span), message);
        d.hint = hint;
        if let Some(c) = &self.context {
            d = d.with_context(c.clone());
        }
        self.diagnostics.push(d);
    }

    /// Records a warning.
    pub fn warn(&mut self, span: Span, message: impl Into<String>, hint: Option<String>) {
        let mut d = Diagnostic::warning(Some(span), message);
        d.hint = hint;
        if let Some(c) = &self.context {
            d = d.with_context(c.clone());
        }
        self.diagnostics.push(d);
    }

    /// The node as a mapping, or an error saying what `what` should be.
    pub fn map<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n Map> {
        if node.as_map().is_none() {
            self.error(
                node.span,
                format!("{what} must be a mapping, not {}", node.type_name()),
                None,
            );
        }
        node.as_map()
    }

    /// The node as a list, or an error.
    pub fn list<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [Node]> {
        if node.as_seq().is_none() {
            self.error(
                node.span,
                format!("{what} must be a list, not {}", node.type_name()),
                Some("write one `- item` per line".into()),
            );
        }
        node.as_seq()
    }

    /// Errors for keys not in `allowed`, with a "did you mean" hint.
    pub fn known_keys(&mut self, map: &Map, allowed: &[&str], what: &str) {
        for (key, node) in map.keys() {
            if allowed.contains(&key) {
                continue;
            }
            let hint = did_you_mean(key, allowed.iter().copied())
                .map(|s| format!("did you mean `{s}`?"))
                .or_else(|| Some(format!("{what} takes: {}", allowed.join(", "))));
            self.error(node.span, format!("unknown key `{key}` in {what}"), hint);
        }
    }

    /// A string field (numbers and booleans written plainly count, as their text).
    pub fn string(&mut self, map: &Map, key: &str) -> Option<String> {
        let node = map.get(key)?;
        if node.is_null() {
            return None;
        }
        if node.is_unquoted_template() {
            self.error(
                node.span,
                format!("`{key}` holds an unquoted {{{{ ... }}}}"),
                Some("quote it".into()),
            );
            return None;
        }
        match node.as_text() {
            Some(t) => Some(t.to_string()),
            None => {
                self.error(
                    node.span,
                    format!("`{key}` must be a string, not {}", node.type_name()),
                    None,
                );
                None
            }
        }
    }

    /// A string field that must be there.
    pub fn required_string(
        &mut self,
        map: &Map,
        key: &str,
        at: Span,
        what: &str,
    ) -> Option<String> {
        if map.get(key).is_none_or(Node::is_null) {
            self.error(at, format!("{what} needs `{key}`"), None);
            return None;
        }
        self.string(map, key)
    }

    /// A boolean field.
    pub fn boolean(&mut self, map: &Map, key: &str) -> Option<bool> {
        let node = map.get(key)?;
        match node.as_scalar().and_then(|s| s.as_bool()) {
            Some(b) => Some(b),
            None => {
                self.error(node.span, format!("`{key}` must be true or false"), None);
                None
            }
        }
    }

    /// An integer field.
    pub fn integer(&mut self, map: &Map, key: &str) -> Option<i64> {
        let node = map.get(key)?;
        match node.as_scalar().and_then(|s| s.as_int()) {
            Some(i) => Some(i),
            None => {
                self.error(node.span, format!("`{key}` must be an integer"), None);
                None
            }
        }
    }

    /// A list of strings (a single string is accepted as a list of one when `lenient`).
    pub fn strings(&mut self, map: &Map, key: &str, lenient: bool) -> Option<Vec<String>> {
        let node = map.get(key)?;
        if lenient {
            if let Some(t) = node.as_text() {
                return Some(vec![t.to_string()]);
            }
        }
        let items = self.list(node, &format!("`{key}`"))?;
        let mut out = Vec::new();
        for i in items {
            match i.as_text() {
                Some(t) => out.push(t.to_string()),
                None => self.error(
                    i.span,
                    format!("items of `{key}` must be strings, not {}", i.type_name()),
                    None,
                ),
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("parentImag", ["parentImage", "name"]),
            Some("parentImage")
        );
        assert_eq!(did_you_mean("zzz", ["parentImage", "name"]), None);
    }

    #[test]
    fn reads_and_reports() {
        let p = crate::parse("a: 1\nb: [x, y]\nc: {d: 2}\nflag: maybe\nnam: x\n").unwrap();
        let m = p.root.as_map().unwrap();
        let mut r = Reader::new();
        assert_eq!(r.string(m, "a").as_deref(), Some("1"));
        assert_eq!(r.strings(m, "b", false).unwrap(), vec!["x", "y"]);
        assert_eq!(r.string(m, "c"), None);
        assert_eq!(r.boolean(m, "flag"), None);
        r.known_keys(m, &["a", "b", "c", "flag", "name"], "a test");
        let msgs: Vec<String> = r.diagnostics.iter().map(|d| d.to_string()).collect();
        assert!(msgs[0].starts_with("3:4: `c` must be a string"), "{msgs:?}");
        assert!(msgs[1].starts_with("4:7: `flag` must be true or false"));
        assert!(msgs[2].contains("unknown key `nam`") && msgs[2].contains("did you mean `name`?"));
    }
}
