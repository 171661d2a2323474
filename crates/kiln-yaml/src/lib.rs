//! YAML with positions.
//!
//! kiln's users write YAML (component documents, recipes) and deserve errors that point at the
//! line and column of the mistake. Serde-based YAML loaders lose positions once a value is
//! deserialised, so this crate builds its own small node tree from `saphyr-parser`'s event stream:
//! every node keeps its span, scalars keep their text and quoting style (the same `0777` is an
//! octal permission for one field and a number for another), and flow collections keep their
//! source so that the classic unquoted `{{ name }}` mistake can be recognised and explained.
#![deny(missing_docs)]

mod diag;
mod node;
mod parse;
mod reader;

pub use diag::{Diagnostic, Rendered, Severity};
pub use node::{Map, Node, NodeKind, Pos, Scalar, ScalarStyle, Span};
pub use parse::{parse, Parsed, MAX_DEPTH, MAX_NODES};
pub use reader::{did_you_mean, Reader};
