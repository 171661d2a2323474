//! CreateLifecyclePolicy and UpdateLifecyclePolicy: rules (AGE or COUNT, DEPRECATE, DISABLE
//! or DELETE), exclusions, and the images selected by recipe or by tag.

use kiln_store::Kind;
use kiln_yaml::{Map, Node};
use serde_json::Value;

use super::draft::{common, unreported, Checker, Draft};
use super::{PipelineStatus, ResourceError, Resources};
use crate::version::VersionFilter;

const RESOURCE_TYPES: [&str; 2] = ["AMI_IMAGE", "CONTAINER_IMAGE"];
const ACTIONS: [&str; 3] = ["DEPRECATE", "DISABLE", "DELETE"];
const UNITS: [&str; 4] = ["DAYS", "WEEKS", "MONTHS", "YEARS"];

impl Resources {
    pub(super) fn draft_lifecycle(
        &self,
        c: &mut Checker<'_>,
        m: &Map,
    ) -> Result<Draft, ResourceError> {
        let (name, description, token) = common(
            c,
            m,
            Kind::LifecyclePolicy,
            &[
                "status",
                "executionRole",
                "resourceType",
                "policyDetails",
                "resourceSelection",
            ],
        );
        let at = c.root().span;
        // Required by Image Builder; kiln keeps it and needs no role to act on its regions.
        c.reader
            .required_string(m, "executionRole", at, "a lifecycle policy");
        let resource_type = c
            .reader
            .required_string(m, "resourceType", at, "a lifecycle policy");
        let container = resource_type.as_deref() == Some("CONTAINER_IMAGE");
        if let (Some(t), Some(n)) = (&resource_type, m.get("resourceType")) {
            one_of(c, n, t, &RESOURCE_TYPES, "resourceType");
        }
        let root = c.root();
        match m.get("policyDetails") {
            None => c.error_at(
                root,
                "a lifecycle policy needs `policyDetails`: one to three rules",
                Some("for example `policyDetails: [{action: {type: DELETE}, filter: {type: COUNT, value: 5}}]`".into()),
            ),
            Some(d) => rules(c, d, container),
        }
        match m.get("resourceSelection") {
            None => c.error_at(
                root,
                "a lifecycle policy needs `resourceSelection`: `recipes` or `tagMap`",
                Some("for example `resourceSelection: {recipes: [{name: web, semanticVersion: 1.x.x}]}`".into()),
            ),
            Some(s) => selection(c, s),
        }
        let status = match c.reader.string(m, "status") {
            None => PipelineStatus::Enabled,
            Some(s) => PipelineStatus::parse(&s).unwrap_or_else(|| {
                if let Some(n) = m.get("status") {
                    c.error_at(
                        n,
                        format!("unknown status `{s}`"),
                        Some("use ENABLED or DISABLED".into()),
                    );
                }
                PipelineStatus::Enabled
            }),
        };
        let warnings = c.finish()?;
        let name = name.ok_or_else(|| unreported(c, "no name"))?;
        let mut request = c.root().to_json();
        if let Some(o) = request.as_object_mut() {
            o.remove("clientToken");
            o.insert("status".into(), Value::String(status.as_str().into()));
        }
        let mut d = Draft::plain(
            Kind::LifecyclePolicy,
            name,
            description,
            request,
            token,
            warnings,
        );
        d.status = Some(status);
        Ok(d)
    }
}

/// A text field that must be one of `allowed`.
fn one_of(c: &mut Checker, n: &Node, value: &str, allowed: &[&str], key: &str) -> bool {
    if allowed.contains(&value) {
        return true;
    }
    c.error_at(
        n,
        format!("`{value}` is not a {key}"),
        Some(format!("use {}", allowed.join(", "))),
    );
    false
}

/// An integer field within `min..=max`.
fn bounded(c: &mut Checker, m: &Map, key: &str, min: i64, max: i64) -> Option<i64> {
    let v = c.reader.integer(m, key)?;
    if !(min..=max).contains(&v) {
        if let Some(n) = m.get(key) {
            c.error_at(
                n,
                format!("`{key}` is {v}; it must be {min} to {max}"),
                None,
            );
        }
        return None;
    }
    Some(v)
}

/// `policyDetails`: one to three rules, at most one per action.
fn rules(c: &mut Checker, d: &Node, container: bool) {
    let items = c.reader.list(d, "`policyDetails`").unwrap_or_default();
    if items.is_empty() || items.len() > 3 {
        c.error_at(
            d,
            format!(
                "`policyDetails` has {} rules; give one to three",
                items.len()
            ),
            None,
        );
    }
    let mut seen: Vec<String> = Vec::new();
    for item in items {
        let Some(im) = c.reader.map(item, "a rule") else {
            continue;
        };
        c.reader
            .known_keys(im, &["action", "filter", "exclusionRules"], "a rule");
        match im.get("action") {
            None => c.error_at(item, "a rule needs `action` (`{type: DELETE}`, ...)", None),
            Some(a) => {
                if let Some(t) = action(c, a, container) {
                    if seen.contains(&t) {
                        c.error_at(a, format!("two rules {t}: give each action one rule"), None);
                    }
                    seen.push(t);
                }
            }
        }
        match im.get("filter") {
            None => c.error_at(
                item,
                "a rule needs `filter` (`{type: COUNT, value: 5}`, ...)",
                None,
            ),
            Some(f) => filter(c, f),
        }
        if let Some(x) = im.get("exclusionRules") {
            exclusions(c, x);
        }
    }
}

/// A rule's `action`; returns its type when it is a valid one.
fn action(c: &mut Checker, a: &Node, container: bool) -> Option<String> {
    let am = c.reader.map(a, "`action`")?;
    c.reader
        .known_keys(am, &["type", "includeResources"], "`action`");
    if let Some(inc) = am.get("includeResources") {
        if let Some(im) = c.reader.map(inc, "`includeResources`") {
            c.reader.known_keys(
                im,
                &["amis", "snapshots", "containers"],
                "`includeResources`",
            );
            for k in ["amis", "snapshots", "containers"] {
                c.reader.boolean(im, k);
            }
        }
    }
    let t = c.reader.required_string(am, "type", a.span, "`action`")?;
    let n = am.get("type")?;
    if !one_of(c, n, &t, &ACTIONS, "lifecycle action") {
        return None;
    }
    if container && t != "DELETE" {
        c.error_at(
            n,
            format!("a CONTAINER_IMAGE policy cannot {t}: container images can only be deleted"),
            Some("use DELETE, or make an AMI_IMAGE policy for disk images".into()),
        );
    }
    Some(t)
}

/// A rule's `filter`: AGE with a unit (and retainAtLeast), or COUNT.
fn filter(c: &mut Checker, f: &Node) {
    let Some(fm) = c.reader.map(f, "`filter`") else {
        return;
    };
    c.reader
        .known_keys(fm, &["type", "value", "unit", "retainAtLeast"], "`filter`");
    if fm.get("value").is_none() {
        c.error_at(
            f,
            "`filter` needs `value`: the age, or how many images to keep",
            None,
        );
    }
    bounded(c, fm, "value", 1, 1000);
    let Some(t) = c.reader.required_string(fm, "type", f.span, "`filter`") else {
        return;
    };
    if let Some(n) = fm.get("type") {
        if !one_of(c, n, &t, &["AGE", "COUNT"], "filter type") {
            return;
        }
    }
    if t == "AGE" {
        match c.reader.string(fm, "unit") {
            None => c.error_at(
                f,
                "an AGE filter needs `unit` (DAYS, WEEKS, MONTHS or YEARS)",
                None,
            ),
            Some(u) => {
                if let Some(n) = fm.get("unit") {
                    one_of(c, n, &u, &UNITS, "unit");
                }
            }
        }
        bounded(c, fm, "retainAtLeast", 1, 10);
    } else {
        for k in ["unit", "retainAtLeast"] {
            if let Some(n) = fm.get(k) {
                c.error_at(
                    n,
                    format!("`{k}` belongs to an AGE filter; a COUNT filter keeps `value` images"),
                    None,
                );
            }
        }
    }
}

/// `exclusionRules`: tags, and the AMI rules kiln can apply.
fn exclusions(c: &mut Checker, x: &Node) {
    let Some(xm) = c.reader.map(x, "`exclusionRules`") else {
        return;
    };
    c.reader
        .known_keys(xm, &["tagMap", "amis"], "`exclusionRules`");
    if let Some(t) = xm.get("tagMap") {
        tag_map(c, t);
    }
    let Some(a) = xm.get("amis") else { return };
    let Some(am) = c.reader.map(a, "`amis`") else {
        return;
    };
    c.reader.known_keys(
        am,
        &[
            "isPublic",
            "regions",
            "sharedAccounts",
            "lastLaunched",
            "tagMap",
        ],
        "`amis`",
    );
    c.reader.strings(am, "regions", false);
    if let Some(t) = am.get("tagMap") {
        tag_map(c, t);
    }
    for (k, why) in [
        ("isPublic", "kiln shares no image, so none is public"),
        ("sharedAccounts", "kiln shares no image with other accounts"),
        (
            "lastLaunched",
            "kiln does not know when an image was last launched",
        ),
    ] {
        if let Some(n) = am.get(k) {
            c.reader.warn(
                n.span,
                format!("`{k}` excludes no image: {why}; it is kept but has no effect"),
                None,
            );
        }
    }
}

/// A map of tag names to strings.
fn tag_map(c: &mut Checker, t: &Node) {
    let Some(tm) = c.reader.map(t, "`tagMap`") else {
        return;
    };
    if tm.entries.is_empty() {
        c.error_at(t, "`tagMap` is empty", None);
    }
    for (k, v) in &tm.entries {
        if k.as_text().is_none() || v.as_text().is_none() {
            c.error_at(k, "`tagMap` maps tag names to strings", None);
        }
    }
}

/// `resourceSelection`: `recipes` (name and version filter) or `tagMap`, not both.
fn selection(c: &mut Checker, s: &Node) {
    let Some(sm) = c.reader.map(s, "`resourceSelection`") else {
        return;
    };
    c.reader
        .known_keys(sm, &["recipes", "tagMap"], "`resourceSelection`");
    match (sm.get("recipes"), sm.get("tagMap")) {
        (Some(_), Some(t)) => c.error_at(
            t,
            "`resourceSelection` selects by `recipes` or by `tagMap`, not both",
            Some("make two policies".into()),
        ),
        (None, None) => c.error_at(
            s,
            "`resourceSelection` needs `recipes` or `tagMap`",
            Some("for example `recipes: [{name: web, semanticVersion: 1.x.x}]`".into()),
        ),
        (None, Some(t)) => tag_map(c, t),
        (Some(r), None) => {
            let items = c.reader.list(r, "`recipes`").unwrap_or_default();
            if items.is_empty() {
                c.error_at(r, "`recipes` is empty", None);
            }
            for item in items {
                let Some(rm) = c.reader.map(item, "a recipe") else {
                    continue;
                };
                c.reader
                    .known_keys(rm, &["name", "semanticVersion"], "a recipe");
                c.reader.required_string(rm, "name", item.span, "a recipe");
                let Some(v) =
                    c.reader
                        .required_string(rm, "semanticVersion", item.span, "a recipe")
                else {
                    continue;
                };
                if let Err(e) = v.parse::<VersionFilter>() {
                    if let Some(n) = rm.get("semanticVersion") {
                        c.error_at(n, e.to_string(), Some("write 1.2.3, 1.2.x or 1.x.x".into()));
                    }
                }
            }
        }
    }
}
