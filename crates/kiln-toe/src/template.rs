//! `{{ ... }}` references: parameters, constants, loop variables, chaining, environment and
//! context variables.
//!
//! Only text between `{{` and `}}` that has the shape of a reference is a reference; anything
//! else (a Go template `{{.State}}` in a shell script, say) is left exactly as written.
//! Expansion is a single pass: a substituted value is never scanned again.

use std::ops::Range;

/// Which side of a step a chaining reference reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `inputs`: the step's resolved inputs.
    Inputs,
    /// `outputs`: what the step produced.
    Outputs,
}

/// Which loop variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopField {
    /// Zero-based position.
    Index,
    /// Current value.
    Value,
}

/// A reference found in text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `{{ Name }}`: a parameter or constant.
    Variable(String),
    /// `{{ loop.value }}`, `{{ myLoop.index }}`.
    Loop {
        /// `None` for `loop`, otherwise the loop's name.
        name: Option<String>,
        /// index or value.
        field: LoopField,
    },
    /// `{{ phase.Step.outputs.stdout }}`, `{{ build.Download.inputs[0].destination }}`.
    Chain {
        /// Phase name.
        phase: String,
        /// Step name.
        step: String,
        /// inputs or outputs.
        side: Side,
        /// Position in the list (0 when not given).
        index: Option<usize>,
        /// Key inside the item; the whole item when `None`.
        key: Option<String>,
    },
    /// `{{ env:NAME }}`.
    Env(String),
    /// `{{ context:key }}`.
    Context(String),
    /// `{{ aws:ssm:... }}` and `{{ aws:imds:... }}`: AWS services kiln does not have.
    Aws(String),
}

/// The context variables kiln provides.
pub const CONTEXT_KEYS: &[&str] = &[
    "executionId",
    "osPlatform",
    "osName",
    "osVersion",
    "date",
    "dateTime",
    "uuid",
    "hostname",
    "phase",
    "step",
];

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Classifies the text inside the braces (already trimmed). `None`: not a reference.
pub fn classify(expr: &str) -> Option<Reference> {
    if let Some(name) = expr.strip_prefix("env:") {
        return (!name.is_empty()).then(|| Reference::Env(name.to_string()));
    }
    if let Some(key) = expr.strip_prefix("context:") {
        return is_ident(key).then(|| Reference::Context(key.to_string()));
    }
    if expr.starts_with("aws:") {
        return Some(Reference::Aws(expr.to_string()));
    }
    let parts: Vec<&str> = expr.split('.').map(str::trim).collect();
    match parts.as_slice() {
        [name] if is_ident(name) => Some(Reference::Variable(name.to_string())),
        [name, field] if is_ident(name) && matches!(*field, "index" | "value") => {
            Some(Reference::Loop {
                name: (*name != "loop").then(|| name.to_string()),
                field: if *field == "index" {
                    LoopField::Index
                } else {
                    LoopField::Value
                },
            })
        }
        [phase, step, side, rest @ ..]
            if is_ident(phase) && !step.is_empty() && rest.len() <= 1 =>
        {
            let (side_name, index) = match side.split_once('[') {
                Some((s, idx)) => (s, Some(idx.strip_suffix(']')?.trim().parse().ok()?)),
                None => (*side, None),
            };
            let side = match side_name {
                "inputs" => Side::Inputs,
                "outputs" => Side::Outputs,
                _ => return None,
            };
            let key = match rest.first() {
                Some(k) if is_ident(k) => Some(k.to_string()),
                Some(_) => return None,
                None => None,
            };
            Some(Reference::Chain {
                phase: phase.to_string(),
                step: step.to_string(),
                side,
                index,
                key,
            })
        }
        _ => None,
    }
}

/// A reference with where it sits in the text (byte range of the whole `{{ ... }}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Byte range of `{{ ... }}` in the text.
    pub range: Range<usize>,
    /// The text inside the braces, trimmed.
    pub expr: String,
    /// What it refers to.
    pub reference: Reference,
}

/// Every reference in a text, in order.
pub fn scan(text: &str) -> Vec<Found> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(open) = text[pos..].find("{{") {
        let start = pos + open;
        let Some(close) = text[start + 2..].find("}}") else {
            break;
        };
        let end = start + 2 + close + 2;
        let inner = text[start + 2..end - 2].trim();
        match classify(inner) {
            Some(reference) => {
                out.push(Found {
                    range: start..end,
                    expr: inner.to_string(),
                    reference,
                });
                pos = end;
            }
            // Not a reference: step one character so `{{{ x }}}` still finds `{{ x }}`.
            None => pos = start + 1,
        }
    }
    out
}

/// Replaces references with what `resolve` returns; `Ok(None)` leaves a reference as written.
pub fn expand<E>(
    text: &str,
    mut resolve: impl FnMut(&Reference) -> Result<Option<String>, E>,
) -> Result<String, E> {
    let found = scan(text);
    if found.is_empty() {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for f in found {
        out.push_str(&text[last..f.range.start]);
        match resolve(&f.reference)? {
            Some(v) => out.push_str(&v),
            None => out.push_str(&text[f.range.clone()]),
        }
        last = f.range.end;
    }
    out.push_str(&text[last..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify("Hosts"), Some(Reference::Variable("Hosts".into())));
        assert_eq!(
            classify("loop.value"),
            Some(Reference::Loop {
                name: None,
                field: LoopField::Value
            })
        );
        assert_eq!(
            classify("myForLoop.index"),
            Some(Reference::Loop {
                name: Some("myForLoop".into()),
                field: LoopField::Index
            })
        );
        assert_eq!(
            classify("build.Download.inputs[0].destination"),
            Some(Reference::Chain {
                phase: "build".into(),
                step: "Download".into(),
                side: Side::Inputs,
                index: Some(0),
                key: Some("destination".into()),
            })
        );
        assert_eq!(
            classify("test.Step.outputs.stdout"),
            Some(Reference::Chain {
                phase: "test".into(),
                step: "Step".into(),
                side: Side::Outputs,
                index: None,
                key: Some("stdout".into()),
            })
        );
        assert_eq!(classify(".State.Running"), None);
        assert_eq!(classify("a b"), None);
        assert_eq!(classify("env:HOME"), Some(Reference::Env("HOME".into())));
        assert_eq!(
            classify("context:executionId"),
            Some(Reference::Context("executionId".into()))
        );
    }

    #[test]
    fn expansion_is_single_pass_and_keeps_unknowns() {
        let out: Result<String, ()> = expand("a {{ X }} b {{Y}} c {{.Go}} d {{ Z }}", |r| {
            Ok(match r {
                Reference::Variable(v) if v == "X" => Some("{{ Y }}".to_string()),
                Reference::Variable(v) if v == "Y" => Some("y".to_string()),
                _ => None,
            })
        });
        assert_eq!(out.unwrap(), "a {{ Y }} b y c {{.Go}} d {{ Z }}");
    }

    #[test]
    fn scan_positions() {
        let f = scan("x{{{ A }}}y");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].expr, "A");
        assert_eq!(&"x{{{ A }}}y"[f[0].range.clone()], "{{ A }}");
    }
}
