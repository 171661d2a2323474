//! Which images a policy is about, and which action its rules choose for each.
//!
//! Images are selected by recipe (the image's name is its recipe's, its version matches the
//! recipe's version filter) or by tag (any one of the map's tags), among the account's builds
//! whose artifacts are in their regions (AVAILABLE, DEPRECATED, DISABLED) and of the policy's
//! resource type. They are grouped by name, newest first. Each rule looks at its group without
//! the images its exclusion rules keep: COUNT acts on all but the newest `value`; AGE acts on
//! those older than `value` `unit`s, except the newest `retainAtLeast`. An image several rules
//! pick gets the strongest action (DELETE over DISABLE over DEPRECATE); an action it already
//! had is not taken again.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::policy::{ActionType, ExclusionRules, FilterType, Policy, ResourceType, Rule};
use crate::record::{ImageRecord, State};
use crate::version::VersionFilter;

/// An action chosen for an image.
#[derive(Debug, Clone)]
pub(crate) struct Chosen {
    /// The image.
    pub image: ImageRecord,
    /// What to do.
    pub action: ActionType,
    /// The rule (its index) that chose it.
    pub rule: usize,
    /// Why, in words.
    pub reason: String,
}

/// Whether an image is of a policy's resource type: disk outputs for AMI_IMAGE, container
/// outputs for CONTAINER_IMAGE.
pub(crate) fn of_type(rec: &ImageRecord, t: ResourceType) -> bool {
    match t {
        ResourceType::AmiImage => rec.outputs.iter().any(|o| !o.kind.is_image()),
        ResourceType::ContainerImage => rec.outputs.iter().any(|o| o.kind.is_image()),
    }
}

fn has_any_tag(rec: &ImageRecord, tags: &BTreeMap<String, String>) -> bool {
    tags.iter().any(|(k, v)| rec.tags.get(k) == Some(v))
}

/// Whether the policy's `resourceSelection` names an image.
pub(crate) fn selected(policy: &Policy, rec: &ImageRecord) -> bool {
    let s = &policy.selection;
    if !s.recipes.is_empty() {
        return s.recipes.iter().any(|r| {
            r.name.eq_ignore_ascii_case(&rec.name)
                && r.semantic_version
                    .parse::<VersionFilter>()
                    .is_ok_and(|f| f.matches(&rec.version))
        });
    }
    has_any_tag(rec, &s.tag_map)
}

/// Whether a rule's exclusion rules keep an image.
fn excluded(x: Option<&ExclusionRules>, rec: &ImageRecord) -> Option<String> {
    let x = x?;
    if has_any_tag(rec, &x.tag_map) {
        return Some("a tag in exclusionRules.tagMap".into());
    }
    let amis = x.amis.as_ref()?;
    if has_any_tag(rec, &amis.tag_map) {
        return Some("a tag in exclusionRules.amis.tagMap".into());
    }
    if let Some(r) = rec
        .outputs
        .iter()
        .find(|o| amis.regions.iter().any(|r| r == &o.region))
    {
        return Some(format!(
            "region {} is in exclusionRules.amis.regions",
            r.region
        ));
    }
    None
}

/// How far along the lifecycle a state is: an action is taken only when it goes further.
fn rank(s: State) -> u8 {
    match s {
        State::Deprecated => 1,
        State::Disabled => 2,
        State::Deleted => 3,
        _ => 0,
    }
}

fn action_rank(a: ActionType) -> u8 {
    match a {
        ActionType::Deprecate => 1,
        ActionType::Disable => 2,
        ActionType::Delete => 3,
    }
}

/// What one rule picks from a group (newest first), with why.
fn picks(rule: &Rule, group: &[&ImageRecord], now: DateTime<Utc>) -> Vec<(usize, String)> {
    let candidates: Vec<(usize, &&ImageRecord)> = group
        .iter()
        .enumerate()
        .filter(|(_, r)| excluded(rule.exclusion_rules.as_ref(), r).is_none())
        .collect();
    let f = &rule.filter;
    let n = f.value as usize;
    match f.kind {
        FilterType::Count => candidates
            .iter()
            .skip(n)
            .enumerate()
            .map(|(i, (g, _))| {
                (
                    *g,
                    format!(
                        "COUNT: number {} of its images, newest first; the rule keeps {n}",
                        n + i + 1
                    ),
                )
            })
            .collect(),
        FilterType::Age => {
            let Some(unit) = f.unit else {
                return Vec::new();
            };
            let cutoff = unit.before(now, f.value);
            let keep = f.retain_at_least.unwrap_or(0) as usize;
            candidates
                .iter()
                .skip(keep)
                .filter(|(_, r)| r.created <= cutoff)
                .map(|(g, r)| {
                    (
                        *g,
                        format!(
                            "AGE: created {}, before {} ({} {:?} ago){}",
                            r.created.format("%Y-%m-%d"),
                            cutoff.format("%Y-%m-%d"),
                            f.value,
                            unit,
                            if keep > 0 {
                                format!("; the newest {keep} are retained")
                            } else {
                                String::new()
                            }
                        ),
                    )
                })
                .collect()
        }
    }
}

/// The actions a policy's rules choose among `images` (the account's builds), oldest image
/// first (so that a version's names move back to builds that stay).
pub(crate) fn choose(policy: &Policy, images: Vec<ImageRecord>, now: DateTime<Utc>) -> Vec<Chosen> {
    let mut groups: BTreeMap<String, Vec<ImageRecord>> = BTreeMap::new();
    for rec in images {
        if rec.state.has_artifacts()
            && of_type(&rec, policy.resource_type)
            && selected(policy, &rec)
        {
            groups
                .entry(rec.name.to_ascii_lowercase())
                .or_default()
                .push(rec);
        }
    }
    let mut chosen = Vec::new();
    for (_, mut group) in groups {
        group.sort_by_key(|r| std::cmp::Reverse((r.created, r.version, r.build)));
        let refs: Vec<&ImageRecord> = group.iter().collect();
        let mut best: BTreeMap<usize, (ActionType, usize, String)> = BTreeMap::new();
        for (i, rule) in policy.rules.iter().enumerate() {
            for (g, why) in picks(rule, &refs, now) {
                let a = rule.action.kind;
                let stronger = best
                    .get(&g)
                    .is_none_or(|(have, _, _)| action_rank(a) > action_rank(*have));
                if stronger {
                    best.insert(g, (a, i, why));
                }
            }
        }
        // Oldest first.
        for (g, (action, rule, reason)) in best.into_iter().rev() {
            let image = group[g].clone();
            if action_rank(action) <= rank(image.state) {
                continue;
            }
            chosen.push(Chosen {
                image,
                action,
                rule,
                reason,
            });
        }
    }
    chosen
}
