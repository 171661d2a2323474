//! Comparison semantics of conditions (`if` and the Assert action).
//!
//! The user guide's prose says "baseline OP value", but every one of its examples evaluates
//! `value OP baseline` (`stringLessThan: 'b'` with `value: 'a'` is true). kiln follows the
//! examples, since those are what documents in the wild were tested against.

use std::cmp::Ordering;

use crate::document::CompareOp;

/// Reads a number the way AWSTOE does: an integer, a float, or a string of the form
/// `^[-+]?([0-9]+[.])?[0-9]+$`.
pub fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim();
    let body = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    let plain = match frac {
        None => digits(int),
        Some(f) => digits(int) && digits(f),
    };
    if plain {
        return t.parse().ok();
    }
    // Floats written in exponent form by YAML (1e3) are numbers too.
    t.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// Evaluates a string or number comparison of `value` against the operator's `baseline`.
/// File and binary checks are not handled here (they need the instance).
pub fn compare(op: CompareOp, baseline: &str, value: &str) -> bool {
    use CompareOp::*;
    let string_order = || value.to_lowercase().cmp(&baseline.to_lowercase());
    let number_order = || -> Option<Ordering> {
        let v = parse_number(value)?;
        let b = parse_number(baseline)?;
        v.partial_cmp(&b)
    };
    match op {
        StringIsEmpty => baseline.is_empty(),
        StringIsWhitespace => !baseline.is_empty() && baseline.chars().all(char::is_whitespace),
        StringEquals => string_order() == Ordering::Equal,
        StringLessThan => string_order() == Ordering::Less,
        StringLessThanEquals => string_order() != Ordering::Greater,
        StringGreaterThan => string_order() == Ordering::Greater,
        StringGreaterThanEquals => string_order() != Ordering::Less,
        PatternMatches => regex::Regex::new(&format!("(?i){baseline}"))
            .map(|r| r.is_match(value))
            .unwrap_or(false),
        NumberEquals => number_order() == Some(Ordering::Equal),
        NumberLessThan => number_order() == Some(Ordering::Less),
        NumberLessThanEquals => matches!(number_order(), Some(Ordering::Less | Ordering::Equal)),
        NumberGreaterThan => number_order() == Some(Ordering::Greater),
        NumberGreaterThanEquals => {
            matches!(number_order(), Some(Ordering::Greater | Ordering::Equal))
        }
        BinaryExists | FileExists | FolderExists | FileMD5Equals | FileSHA1Equals
        | FileSHA256Equals | FileSHA512Equals => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CompareOp::*;

    /// The examples of the user guide's comparison-operator page.
    #[test]
    fn guide_examples() {
        assert!(compare(StringIsEmpty, "", ""));
        assert!(!compare(StringIsEmpty, " ", ""));
        assert!(compare(StringIsWhitespace, "   ", ""));
        assert!(!compare(StringIsWhitespace, "", ""));
        assert!(!compare(StringIsWhitespace, " Hello?", ""));
        assert!(compare(
            StringEquals,
            "Testing, testing...",
            "testing, TESTING..."
        ));
        assert!(!compare(
            StringEquals,
            "Testing, testing...",
            "   Testing, testing..."
        ));
        assert!(compare(StringLessThan, "b", "a"));
        assert!(compare(StringLessThan, "a", "0"));
        assert!(!compare(StringLessThan, "0", "a"));
        assert!(compare(StringLessThanEquals, "b", "a"));
        assert!(compare(StringGreaterThan, "a", "b"));
        assert!(compare(StringGreaterThan, "0", "a"));
        assert!(compare(PatternMatches, "^[a-z]+$", "ThisIsValue"));
        assert!(compare(PatternMatches, "^[0-9]+$", "1234567890"));
        assert!(!compare(PatternMatches, "^[0-9]+$", "12a"));
        assert!(compare(NumberEquals, "1", "1"));
        assert!(compare(NumberEquals, "5.0", "5.0"));
        assert!(compare(NumberEquals, "-1", "-1"));
        assert!(compare(NumberEquals, "1", "1.0"));
        assert!(compare(NumberLessThan, "2", "1"));
        assert!(!compare(NumberLessThan, "2", "2"));
        assert!(!compare(NumberLessThanEquals, "2", "2.1"));
        assert!(compare(NumberGreaterThan, "1", "2"));
        assert!(!compare(NumberGreaterThan, "1", "1"));
        assert!(!compare(NumberGreaterThanEquals, "1", "0.8"));
        // A value that is not a number makes numeric comparisons false.
        assert!(!compare(NumberEquals, "10", "a10"));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("1.0"), Some(1.0));
        assert_eq!(parse_number("-3"), Some(-3.0));
        assert_eq!(parse_number("a10"), None);
        assert_eq!(parse_number("1.2.3"), None);
        assert_eq!(parse_number("1e3"), Some(1000.0));
    }
}
