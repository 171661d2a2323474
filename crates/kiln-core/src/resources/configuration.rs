//! Create/UpdateInfrastructureConfiguration and Create/UpdateDistributionConfiguration.

use kiln_store::Kind;
use kiln_yaml::{Map, Node};
use serde_json::Value;

use super::draft::{common, resolve_path, unreported, Checker, Draft};
use super::{ResourceError, Resources};
use crate::principal::Principal;
use crate::recipe::{is_name, BuilderKind};
use crate::trust::{UNTRUSTED_COMPONENTS_FIELD, UNTRUSTED_COMPONENTS_TAG};

/// Keys of a distribution kiln reads for registry and bucket regions (names and tags).
const NAMING_KEYS: [&str; 2] = [
    "amiDistributionConfiguration",
    "containerDistributionConfiguration",
];

/// Keys of a distribution that are AWS settings kiln has no use for.
const AWS_DISTRIBUTION_KEYS: [&str; 5] = [
    "licenseConfigurationArns",
    "launchTemplateConfigurations",
    "s3ExportConfiguration",
    "fastLaunchConfigurations",
    "ssmParameterConfigurations",
];

impl Resources {
    pub(super) async fn draft_infrastructure(
        &self,
        principal: &Principal,
        c: &mut Checker<'_>,
        m: &Map,
    ) -> Result<Draft, ResourceError> {
        let mut own: Vec<&str> = crate::recipe::INFRA_KEYS.to_vec();
        own.push("logging");
        own.push("snsTopicArn");
        let topic = self.sns_topic(principal, c, m).await?;
        let (name, description, token) = common(c, m, Kind::InfrastructureConfiguration, &own);
        let infra = crate::recipe::infrastructure_settings(&mut c.reader, m);
        self.check_untrusted(c, m, infra.untrusted_components);
        if let Some(l) = m.get("logging") {
            if let Some(lm) = c.reader.map(l, "`logging`") {
                c.reader
                    .known_keys(lm, &["s3Logs", "localPath"], "`logging`");
                if let Some(p) = lm.get("localPath") {
                    c.local_path(p);
                }
                if let Some(s3) = lm.get("s3Logs") {
                    if let Some(sm) = c.reader.map(s3, "`s3Logs`") {
                        c.reader
                            .known_keys(sm, &["s3BucketName", "s3KeyPrefix"], "`s3Logs`");
                        c.reader
                            .required_string(sm, "s3BucketName", s3.span, "`s3Logs`");
                    }
                }
            }
        }
        let warnings = c.finish()?;
        let name = name.ok_or_else(|| unreported(c, "no name"))?;
        let mut request = c.root().to_json();
        if let Some(o) = request.as_object_mut() {
            o.remove("clientToken");
            // A relative local log folder is relative to the request file.
            if let Some(p) = o.get_mut("logging").and_then(|l| l.get_mut("localPath")) {
                resolve_path(p, &c.dir());
            }
        }
        let mut d = Draft::plain(
            Kind::InfrastructureConfiguration,
            name,
            description,
            request,
            token,
            warnings,
        );
        // The request keeps `snsTopicArn` as written (clients compare what they sent with
        // what they read back); the reference is the topic's own ARN, so that the topic
        // cannot be deleted while this configuration names it.
        d.uses.extend(topic);
        Ok(d)
    }

    /// `untrustedComponents` (or its tag) against the server's trust policy: a setting below
    /// its floor is refused, naming the field.
    fn check_untrusted(&self, c: &mut Checker<'_>, m: &Map, field: Option<BuilderKind>) {
        let hint = || {
            Some(format!(
                "leave it out (components no operator account owns then run in the {} builder), or raise it to `vm`",
                self.trust().untrusted_components
            ))
        };
        if let (Some(kind), Some(node)) = (field, m.get(UNTRUSTED_COMPONENTS_FIELD)) {
            if let Err(e) = self.trust().check_setting(kind) {
                c.error_at(node, e, hint());
            }
        }
        let tag = UNTRUSTED_COMPONENTS_TAG;
        if let Some(v) = m
            .get("tags")
            .and_then(|t| t.as_map())
            .and_then(|t| t.get(tag))
        {
            match v.as_text() {
                Some(text) => {
                    if let Err(e) = self.untrusted_tag(text) {
                        c.error_at(v, format!("tag `{tag}`: {e}"), hint());
                    }
                }
                None => c.error_at(v, format!("tag `{tag}` must be text"), hint()),
            }
        }
    }

    /// The value of the tag [`UNTRUSTED_COMPONENTS_TAG`], checked against the trust policy.
    pub(super) fn untrusted_tag(&self, text: &str) -> Result<BuilderKind, String> {
        let kind = text
            .trim()
            .parse::<BuilderKind>()
            .map_err(|_| format!("unknown builder `{text}`: use `vm` or `sandbox`"))?;
        self.trust().check_setting(kind)?;
        Ok(kind)
    }

    /// The kiln topic `snsTopicArn` names, which must exist in the principal's account.
    async fn sns_topic(
        &self,
        principal: &Principal,
        c: &mut Checker<'_>,
        m: &Map,
    ) -> Result<Option<String>, ResourceError> {
        let Some(node) = m.get("snsTopicArn") else {
            return Ok(None);
        };
        let Some(text) = node.as_text() else {
            c.error_at(node, "`snsTopicArn` is an ARN", None);
            return Ok(None);
        };
        let hint = || {
            Some("make it with `kiln topic create NAME --webhook URL` (or PUT /kiln/CreateTopic) and give its ARN".to_string())
        };
        let r = match crate::notify::parse_topic_arn(text) {
            Ok(r) => r,
            Err(e) => {
                c.error_at(node, e, hint());
                return Ok(None);
            }
        };
        let arn = r.to_arn(principal);
        let found = r.visible_to(principal)
            && crate::notify::Topics::new(self.store.clone())
                .by_arn(&arn)
                .await?
                .is_some();
        if !found {
            c.error_at(node, super::errors::missing("topic", text), hint());
            return Ok(None);
        }
        Ok(Some(arn))
    }

    pub(super) fn draft_distribution(
        &self,
        c: &mut Checker<'_>,
        m: &Map,
    ) -> Result<Draft, ResourceError> {
        let (name, description, token) =
            common(c, m, Kind::DistributionConfiguration, &["distributions"]);
        match m.get("distributions") {
            None => {
                let at = c.root();
                c.error_at(
                    at,
                    "a distribution configuration needs `distributions`: a list of regions",
                    Some("for example `distributions: [{region: local}]`".into()),
                );
            }
            Some(d) => distributions(c, d),
        }
        let warnings = c.finish()?;
        let name = name.ok_or_else(|| unreported(c, "no name"))?;
        let mut request = c.root().to_json();
        let dir = c.dir();
        if let Some(o) = request.as_object_mut() {
            o.remove("clientToken");
            if let Some(Value::Array(items)) = o.get_mut("distributions") {
                for item in items {
                    if let Some(p) = item.get_mut("path") {
                        resolve_path(p, &dir);
                    }
                }
            }
        }
        Ok(Draft::plain(
            Kind::DistributionConfiguration,
            name,
            description,
            request,
            token,
            warnings,
        ))
    }
}

/// Checks `distributions`: regions, each named once, with an optional folder.
fn distributions(c: &mut Checker, d: &Node) {
    let items = c.reader.list(d, "`distributions`").unwrap_or_default();
    if items.is_empty() {
        c.error_at(d, "`distributions` is empty", None);
    }
    let mut regions: Vec<String> = Vec::new();
    for item in items {
        let Some(dm) = c.reader.map(item, "a distribution") else {
            continue;
        };
        let mut keys = vec!["region", "path"];
        keys.extend(NAMING_KEYS);
        keys.extend(AWS_DISTRIBUTION_KEYS);
        // The same checks as a recipe's distributions: a wrong tag or template is a 400 here.
        if let Some(n) = dm.get("containerDistributionConfiguration") {
            let _ = crate::recipe::container_naming(&mut c.reader, n);
        }
        if let Some(n) = dm.get("amiDistributionConfiguration") {
            let _ = crate::recipe::disk_name(&mut c.reader, n);
        }
        c.reader.known_keys(dm, &keys, "a distribution");
        for k in AWS_DISTRIBUTION_KEYS {
            if let Some(n) = dm.get(k) {
                c.reader.warn(n.span, format!("`{k}` is an AWS setting kiln does not use; it is kept but ignored"), Some("kiln writes each region's images to its folder (`path`, or $KILN_HOME/regions/REGION)".into()));
            }
        }
        if let Some(region) = c
            .reader
            .required_string(dm, "region", item.span, "a distribution")
        {
            if !is_name(&region) {
                c.reader.error(
                    item.span,
                    format!("`{region}` is not a valid region name"),
                    None,
                );
            } else if regions.contains(&region) {
                c.reader.error(
                    item.span,
                    format!("region `{region}` is listed twice"),
                    None,
                );
            }
            regions.push(region);
        }
        if c.reader.string(dm, "path").is_some() {
            if let Some(p) = dm.get("path") {
                c.local_path(p);
            }
        }
    }
}
