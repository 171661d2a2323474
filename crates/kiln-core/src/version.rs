//! Semantic versions and version filters, with EC2 Image Builder's rules: `x.y.z` with each
//! node from 0 to 2^30-1; filters may use `x` wildcards, and once a node is `x` every node to
//! its right is `x` (`1.x.x` yes, `1.x.2` no).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Largest value of one version node.
pub const MAX_NODE: u32 = (1 << 30) - 1;

/// A semantic version `major.minor.patch`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(try_from = "String", into = "String")]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

/// Why a version or filter is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a valid {what}: {why}")]
pub struct VersionError {
    text: String,
    what: &'static str,
    why: String,
}

fn node(text: &str, part: &str, what: &'static str) -> Result<u32, VersionError> {
    let err = |why: String| VersionError {
        text: text.to_string(),
        what,
        why,
    };
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(format!("`{part}` is not a number")));
    }
    if part.len() > 1 && part.starts_with('0') {
        return Err(err(format!("`{part}` has a leading zero")));
    }
    let v: u64 = part
        .parse()
        .map_err(|_| err(format!("`{part}` is too large")))?;
    if v > MAX_NODE as u64 {
        return Err(err(format!("each node is at most {MAX_NODE}")));
    }
    Ok(v as u32)
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() != 3 {
            return Err(VersionError {
                text: s.to_string(),
                what: "semantic version",
                why: "write major.minor.patch, for example 1.0.0".into(),
            });
        }
        Ok(Version {
            major: node(s, parts[0], "semantic version")?,
            minor: node(s, parts[1], "semantic version")?,
            patch: node(s, parts[2], "semantic version")?,
        })
    }
}

impl TryFrom<String> for Version {
    type Error = VersionError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Version> for String {
    fn from(v: Version) -> String {
        v.to_string()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Version {
    /// The next patch version.
    pub fn next_patch(self) -> Version {
        Version {
            patch: self.patch + 1,
            ..self
        }
    }
}

/// A version filter: `1.2.3`, `1.2.x`, `1.x.x`, `x.x.x` (the default: any version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VersionFilter {
    nodes: [Option<u32>; 3],
}

impl TryFrom<String> for VersionFilter {
    type Error = VersionError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<VersionFilter> for String {
    fn from(v: VersionFilter) -> String {
        v.to_string()
    }
}

impl FromStr for VersionFilter {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() != 3 {
            return Err(VersionError {
                text: s.to_string(),
                what: "version filter",
                why: "write three nodes such as 1.2.3, 1.2.x or 1.x.x".into(),
            });
        }
        let mut nodes = [None; 3];
        let mut wild = false;
        for (i, p) in parts.iter().enumerate() {
            if p.eq_ignore_ascii_case("x") {
                wild = true;
            } else if wild {
                return Err(VersionError {
                    text: s.to_string(),
                    what: "version filter",
                    why: "once a node is x, every node to its right must be x".into(),
                });
            } else {
                nodes[i] = Some(node(s, p, "version filter")?);
            }
        }
        Ok(VersionFilter { nodes })
    }
}

impl fmt::Display for VersionFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |o: Option<u32>| o.map_or("x".to_string(), |v| v.to_string());
        write!(
            f,
            "{}.{}.{}",
            n(self.nodes[0]),
            n(self.nodes[1]),
            n(self.nodes[2])
        )
    }
}

impl VersionFilter {
    /// True when `v` matches.
    pub fn matches(&self, v: &Version) -> bool {
        [v.major, v.minor, v.patch]
            .iter()
            .zip(self.nodes.iter())
            .all(|(have, want)| want.is_none_or(|w| w == *have))
    }

    /// The nodes, `None` where the filter has `x`.
    pub fn nodes(&self) -> [Option<u32>; 3] {
        self.nodes
    }

    /// The filter that matches exactly one version.
    pub fn exact(v: &Version) -> Self {
        VersionFilter {
            nodes: [Some(v.major), Some(v.minor), Some(v.patch)],
        }
    }

    /// True when there is no wildcard.
    pub fn is_exact(&self) -> bool {
        self.nodes.iter().all(Option::is_some)
    }

    /// The newest of `versions` that matches.
    pub fn newest<'a, I: IntoIterator<Item = &'a Version>>(&self, versions: I) -> Option<Version> {
        versions
            .into_iter()
            .filter(|v| self.matches(v))
            .max_by(|a, b| a.cmp(b))
            .copied()
    }
}

/// Orders `x.y.z/n` build versions.
pub fn cmp_build(a: (Version, u32), b: (Version, u32)) -> Ordering {
    a.0.cmp(&b.0).then(a.1.cmp(&b.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!("1.2.3".parse::<Version>().unwrap().to_string(), "1.2.3");
        assert!("1.2".parse::<Version>().is_err());
        assert!("1.02.3".parse::<Version>().is_err());
        assert!("1.2.a".parse::<Version>().is_err());
        assert!(format!("1.2.{}", MAX_NODE).parse::<Version>().is_ok());
        assert!(format!("1.2.{}", MAX_NODE + 1).parse::<Version>().is_err());
        assert!("1.10.0".parse::<Version>().unwrap() > "1.9.9".parse().unwrap());
    }

    #[test]
    fn filters() {
        let v = |s: &str| s.parse::<Version>().unwrap();
        let f = |s: &str| s.parse::<VersionFilter>().unwrap();
        assert!(f("1.x.x").matches(&v("1.5.0")));
        assert!(!f("1.x.x").matches(&v("2.0.0")));
        assert!(f("x.x.x").matches(&v("9.9.9")));
        assert!(f("1.2.x").matches(&v("1.2.7")));
        assert!(f("1.2.3").is_exact());
        let e = "1.x.2".parse::<VersionFilter>().unwrap_err().to_string();
        assert!(e.contains("once a node is x"), "{e}");
        assert!("x.1.x".parse::<VersionFilter>().is_err());
        let all = [v("1.0.0"), v("1.4.2"), v("1.10.0"), v("2.0.0")];
        assert_eq!(f("1.x.x").newest(&all), Some(v("1.10.0")));
        assert_eq!(f("3.x.x").newest(&all), None);
    }
}
