//! ARNs, and references to resources by ARN or name.

use kiln_store::{Filter, Kind};

use super::{kind_noun, versioned};
use crate::principal::Principal;
use crate::version::{Version, VersionFilter};

/// A resource's ARN in a principal's account: names are lower-cased, as Image Builder does.
pub fn arn(
    principal: &Principal,
    kind: Kind,
    name: &str,
    version: Option<&Version>,
    build: Option<u32>,
) -> String {
    let mut a = format!(
        "{}{}/{}",
        principal.arn_prefix(),
        kind.as_str(),
        name.to_ascii_lowercase()
    );
    if let Some(v) = version {
        a.push_str(&format!("/{v}"));
    }
    if let Some(b) = build {
        a.push_str(&format!("/{b}"));
    }
    a
}

/// A reference to resources: an ARN, or `NAME[/VERSION[/BUILD]]` (VERSION may use `x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The kind (from the ARN, or the command).
    pub kind: Kind,
    /// The account an ARN names; `None` for a plain name (the caller's account).
    pub account: Option<String>,
    /// The name.
    pub name: String,
    /// A version filter.
    pub version: Option<VersionFilter>,
    /// A build number.
    pub build: Option<u32>,
}

impl Reference {
    /// A reference to a kind by name in the caller's account.
    pub fn named(kind: Kind, name: impl Into<String>) -> Reference {
        Reference {
            kind,
            account: None,
            name: name.into(),
            version: None,
            build: None,
        }
    }

    /// Parses a reference to one of `kinds` (the first is assumed for a plain name).
    pub fn parse(text: &str, kinds: &[Kind]) -> Result<Reference, String> {
        let expected = || {
            kinds
                .iter()
                .map(|k| kind_noun(*k))
                .collect::<Vec<_>>()
                .join(" or ")
        };
        let (kind, account, rest) = if let Some(rest) = text.strip_prefix("arn:") {
            let parts: Vec<&str> = rest.splitn(5, ':').collect();
            let [partition, service, _region, account, resource] = parts.as_slice() else {
                return Err(format!(
                    "`{text}` is not an ARN (arn:kiln:imagebuilder:REGION:ACCOUNT:TYPE/NAME/...)"
                ));
            };
            // AWS's managed components keep AWS's ARNs (`arn:aws:...:aws:component/...`).
            let managed =
                partition.starts_with("aws") && *account == crate::managed::MANAGED_ACCOUNT;
            if !(*partition == "kiln" || managed) || *service != "imagebuilder" {
                return Err(format!(
                    "`{text}` is not a kiln ARN: kiln keeps its own resources; create it in kiln \
                     (kiln component create, ...) and use the ARN kiln prints"
                ));
            }
            let (ty, rest) = resource
                .split_once('/')
                .ok_or_else(|| format!("`{text}` has no TYPE/NAME part"))?;
            let kind: Kind = ty
                .parse()
                .map_err(|_| format!("`{text}`: unknown resource type `{ty}`"))?;
            if !kinds.contains(&kind) {
                return Err(format!(
                    "`{text}` names a {}, not a {}",
                    kind_noun(kind),
                    expected()
                ));
            }
            (kind, Some(account.to_string()), rest)
        } else {
            let first = *kinds.first().ok_or("no kind")?;
            (first, None, text)
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let bad = || {
            format!(
                "`{text}`: name a {} as an ARN or NAME{}",
                expected(),
                if versioned(kind) {
                    "[/VERSION[/BUILD]]"
                } else {
                    ""
                }
            )
        };
        let version = |v: &str| v.parse::<VersionFilter>().map_err(|e| e.to_string());
        let (name, version, build) = match parts.as_slice() {
            [n] if !n.is_empty() => (*n, None, None),
            [n, v] if versioned(kind) && !n.is_empty() => (*n, Some(version(v)?), None),
            [n, v, b] if versioned(kind) && !n.is_empty() => {
                (*n, Some(version(v)?), Some(b.parse().map_err(|_| bad())?))
            }
            _ => return Err(bad()),
        };
        Ok(Reference {
            kind,
            account,
            name: name.to_string(),
            version,
            build,
        })
    }

    /// Whether it names `principal`'s own account (what the principal may change): an ARN of
    /// another account names nothing it owns, and at most what is shared with it.
    pub fn visible_to(&self, principal: &Principal) -> bool {
        self.account
            .as_deref()
            .is_none_or(|a| a == principal.account)
    }

    /// The store filter selecting what it names that `principal` can see, newest first: in
    /// the principal's account, or, for an ARN of another account, what that account shares
    /// with the principal's.
    pub fn filter(&self, principal: &Principal) -> Filter {
        match self.account.as_deref().filter(|a| *a != principal.account) {
            Some(owner) => super::sharing::shared_filter(self, owner, &principal.account),
            None => Filter {
                kind: Some(self.kind),
                name: Some(self.name.clone()),
                version: self.version.map(|v| v.nodes()).unwrap_or([None; 3]),
                build: self.build,
                arn_prefix: Some(principal.arn_prefix()),
                ..Filter::default()
            },
        }
    }

    /// As an ARN in the account it names (`principal`'s for a plain name), or the managed
    /// account's (with `x` where the filter has it).
    pub fn to_arn(&self, principal: &Principal) -> String {
        let prefix = if crate::managed::is_managed(self) {
            format!(
                "arn:aws:imagebuilder:{}:{}:",
                crate::principal::LOCAL_REGION,
                crate::managed::MANAGED_ACCOUNT
            )
        } else {
            match &self.account {
                Some(a) => Principal::new(a.clone(), "").arn_prefix(),
                None => principal.arn_prefix(),
            }
        };
        let mut a = format!(
            "{}{}/{}",
            prefix,
            self.kind.as_str(),
            self.name.to_ascii_lowercase()
        );
        if let Some(v) = self.version {
            a.push_str(&format!("/{v}"));
        }
        if let Some(b) = self.build {
            a.push_str(&format!("/{b}"));
        }
        a
    }
}
