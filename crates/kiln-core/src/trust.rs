//! Which builder a build's components run on, by who owns them.
//!
//! A component is *trusted* when one of the operator's accounts owns it, or when it is one of
//! kiln's own (the managed components under AWS's ARNs, kiln's built-in guest-agent layer).
//! Every other component (a tenant's own, one another account shares, a third party's) is
//! *untrusted*, and runs behind the boundary the operator chose for them: by default the VM
//! builder, whose boundary is the hypervisor, rather than the sandbox, whose boundary is the
//! host's kernel.
//!
//! The operator's choice ([`TrustPolicy`], `trust:` in kiln's configuration) is a floor: an
//! infrastructure configuration (`untrustedComponents`, or the tag
//! [`UNTRUSTED_COMPONENTS_TAG`] through the API) may raise it to `vm`, never lower it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::principal::LOCAL_ACCOUNT;
use crate::recipe::{BuilderKind, OutputFormat, Recipe};

/// The tag that sets an infrastructure configuration's `untrustedComponents` through the API,
/// whose clients refuse members the model does not have.
pub const UNTRUSTED_COMPONENTS_TAG: &str = "kiln:untrustedComponents";

/// The field of kiln's infrastructure settings that says where untrusted components run.
pub const UNTRUSTED_COMPONENTS_FIELD: &str = "untrustedComponents";

/// The [`UNTRUSTED_COMPONENTS_TAG`] of a stored infrastructure configuration.
pub fn tag_of(infrastructure: &crate::resources::Resource) -> Option<&str> {
    infrastructure
        .request
        .get("tags")?
        .get(UNTRUSTED_COMPONENTS_TAG)?
        .as_str()
        .map(str::trim)
}

/// The operator's trust settings: `trust: {operatorAccounts, untrustedComponents}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustPolicy {
    /// The accounts whose components are trusted: the operator's own.
    pub operator_accounts: Vec<String>,
    /// Where untrusted components run at least (the server's default, a floor).
    pub untrusted_components: BuilderKind,
}

impl Default for TrustPolicy {
    /// The local account (the one the CLI acts as) is the operator's; untrusted components run
    /// in VMs.
    fn default() -> Self {
        TrustPolicy {
            operator_accounts: vec![LOCAL_ACCOUNT.to_string()],
            untrusted_components: BuilderKind::Vm,
        }
    }
}

/// Who owns a component, as far as trust goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Owner {
    /// kiln itself: a managed component (AWS's ARNs, account `aws`) or a built-in one.
    Kiln,
    /// An account.
    Account {
        /// Its 12-digit id.
        account: String,
    },
}

impl Owner {
    /// The owner of a build's component: the account of its ARN (`aws` is kiln's managed
    /// components), or, for a document given as a file, the account of whoever builds.
    pub fn of(arn: Option<&str>, builder_account: &str) -> Owner {
        let account = arn
            .and_then(|a| a.split(':').nth(4))
            .unwrap_or(builder_account);
        if account == crate::managed::MANAGED_ACCOUNT {
            Owner::Kiln
        } else {
            Owner::Account {
                account: account.to_string(),
            }
        }
    }
}

/// A component of a build and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedComponent {
    /// Its ARN, or the file it was read from.
    pub component: String,
    /// Who owns it.
    pub owner: Owner,
}

/// A component no operator account owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UntrustedComponent {
    /// Its ARN, or the file it was read from.
    pub component: String,
    /// The account that owns it.
    pub account: String,
}

/// Who set the boundary untrusted components run behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BoundarySource {
    /// kiln's configuration (`trust.untrustedComponents`, `vm` by default).
    Server,
    /// The infrastructure configuration (or the recipe's `infrastructure:`), raising the
    /// server's.
    Infrastructure,
}

/// Which builder a build runs its components on, and why: the record's `builder`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuilderChoice {
    /// The builder the components run on.
    pub kind: BuilderKind,
    /// The builder the recipe or its infrastructure configuration names (`builder`).
    pub requested: BuilderKind,
    /// The components no operator account owns, in recipe order (empty: all trusted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub untrusted: Vec<UntrustedComponent>,
    /// Where untrusted components run at least.
    pub boundary: BuilderKind,
    /// Who said so.
    pub boundary_source: BoundarySource,
    /// The infrastructure's `untrustedComponents` when it asked for less than the server's
    /// floor and was not followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored_setting: Option<BuilderKind>,
}

/// How strong a boundary is: a VM's hypervisor over a sandbox's kernel.
fn strength(kind: BuilderKind) -> u8 {
    match kind {
        BuilderKind::Sandbox => 0,
        BuilderKind::Vm => 1,
    }
}

impl TrustPolicy {
    /// Whether an account is one of the operator's.
    pub fn is_operator(&self, account: &str) -> bool {
        self.operator_accounts.iter().any(|a| a == account)
    }

    /// Whether components of this owner run on whatever builder is asked for.
    pub fn trusts(&self, owner: &Owner) -> bool {
        match owner {
            Owner::Kiln => true,
            Owner::Account { account } => self.is_operator(account),
        }
    }

    /// An infrastructure setting as the server takes it: refused when it asks for a weaker
    /// boundary than the server's floor.
    pub fn check_setting(&self, setting: BuilderKind) -> Result<(), String> {
        if strength(setting) < strength(self.untrusted_components) {
            return Err(format!(
                "`{UNTRUSTED_COMPONENTS_FIELD}: {setting}` asks for less than this server allows: components no operator account owns run in the {} builder here (kiln's configuration, `trust.untrustedComponents`)",
                self.untrusted_components
            ));
        }
        Ok(())
    }

    /// The builder a build with these components runs on: the one asked for, or the VM
    /// builder when a component is untrusted and the boundary (the stronger of the server's
    /// floor and the infrastructure's `setting`) is `vm`.
    pub fn decide(
        &self,
        requested: BuilderKind,
        setting: Option<BuilderKind>,
        components: &[OwnedComponent],
    ) -> BuilderChoice {
        let floor = self.untrusted_components;
        let (boundary, boundary_source, ignored_setting) = match setting {
            Some(s) if strength(s) > strength(floor) => (s, BoundarySource::Infrastructure, None),
            Some(s) if strength(s) < strength(floor) => (floor, BoundarySource::Server, Some(s)),
            _ => (floor, BoundarySource::Server, None),
        };
        let untrusted: Vec<UntrustedComponent> = components
            .iter()
            .filter(|c| !self.trusts(&c.owner))
            .filter_map(|c| match &c.owner {
                Owner::Account { account } => Some(UntrustedComponent {
                    component: c.component.clone(),
                    account: account.clone(),
                }),
                Owner::Kiln => None,
            })
            .collect();
        let kind = if !untrusted.is_empty() && strength(boundary) > strength(requested) {
            boundary
        } else {
            requested
        };
        BuilderChoice {
            kind,
            requested,
            untrusted,
            boundary,
            boundary_source,
            ignored_setting,
        }
    }
}

impl BuilderChoice {
    /// Whether trust moved the build off the builder it asked for.
    pub fn raised(&self) -> bool {
        self.kind != self.requested
    }

    /// Why the choice was made, after the builder's name (`builder: vm (WHY)`).
    pub fn reason(&self) -> String {
        let setting = match self.boundary_source {
            BoundarySource::Server => format!(
                "{UNTRUSTED_COMPONENTS_FIELD}: {}, the server's setting",
                self.boundary
            ),
            BoundarySource::Infrastructure => format!(
                "{UNTRUSTED_COMPONENTS_FIELD}: {}, the infrastructure's setting",
                self.boundary
            ),
        };
        let first = self.untrusted.first();
        let more = match self.untrusted.len() {
            0 | 1 => String::new(),
            n => format!(" (1 of {n} untrusted components)"),
        };
        match first {
            None => "as asked; every component is an operator account's or kiln's".to_string(),
            Some(u) if self.raised() => format!(
                "component {} is owned by account {}, not an operator account{more}; {setting}",
                u.component, u.account
            ),
            Some(u) if self.kind == BuilderKind::Vm => format!(
                "as asked; component {} of account {} is not an operator account's{more}",
                u.component, u.account
            ),
            Some(u) => format!(
                "component {} of account {} is not an operator account's{more}, and {setting} lets it run in a sandbox",
                u.component, u.account
            ),
        }
    }
}

impl fmt::Display for BuilderChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.kind, self.reason())
    }
}

/// Why a recipe cannot be built on the VM builder that trust asks for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("builder: vm ({reason}), and {conflict}")]
pub struct VmRefusal {
    /// Why the build must run in a VM.
    pub reason: String,
    /// What in the recipe the VM builder cannot do, and what to do instead.
    pub conflict: String,
}

/// The recipe as the VM builder runs it, when trust moved it there: refused when it asks for
/// what only the sandbox builder makes (an OCI image; a disk without the guest agent).
pub fn on_vm_builder(recipe: &Recipe, choice: &BuilderChoice) -> Result<Recipe, VmRefusal> {
    let refuse = |conflict: &str| VmRefusal {
        reason: choice.reason(),
        conflict: conflict.to_string(),
    };
    if recipe.outputs.contains(&OutputFormat::Oci) {
        return Err(refuse(
            "the VM builder makes disk images only (a VM's disk is one filesystem, not layers), while this recipe makes a container image: build an image recipe with `outputs: [disk]`, or ask the operator to make the component's account an operator account (`trust.operatorAccounts`)",
        ));
    }
    if recipe.disk.remove_guest_agent {
        return Err(refuse(
            "the VM builder's disk keeps the guest agent its test VM needs, while this recipe removes it (`removeGuestAgent`): drop removeGuestAgent",
        ));
    }
    let mut on_vm = recipe.clone();
    on_vm.infrastructure.builder = BuilderKind::Vm;
    Ok(on_vm)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPERATOR: &str = "111111111111";
    const TENANT: &str = "222222222222";

    fn policy(floor: BuilderKind) -> TrustPolicy {
        TrustPolicy {
            operator_accounts: vec![OPERATOR.into()],
            untrusted_components: floor,
        }
    }

    fn component(account: &str, name: &str) -> OwnedComponent {
        let arn = format!("arn:kiln:imagebuilder:local:{account}:component/{name}/1.0.0/1");
        OwnedComponent {
            owner: Owner::of(Some(&arn), OPERATOR),
            component: arn,
        }
    }

    #[test]
    fn owners_come_from_the_arn_or_the_builder() {
        assert_eq!(
            Owner::of(
                Some("arn:aws:imagebuilder:us-east-1:aws:component/update-linux/1.0.0/1"),
                TENANT
            ),
            Owner::Kiln
        );
        assert_eq!(
            Owner::of(
                Some("arn:kiln:imagebuilder:local:222222222222:component/c/1.0.0/1"),
                OPERATOR
            ),
            Owner::Account {
                account: TENANT.into()
            }
        );
        // A document from a file is the builder's own.
        assert_eq!(
            Owner::of(None, TENANT),
            Owner::Account {
                account: TENANT.into()
            }
        );
    }

    #[test]
    fn the_default_trusts_the_local_account_and_kiln_and_runs_the_rest_in_vms() {
        let p = TrustPolicy::default();
        assert!(p.trusts(&Owner::of(None, LOCAL_ACCOUNT)));
        assert!(p.trusts(&Owner::Kiln));
        assert!(!p.trusts(&Owner::of(None, TENANT)));
        assert_eq!(p.untrusted_components, BuilderKind::Vm);
    }

    #[test]
    fn an_untrusted_component_moves_a_sandbox_build_into_a_vm() {
        let p = policy(BuilderKind::Vm);
        let c = p.decide(
            BuilderKind::Sandbox,
            None,
            &[component(OPERATOR, "mine"), component(TENANT, "theirs")],
        );
        assert_eq!(c.kind, BuilderKind::Vm);
        assert!(c.raised());
        assert_eq!(
            c.untrusted,
            vec![UntrustedComponent {
                component: format!("arn:kiln:imagebuilder:local:{TENANT}:component/theirs/1.0.0/1"),
                account: TENANT.into()
            }]
        );
        assert_eq!(c.boundary_source, BoundarySource::Server);
        assert_eq!(
            c.to_string(),
            format!("vm (component arn:kiln:imagebuilder:local:{TENANT}:component/theirs/1.0.0/1 is owned by account {TENANT}, not an operator account; untrustedComponents: vm, the server's setting)")
        );
    }

    #[test]
    fn trusted_components_run_where_they_are_asked_to() {
        let p = policy(BuilderKind::Vm);
        let managed = OwnedComponent {
            component: "arn:aws:imagebuilder:local:aws:component/update-linux/1.0.0/1".into(),
            owner: Owner::Kiln,
        };
        let c = p.decide(
            BuilderKind::Sandbox,
            None,
            &[component(OPERATOR, "mine"), managed],
        );
        assert_eq!(c.kind, BuilderKind::Sandbox);
        assert!(!c.raised() && c.untrusted.is_empty());
        assert!(c.reason().contains("every component"), "{}", c.reason());
        // A VM asked for stays a VM.
        let c = p.decide(BuilderKind::Vm, None, &[component(TENANT, "theirs")]);
        assert_eq!(c.kind, BuilderKind::Vm);
        assert!(!c.raised());
        assert!(c.reason().starts_with("as asked; component"), "{c}");
    }

    #[test]
    fn the_infrastructure_may_raise_the_boundary_but_not_lower_it() {
        let tenant = [component(TENANT, "theirs")];
        // The server lets untrusted components run in sandboxes; the configuration raises it.
        let lax = policy(BuilderKind::Sandbox);
        let c = lax.decide(BuilderKind::Sandbox, None, &tenant);
        assert_eq!(c.kind, BuilderKind::Sandbox);
        assert!(c.reason().contains("lets it run in a sandbox"), "{c}");
        let c = lax.decide(BuilderKind::Sandbox, Some(BuilderKind::Vm), &tenant);
        assert_eq!(
            (c.kind, c.boundary_source),
            (BuilderKind::Vm, BoundarySource::Infrastructure)
        );
        assert!(c.reason().contains("the infrastructure's setting"), "{c}");
        assert!(lax.check_setting(BuilderKind::Vm).is_ok());
        assert!(lax.check_setting(BuilderKind::Sandbox).is_ok());
        // Under a `vm` floor, `sandbox` is refused when stored, and ignored (and said) when
        // met in a configuration stored before the floor was raised.
        let strict = policy(BuilderKind::Vm);
        let e = strict.check_setting(BuilderKind::Sandbox).unwrap_err();
        assert!(
            e.contains("untrustedComponents: sandbox") && e.contains("vm builder"),
            "{e}"
        );
        let c = strict.decide(BuilderKind::Sandbox, Some(BuilderKind::Sandbox), &tenant);
        assert_eq!(c.kind, BuilderKind::Vm);
        assert_eq!(c.ignored_setting, Some(BuilderKind::Sandbox));
        assert_eq!(c.boundary_source, BoundarySource::Server);
    }

    #[test]
    fn more_untrusted_components_are_counted() {
        let p = policy(BuilderKind::Vm);
        let c = p.decide(
            BuilderKind::Sandbox,
            None,
            &[
                component(TENANT, "a"),
                component(TENANT, "b"),
                component("333333333333", "c"),
            ],
        );
        assert_eq!(c.untrusted.len(), 3);
        assert!(c.reason().contains("component/a/1.0.0/1 is owned by account 222222222222, not an operator account (1 of 3 untrusted components);"), "{c}");
    }

    #[test]
    fn the_choice_survives_json() {
        let c =
            policy(BuilderKind::Vm).decide(BuilderKind::Sandbox, None, &[component(TENANT, "t")]);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["kind"], "vm");
        assert_eq!(v["requested"], "sandbox");
        assert_eq!(v["boundarySource"], "server");
        assert_eq!(v["untrusted"][0]["account"], TENANT);
        let back: BuilderChoice = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }
}
