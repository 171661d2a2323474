//! Resource policies and the grants they make: which other accounts may read a row.
//!
//! The policy document is kept as its owner wrote it (Get*Policy answers it back); the grants
//! are the accounts it names, kept apart so that "what is shared with account X" is a query
//! ([`crate::Filter::shared_with`]) rather than a scan of every policy.

/// A row's resource policy: the document and the accounts it lets read the row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    /// The policy as its owner gave it (JSON text).
    pub document: String,
    /// The 12-digit account ids it grants, without duplicates (order is not kept).
    pub grantees: Vec<String>,
}
