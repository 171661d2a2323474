//! Building the node tree from the YAML event stream.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle as PStyle, Span as PSpan};

use crate::diag::Diagnostic;
use crate::node::{Map, Node, NodeKind, Pos, ScalarStyle, Span};

/// Deepest nesting accepted; deeper input is rejected rather than risking the stack of every
/// recursive consumer.
pub const MAX_DEPTH: usize = 128;

/// Most nodes a document may expand to through aliases ("billion laughs" guard).
pub const MAX_NODES: usize = 1_000_000;

/// A parsed document: its root (null when the text is empty) and the problems found on the way
/// that did not stop parsing (duplicate keys).
#[derive(Debug)]
pub struct Parsed {
    /// The root node.
    pub root: Node,
    /// Problems that left the tree usable.
    pub diagnostics: Vec<Diagnostic>,
}

/// Parses one YAML document. A syntax error stops parsing and is returned alone, since what
/// follows it cannot be trusted.
pub fn parse(src: &str) -> Result<Parsed, Diagnostic> {
    Builder::new(src).run()
}

enum Frame {
    Seq {
        start: Pos,
        start_idx: usize,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        start: Pos,
        start_idx: usize,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        pending_key: Option<Node>,
    },
}

struct Builder<'s> {
    src: &'s str,
    /// Byte offset of every character, so that saphyr's character indices can slice `src`.
    char_offsets: Option<Vec<usize>>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    documents: usize,
    nodes: usize,
    diagnostics: Vec<Diagnostic>,
}

fn pos(m: &saphyr_parser::Marker) -> Pos {
    Pos {
        line: u32::try_from(m.line()).unwrap_or(u32::MAX),
        col: u32::try_from(m.col() + 1).unwrap_or(u32::MAX),
    }
}

fn span(s: &PSpan) -> Span {
    Span {
        start: pos(&s.start),
        end: pos(&s.end),
    }
}

fn count_nodes(n: &Node) -> usize {
    match &n.kind {
        NodeKind::Scalar(_) => 1,
        NodeKind::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        NodeKind::Map(m) => {
            1 + m
                .entries
                .iter()
                .map(|(k, v)| count_nodes(k) + count_nodes(v))
                .sum::<usize>()
        }
    }
}

impl<'s> Builder<'s> {
    fn new(src: &'s str) -> Self {
        Builder {
            src,
            char_offsets: None,
            stack: Vec::new(),
            anchors: HashMap::new(),
            root: None,
            documents: 0,
            nodes: 0,
            diagnostics: Vec::new(),
        }
    }

    fn slice_chars(&mut self, start: usize, end: usize) -> String {
        let src = self.src;
        let offsets = self
            .char_offsets
            .get_or_insert_with(|| src.char_indices().map(|(i, _)| i).collect());
        let b = |i: usize| offsets.get(i).copied().unwrap_or(src.len());
        let (s, e) = (b(start), b(end.max(start)));
        src.get(s..e).unwrap_or_default().to_string()
    }

    fn run(mut self) -> Result<Parsed, Diagnostic> {
        let mut parser = Parser::new_from_str(self.src);
        for item in &mut parser {
            let (event, sp) = item.map_err(|e| {
                Diagnostic::error(
                    Some(Span::at(pos(e.marker()))),
                    format!("invalid YAML: {}", e.info()),
                )
                .with_hint("check the indentation and quoting near this place")
            })?;
            self.event(event, sp)?;
        }
        let root = self
            .root
            .unwrap_or_else(|| Node::null(Span::at(Pos { line: 1, col: 1 })));
        Ok(Parsed {
            root,
            diagnostics: self.diagnostics,
        })
    }

    fn event(&mut self, event: Event<'_>, sp: PSpan) -> Result<(), Diagnostic> {
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(Diagnostic::error(
                        Some(span(&sp)),
                        "a second YAML document (`---`) in the same file",
                    )
                    .with_hint("put one component document per file"));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let forced_string = tag
                    .as_ref()
                    .is_some_and(|t| t.is_yaml_core_schema() && t.suffix == "str");
                let style = match style {
                    _ if forced_string => ScalarStyle::DoubleQuoted,
                    PStyle::Plain => ScalarStyle::Plain,
                    PStyle::SingleQuoted => ScalarStyle::SingleQuoted,
                    PStyle::DoubleQuoted => ScalarStyle::DoubleQuoted,
                    PStyle::Literal => ScalarStyle::Literal,
                    PStyle::Folded => ScalarStyle::Folded,
                };
                let node = Node::scalar(text.into_owned(), style, span(&sp));
                self.finish(node, anchor)?;
            }
            Event::SequenceStart(anchor, _) => {
                self.push_check(&sp)?;
                self.stack.push(Frame::Seq {
                    start: pos(&sp.start),
                    start_idx: sp.start.index(),
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, _) => {
                self.push_check(&sp)?;
                self.stack.push(Frame::Map {
                    start: pos(&sp.start),
                    start_idx: sp.start.index(),
                    anchor,
                    entries: Vec::new(),
                    pending_key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = self.stack.pop() else {
                    return Ok(());
                };
                let end = pos(&sp.end);
                let end_idx = sp.end.index();
                let (kind, start, start_idx, anchor) = match frame {
                    Frame::Seq {
                        start,
                        start_idx,
                        anchor,
                        items,
                    } => (NodeKind::Seq(items), start, start_idx, anchor),
                    Frame::Map {
                        start,
                        start_idx,
                        anchor,
                        entries,
                        ..
                    } => (NodeKind::Map(Map { entries }), start, start_idx, anchor),
                };
                let is_flow = matches!(self.src_char(start_idx), Some('{') | Some('['));
                let flow_source = is_flow.then(|| self.slice_chars(start_idx, end_idx));
                let node = Node {
                    kind,
                    span: Span { start, end },
                    flow_source,
                };
                self.finish(node, anchor)?;
            }
            Event::Alias(id) => {
                let Some(node) = self.anchors.get(&id).cloned() else {
                    return Err(Diagnostic::error(
                        Some(span(&sp)),
                        "alias to an unknown anchor",
                    ));
                };
                self.nodes += count_nodes(&node);
                if self.nodes > MAX_NODES {
                    return Err(Diagnostic::error(
                        Some(span(&sp)),
                        format!("aliases expand this document past {MAX_NODES} nodes"),
                    ));
                }
                self.attach(node);
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn src_char(&mut self, idx: usize) -> Option<char> {
        self.slice_chars(idx, idx + 1).chars().next()
    }

    fn push_check(&mut self, sp: &PSpan) -> Result<(), Diagnostic> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(Diagnostic::error(
                Some(span(sp)),
                format!("nesting deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), Diagnostic> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(Diagnostic::error(
                Some(node.span),
                format!("document has more than {MAX_NODES} nodes"),
            ));
        }
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        self.attach(node);
        Ok(())
    }

    fn attach(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => {
                    let duplicate = key.as_scalar().and_then(|k| {
                        entries
                            .iter()
                            .find(|(prev, _)| prev.as_scalar().is_some_and(|p| p.text == k.text))
                            .map(|(prev, _)| (k.text.clone(), prev.span.start))
                    });
                    if let Some((name, first)) = duplicate {
                        self.diagnostics.push(
                            Diagnostic::error(
                                Some(key.span),
                                format!("duplicate key `{name}` (first written at {first})"),
                            )
                            .with_hint("remove one of them; YAML keeps only one"),
                        );
                    } else {
                        entries.push((key, node));
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let p = parse("a: 1\nb:\n  - x\n  - 'y'\n").unwrap();
        let m = p.root.as_map().unwrap();
        let b = m.get("b").unwrap().as_seq().unwrap();
        assert_eq!(b[0].span.start, Pos { line: 3, col: 5 });
        assert_eq!(b[1].as_scalar().unwrap().style, ScalarStyle::SingleQuoted);
        assert_eq!(m.entry("a").unwrap().0.span.start, Pos { line: 1, col: 1 });
    }

    #[test]
    fn unquoted_template_is_recognised() {
        let p = parse("value: {{ Name }}\nother: {a: 1}\n").unwrap();
        let m = p.root.as_map().unwrap();
        assert!(m.get("value").unwrap().is_unquoted_template());
        assert!(!m.get("other").unwrap().is_unquoted_template());
        assert_eq!(
            m.get("other").unwrap().flow_source.as_deref(),
            Some("{a: 1}")
        );
    }

    #[test]
    fn duplicate_keys_are_reported_not_fatal() {
        let p = parse("a: 1\nb: 2\na: 3\n").unwrap();
        assert_eq!(p.diagnostics.len(), 1);
        assert!(p.diagnostics[0].message.contains("duplicate key `a`"));
        assert_eq!(p.root.as_map().unwrap().len(), 2);
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse("a: 'unterminated\nb: 2\n").unwrap_err();
        assert!(e.span.is_some());
        assert!(e.message.starts_with("invalid YAML"));
    }

    #[test]
    fn aliases_are_resolved_and_bounded() {
        let p = parse("a: &x [1, 2]\nb: *x\n").unwrap();
        assert_eq!(
            p.root
                .as_map()
                .unwrap()
                .get("b")
                .unwrap()
                .as_seq()
                .unwrap()
                .len(),
            2
        );
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8u8 {
            let prev = (b'a' + i) as char;
            let next = (b'a' + i + 1) as char;
            bomb.push_str(&format!(
                "{next}: &{next} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        assert!(parse(&bomb).is_err());
    }

    #[test]
    fn empty_and_multi_document() {
        assert!(parse("").unwrap().root.is_null());
        assert!(parse("# only a comment\n").unwrap().root.is_null());
        assert!(parse("a: 1\n---\nb: 2\n").is_err());
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let deep = "[".repeat(MAX_DEPTH + 5) + &"]".repeat(MAX_DEPTH + 5);
        assert!(parse(&deep).is_err());
    }
}
