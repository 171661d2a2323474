//! Resource policies (PutComponentPolicy and its kin): the IAM-shaped JSON document an owner
//! puts on a component, recipe or image to let other accounts read and use it, parsed into
//! types. kiln takes the subset Image Builder's sharing uses: `Allow` statements naming
//! accounts and the resource type's Get and List actions. Anything else is refused with the
//! field that is wrong, rather than kept and ignored, so that a policy never seems to say
//! more than kiln does.

use std::collections::BTreeSet;
use std::fmt;

use kiln_store::Kind;
use serde_json::{Map, Value};

/// The policy versions IAM knows.
const VERSIONS: [&str; 2] = ["2012-10-17", "2008-10-17"];

/// What a statement may allow: reading the resource, and seeing it in lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// `imagebuilder:GetComponent` (and its kin): read it by ARN, use it in recipes and builds.
    Get,
    /// `imagebuilder:ListComponents` (and its kin): see it in `owner=Shared` lists.
    List,
}

impl Action {
    /// The IAM action for a resource kind (`imagebuilder:GetImageRecipe`).
    pub fn name(self, kind: Kind) -> String {
        let (one, many) = nouns(kind);
        match self {
            Action::Get => format!("imagebuilder:Get{one}"),
            Action::List => format!("imagebuilder:List{many}"),
        }
    }
}

/// The API's nouns of a shareable kind (`Component`, `Components`).
fn nouns(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::ImageRecipe => ("ImageRecipe", "ImageRecipes"),
        Kind::ContainerRecipe => ("ContainerRecipe", "ContainerRecipes"),
        Kind::Image => ("Image", "Images"),
        _ => ("Component", "Components"),
    }
}

/// Whether resources of a kind can have a policy.
pub fn shareable(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Component | Kind::ImageRecipe | Kind::ContainerRecipe | Kind::Image
    )
}

/// One `Allow` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Its `Sid`, if any.
    pub sid: Option<String>,
    /// The 12-digit accounts it names.
    pub accounts: BTreeSet<String>,
    /// What it allows them.
    pub actions: BTreeSet<Action>,
}

/// A parsed resource policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePolicy {
    /// Its statements, in order.
    pub statements: Vec<Statement>,
}

impl ResourcePolicy {
    /// The accounts it lets read the resource (every statement allows Get: parsing checks it).
    pub fn grantees(&self) -> Vec<String> {
        let all: BTreeSet<&String> = self.statements.iter().flat_map(|s| &s.accounts).collect();
        all.into_iter().cloned().collect()
    }
}

/// What is wrong with a policy: the field (`Statement[0].Principal.AWS[1]`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The policy's field the problem is about; empty for the whole document.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for PolicyError {}

fn err(field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.into(),
        message: message.into(),
    }
}

/// What a policy is checked against: the resource it is put on.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Its kind.
    pub kind: Kind,
    /// Its ARN (a statement's `Resource` must name it).
    pub arn: &'a str,
    /// Its owner's account (which needs no grant).
    pub owner: &'a str,
}

/// Parses a policy document for `target`.
pub fn parse(text: &str, target: Target<'_>) -> Result<ResourcePolicy, PolicyError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| {
        err(
            "",
            format!(
                "not JSON ({e}): give an IAM policy document such as {}",
                example(target.kind)
            ),
        )
    })?;
    let Some(doc) = doc.as_object() else {
        return Err(err("", "a policy is a JSON object"));
    };
    known(doc, "", &["Version", "Id", "Statement"])?;
    if let Some(v) = doc.get("Version") {
        if !v.as_str().is_some_and(|v| VERSIONS.contains(&v)) {
            return Err(err(
                "Version",
                format!("must be \"2012-10-17\" (or \"2008-10-17\"), not {v}"),
            ));
        }
    }
    if doc.get("Id").is_some_and(|v| !v.is_string()) {
        return Err(err("Id", "must be a string"));
    }
    let statements = match doc.get("Statement") {
        None => return Err(err("Statement", "is required")),
        Some(Value::Array(a)) => a.iter().collect::<Vec<_>>(),
        Some(one @ Value::Object(_)) => vec![one],
        Some(_) => return Err(err("Statement", "must be a statement or a list of them")),
    };
    let mut out = Vec::new();
    for (i, s) in statements.into_iter().enumerate() {
        out.push(statement(s, &format!("Statement[{i}]"), target)?);
    }
    Ok(ResourcePolicy { statements: out })
}

fn statement(v: &Value, at: &str, target: Target<'_>) -> Result<Statement, PolicyError> {
    let Some(s) = v.as_object() else {
        return Err(err(at, "a statement is a JSON object"));
    };
    for unsupported in ["Condition", "NotPrincipal", "NotAction", "NotResource"] {
        if s.contains_key(unsupported) {
            return Err(err(
                format!("{at}.{unsupported}"),
                format!(
                    "kiln's resource policies do not take {unsupported}: name the accounts \
                     in Principal and the actions in Action"
                ),
            ));
        }
    }
    known(s, at, &["Sid", "Effect", "Principal", "Action", "Resource"])?;
    let sid = match s.get("Sid") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(err(format!("{at}.Sid"), "must be a string")),
    };
    match s.get("Effect").and_then(Value::as_str) {
        Some("Allow") => {}
        Some("Deny") => {
            return Err(err(
                format!("{at}.Effect"),
                "kiln's resource policies only allow: to stop sharing, put a policy that \
                 leaves the account out",
            ))
        }
        Some(other) => {
            return Err(err(
                format!("{at}.Effect"),
                format!("`{other}` is not an effect: write \"Allow\""),
            ))
        }
        None => return Err(err(format!("{at}.Effect"), "is required: write \"Allow\"")),
    }
    let accounts = principal(s.get("Principal"), &format!("{at}.Principal"), target)?;
    let actions = actions(s.get("Action"), &format!("{at}.Action"), target.kind)?;
    if let Some(r) = s.get("Resource") {
        resources(r, &format!("{at}.Resource"), target)?;
    }
    Ok(Statement {
        sid,
        accounts,
        actions,
    })
}

/// Refuses keys a policy or statement does not have in kiln.
fn known(o: &Map<String, Value>, at: &str, keys: &[&str]) -> Result<(), PolicyError> {
    match o.keys().find(|k| !keys.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(err(
            if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            },
            format!("unknown key; {} has {}", what(at), keys.join(", ")),
        )),
    }
}

fn what(at: &str) -> &'static str {
    if at.is_empty() {
        "a policy"
    } else {
        "a statement"
    }
}

/// A string or a list of strings, each with its field.
fn strings<'v>(v: &'v Value, at: &str) -> Result<Vec<(String, &'v str)>, PolicyError> {
    match v {
        Value::String(s) => Ok(vec![(at.to_string(), s.as_str())]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let field = format!("{at}[{i}]");
                match item.as_str() {
                    Some(s) => Ok((field, s)),
                    None => Err(err(field, "must be a string")),
                }
            })
            .collect(),
        _ => Err(err(at, "must be a string or a list of strings")),
    }
}

fn principal(
    v: Option<&Value>,
    at: &str,
    target: Target<'_>,
) -> Result<BTreeSet<String>, PolicyError> {
    let Some(v) = v else {
        return Err(err(at, "is required: {\"AWS\": [\"ACCOUNT-ID\", ...]}"));
    };
    if v.as_str() == Some("*") {
        return Err(err(
            at,
            "kiln does not share with everyone: name the accounts, {\"AWS\": [\"ACCOUNT-ID\"]}",
        ));
    }
    let Some(o) = v.as_object() else {
        return Err(err(at, "must be {\"AWS\": [\"ACCOUNT-ID\", ...]}"));
    };
    if let Some(k) = o.keys().find(|k| *k != "AWS") {
        return Err(err(
            format!("{at}.{k}"),
            "kiln shares with accounts only: use \"AWS\" with account ids",
        ));
    }
    let at = format!("{at}.AWS");
    let Some(list) = o.get("AWS") else {
        return Err(err(at, "is required: the account ids to share with"));
    };
    let mut accounts = BTreeSet::new();
    let items = strings(list, &at)?;
    if items.is_empty() {
        return Err(err(at, "name at least one account"));
    }
    for (field, text) in items {
        let Some(account) = account_of(text) else {
            return Err(err(
                field,
                format!(
                    "`{text}` is not an account: write a 12-digit account id or \
                     arn:aws:iam::ACCOUNT-ID:root"
                ),
            ));
        };
        if account == target.owner {
            return Err(err(
                field,
                format!(
                    "{account} owns the resource: its owner needs no grant; name other accounts"
                ),
            ));
        }
        accounts.insert(account.to_string());
    }
    Ok(accounts)
}

/// The account a principal names: `123456789012` or `arn:aws:iam::123456789012:root`.
fn account_of(text: &str) -> Option<&str> {
    let id = match text.strip_prefix("arn:") {
        None => text,
        Some(rest) => {
            let (partition, rest) = rest.split_once(":iam::")?;
            if !(partition == "kiln" || partition.starts_with("aws")) {
                return None;
            }
            rest.strip_suffix(":root")?
        }
    };
    (id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit())).then_some(id)
}

fn actions(v: Option<&Value>, at: &str, kind: Kind) -> Result<BTreeSet<Action>, PolicyError> {
    let allowed = [Action::Get, Action::List];
    let names = || {
        allowed
            .iter()
            .map(|a| a.name(kind))
            .collect::<Vec<_>>()
            .join(" and ")
    };
    let Some(v) = v else {
        return Err(err(at, format!("is required: {}", names())));
    };
    let mut out = BTreeSet::new();
    let items = strings(v, at)?;
    for (field, text) in &items {
        let Some(a) = allowed
            .iter()
            .find(|a| a.name(kind).eq_ignore_ascii_case(text))
        else {
            return Err(err(
                field.clone(),
                format!(
                    "`{text}` cannot be shared: a {} is shared for reading with {}",
                    super::kind_noun(kind),
                    names()
                ),
            ));
        };
        out.insert(*a);
    }
    if !out.contains(&Action::Get) {
        return Err(err(
            at,
            format!(
                "allow {} too: without it the accounts could list the {} but not read or use it",
                Action::Get.name(kind),
                super::kind_noun(kind)
            ),
        ));
    }
    Ok(out)
}

fn resources(v: &Value, at: &str, target: Target<'_>) -> Result<(), PolicyError> {
    for (field, text) in strings(v, at)? {
        if text != target.arn {
            return Err(err(
                field,
                format!(
                    "`{text}` is not the ARN the policy is put on ({}): leave Resource out or \
                     name that ARN",
                    target.arn
                ),
            ));
        }
    }
    Ok(())
}

/// A policy of the kind's shape, for messages.
pub fn example(kind: Kind) -> String {
    format!(
        r#"{{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow", "Principal": {{"AWS": ["111122223333"]}}, "Action": ["{}", "{}"]}}]}}"#,
        Action::Get.name(kind),
        Action::List.name(kind)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:kiln:imagebuilder:local:111111111111:component/web/1.0.0/1";

    fn target() -> Target<'static> {
        Target {
            kind: Kind::Component,
            arn: ARN,
            owner: "111111111111",
        }
    }

    fn refused(text: &str) -> PolicyError {
        match parse(text, target()) {
            Ok(p) => panic!("{text} was taken: {p:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn aws_documented_policy_is_taken() {
        let text = format!(
            r#"{{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow",
            "Principal": {{"AWS": ["222222222222", "arn:aws:iam::333333333333:root"]}},
            "Action": ["imagebuilder:GetComponent", "imagebuilder:ListComponents"],
            "Resource": ["{ARN}"]}}]}}"#
        );
        let p = parse(&text, target()).unwrap();
        assert_eq!(p.grantees(), ["222222222222", "333333333333"]);
        assert_eq!(
            p.statements[0].actions,
            BTreeSet::from([Action::Get, Action::List])
        );
    }

    #[test]
    fn single_strings_and_one_statement_object_are_taken() {
        let p = parse(
            r#"{"Statement": {"Sid": "s", "Effect": "Allow", "Principal": {"AWS": "222222222222"},
            "Action": "imagebuilder:getcomponent"}}"#,
            target(),
        )
        .unwrap();
        assert_eq!(p.grantees(), ["222222222222"]);
        assert_eq!(p.statements[0].sid.as_deref(), Some("s"));
    }

    #[test]
    fn an_empty_statement_list_shares_with_nobody() {
        let p = parse(r#"{"Version": "2012-10-17", "Statement": []}"#, target()).unwrap();
        assert!(p.grantees().is_empty());
    }

    #[test]
    fn the_example_of_every_kind_parses_for_that_kind() {
        for kind in [
            Kind::Component,
            Kind::ImageRecipe,
            Kind::ContainerRecipe,
            Kind::Image,
        ] {
            let t = Target { kind, ..target() };
            assert_eq!(
                parse(&example(kind), t).unwrap().grantees(),
                ["111122223333"]
            );
        }
    }

    #[test]
    fn wrong_fields_are_named() {
        let cases: &[(&str, &str, &str)] = &[
            ("{", "", "not JSON"),
            ("[]", "", "JSON object"),
            (r#"{"Version": "2012-10-17"}"#, "Statement", "required"),
            (
                r#"{"Version": "2020-01-01", "Statement": []}"#,
                "Version",
                "2012-10-17",
            ),
            (r#"{"Statement": [], "Extra": 1}"#, "Extra", "unknown key"),
            (
                r#"{"Statement": [{"Effect": "Deny", "Principal": {"AWS": "222222222222"}, "Action": "imagebuilder:GetComponent"}]}"#,
                "Statement[0].Effect",
                "only allow",
            ),
            (
                r#"{"Statement": [{"Principal": {"AWS": "222222222222"}, "Action": "imagebuilder:GetComponent"}]}"#,
                "Statement[0].Effect",
                "required",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "imagebuilder:GetComponent"}]}"#,
                "Statement[0].Principal",
                "everyone",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Principal": {"Service": "x"}, "Action": "imagebuilder:GetComponent"}]}"#,
                "Statement[0].Principal.Service",
                "accounts only",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Principal": {"AWS": ["222222222222", "12345"]}, "Action": "imagebuilder:GetComponent"}]}"#,
                "Statement[0].Principal.AWS[1]",
                "12-digit",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::222222222222:user/bob"}, "Action": "imagebuilder:GetComponent"}]}"#,
                "Statement[0].Principal.AWS",
                "12-digit",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Principal": {"AWS": "111111111111"}, "Action": "imagebuilder:GetComponent"}]}"#,
                "Statement[0].Principal.AWS",
                "owns",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Principal": {"AWS": []}, "Action": "imagebuilder:GetComponent"}]}"#,
                "Statement[0].Principal.AWS",
                "at least one",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Principal": {"AWS": "222222222222"}, "Action": ["imagebuilder:GetComponent", "imagebuilder:DeleteComponent"]}]}"#,
                "Statement[0].Action[1]",
                "cannot be shared",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Principal": {"AWS": "222222222222"}, "Action": "imagebuilder:*"}]}"#,
                "Statement[0].Action",
                "cannot be shared",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Principal": {"AWS": "222222222222"}, "Action": "imagebuilder:GetImage"}]}"#,
                "Statement[0].Action",
                "imagebuilder:GetComponent and imagebuilder:ListComponents",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Principal": {"AWS": "222222222222"}, "Action": "imagebuilder:ListComponents"}]}"#,
                "Statement[0].Action",
                "allow imagebuilder:GetComponent too",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Principal": {"AWS": "222222222222"}, "Action": "imagebuilder:GetComponent", "Resource": "arn:kiln:imagebuilder:local:111111111111:component/other/1.0.0/1"}]}"#,
                "Statement[0].Resource",
                "not the ARN",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Principal": {"AWS": "222222222222"}, "Action": "imagebuilder:GetComponent", "Condition": {}}]}"#,
                "Statement[0].Condition",
                "do not take Condition",
            ),
        ];
        for (text, field, says) in cases {
            let e = refused(text);
            assert_eq!(e.field, *field, "{text}: {e}");
            assert!(e.message.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn principals_are_account_ids_or_root_arns() {
        assert_eq!(account_of("222222222222"), Some("222222222222"));
        assert_eq!(
            account_of("arn:aws:iam::222222222222:root"),
            Some("222222222222")
        );
        assert_eq!(
            account_of("arn:kiln:iam::222222222222:root"),
            Some("222222222222")
        );
        assert_eq!(account_of("arn:aws:iam::22222222222a:root"), None);
        assert_eq!(account_of("arn:foo:iam::222222222222:root"), None);
        assert_eq!(account_of("2222222222222"), None);
    }
}
