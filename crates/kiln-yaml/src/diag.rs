//! Diagnostics: problems that point at a place in a source file.

use std::fmt;

use crate::node::Span;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth knowing; the document is still usable.
    Warning,
    /// The document cannot be used until this is fixed.
    Error,
}

/// One problem, with where it is, what is wrong and what to do about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Where; `None` for problems of the whole file.
    pub span: Option<Span>,
    /// What is wrong (the rule that is broken).
    pub message: String,
    /// Which part of the document: `phase "build", step "Install"`.
    pub context: Option<String>,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// An error.
    pub fn error(span: Option<Span>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            span,
            message: message.into(),
            context: None,
            hint: None,
        }
    }

    /// A warning.
    pub fn warning(span: Option<Span>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(span, message)
        }
    }

    /// Adds what to do about it.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds which part of the document it is in, unless already known.
    pub fn with_context(mut self, context: impl Into<String>) -> Self {
        if self.context.is_none() {
            self.context = Some(context.into());
        }
        self
    }

    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Renders this diagnostic for a file, with the offending source line underlined.
    pub fn render<'a>(&'a self, file: &'a str, src: &'a str) -> Rendered<'a> {
        Rendered {
            diag: self,
            file,
            src,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(span) = self.span {
            write!(f, "{}: ", span.start)?;
        }
        if let Some(ctx) = &self.context {
            write!(f, "{ctx}: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// A diagnostic shown against its source: `FILE:LINE:COL: error: ...`, the line, a caret, a hint.
pub struct Rendered<'a> {
    diag: &'a Diagnostic,
    file: &'a str,
    src: &'a str,
}

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.diag;
        let level = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match d.span {
            Some(span) => write!(f, "{}:{}: {level}: ", self.file, span.start)?,
            None => write!(f, "{}: {level}: ", self.file)?,
        }
        if let Some(ctx) = &d.context {
            write!(f, "{ctx}: ")?;
        }
        writeln!(f, "{}", d.message)?;
        if let Some(span) = d.span {
            let line_no = span.start.line as usize;
            if let Some(line) = self.src.lines().nth(line_no.saturating_sub(1)) {
                let gutter = line_no.to_string().len();
                let line = line.replace('\t', " ");
                writeln!(f, " {line_no} | {line}")?;
                let start = span.start.col.saturating_sub(1) as usize;
                let width = if span.end.line == span.start.line && span.end.col > span.start.col {
                    (span.end.col - span.start.col) as usize
                } else {
                    line.chars().count().saturating_sub(start).max(1)
                };
                writeln!(
                    f,
                    " {:gutter$} | {}{}",
                    "",
                    " ".repeat(start),
                    "^".repeat(width.min(120))
                )?;
            }
        }
        if let Some(hint) = &d.hint {
            writeln!(f, "  hint: {hint}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Pos;

    #[test]
    fn renders_file_line_col_and_caret() {
        let src = "a: 1\nbad: value\n";
        let d = Diagnostic::error(
            Some(Span {
                start: Pos { line: 2, col: 6 },
                end: Pos { line: 2, col: 11 },
            }),
            "bad value",
        )
        .with_context("step \"X\"")
        .with_hint("fix it");
        let out = d.render("doc.yaml", src).to_string();
        assert!(
            out.starts_with("doc.yaml:2:6: error: step \"X\": bad value\n"),
            "{out}"
        );
        assert!(out.contains(" 2 | bad: value\n"));
        assert!(out.contains("   |      ^^^^^\n"), "{out}");
        assert!(out.contains("hint: fix it"));
    }
}
