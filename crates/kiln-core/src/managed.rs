//! kiln's managed components: the generic Linux components Image Builder's users name by
//! AWS's ARNs (`arn:aws:imagebuilder:REGION:aws:component/update-linux/x.x.x`), written for
//! kiln, so that such recipes build unchanged. They belong to the account `aws` and are listed
//! under `owner=Amazon`.

use chrono::{DateTime, TimeZone, Utc};
use kiln_store::Kind;
use serde_json::json;

use crate::resources::{ComponentType, Reference, Resource};
use crate::version::Version;

/// The account managed components belong to, as in AWS's ARNs.
pub const MANAGED_ACCOUNT: &str = "aws";

struct Managed {
    name: &'static str,
    ty: ComponentType,
    description: &'static str,
    document: &'static str,
}

const UPDATE_LINUX: &str = r#"name: update-linux
description: Updates the image's operating system packages with its package manager (apt-get, dnf, yum or zypper).
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: UpdateOS
        action: ExecuteBash
        inputs:
          commands:
            - |
              set -eu
              if command -v apt-get >/dev/null 2>&1; then
                export DEBIAN_FRONTEND=noninteractive
                apt-get update -q
                apt-get -q -y -o Dpkg::Options::=--force-confold upgrade
                apt-get clean
              elif command -v dnf >/dev/null 2>&1; then
                dnf -y upgrade && dnf clean all
              elif command -v yum >/dev/null 2>&1; then
                yum -y update && yum clean all
              elif command -v zypper >/dev/null 2>&1; then
                zypper --non-interactive update
              else
                echo "update-linux: no package manager kiln knows (apt-get, dnf, yum, zypper)" >&2
                exit 1
              fi
"#;

const REBOOT_LINUX: &str = r#"name: reboot-linux
description: Reboots the build instance.
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: Reboot
        action: Reboot
        inputs:
          delaySeconds: 0
"#;

const REBOOT_TEST_LINUX: &str = r#"name: reboot-test-linux
description: Checks that the instance reboots and that the test goes on after the reboot.
schemaVersion: 1.0
phases:
  - name: test
    steps:
      - name: Mark
        action: ExecuteBash
        inputs:
          commands:
            - mkdir -p /var/tmp && echo before-reboot > /var/tmp/kiln-reboot-test
      - name: Reboot
        action: Reboot
        inputs:
          delaySeconds: 0
      - name: Verify
        action: ExecuteBash
        inputs:
          commands:
            - grep -qx before-reboot /var/tmp/kiln-reboot-test
            - rm -f /var/tmp/kiln-reboot-test
            - echo "the instance rebooted and the test went on"
"#;

const SIMPLE_BOOT_TEST_LINUX: &str = r#"name: simple-boot-test-linux
description: Checks that the image boots to a working system (the init system has started, a shell runs).
schemaVersion: 1.0
phases:
  - name: test
    steps:
      - name: Booted
        action: ExecuteBash
        inputs:
          commands:
            - |
              set -eu
              test -r /proc/uptime
              echo "up $(cut -d' ' -f1 /proc/uptime) s"
              if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
                state=$(systemctl is-system-running --wait 2>/dev/null || true)
                echo "systemd: $state"
                case "$state" in running|degraded) ;; *) exit 1 ;; esac
              fi
"#;

const HELLO_WORLD_LINUX: &str = r#"name: hello-world-linux
description: Prints hello world in the build, validate and test phases.
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: HelloWorldStep
        action: ExecuteBash
        inputs:
          commands:
            - echo "Hello World! Build."
  - name: validate
    steps:
      - name: HelloWorldStep
        action: ExecuteBash
        inputs:
          commands:
            - echo "Hello World! Validate."
  - name: test
    steps:
      - name: HelloWorldStep
        action: ExecuteBash
        inputs:
          commands:
            - echo "Hello World! Test."
"#;

const ALL: [Managed; 5] = [
    Managed {
        name: "update-linux",
        ty: ComponentType::Build,
        description: "Updates the operating system's packages",
        document: UPDATE_LINUX,
    },
    Managed {
        name: "reboot-linux",
        ty: ComponentType::Build,
        description: "Reboots the build instance",
        document: REBOOT_LINUX,
    },
    Managed {
        name: "reboot-test-linux",
        ty: ComponentType::Test,
        description: "Tests that the instance reboots",
        document: REBOOT_TEST_LINUX,
    },
    Managed {
        name: "simple-boot-test-linux",
        ty: ComponentType::Test,
        description: "Tests that the image boots to a working system",
        document: SIMPLE_BOOT_TEST_LINUX,
    },
    Managed {
        name: "hello-world-linux",
        ty: ComponentType::Build,
        description: "Prints hello world in every phase",
        document: HELLO_WORLD_LINUX,
    },
];

/// The one version of each managed component.
const VERSION: Version = Version {
    major: 1,
    minor: 0,
    patch: 0,
};

fn created() -> DateTime<Utc> {
    Utc.timestamp_opt(1_764_547_200, 0)
        .single()
        .unwrap_or_else(Utc::now)
}

fn resource(m: &Managed) -> Resource {
    let arn = format!(
        "arn:aws:imagebuilder:{}:{MANAGED_ACCOUNT}:component/{}/{VERSION}/1",
        crate::principal::LOCAL_REGION,
        m.name
    );
    Resource {
        arn,
        kind: Kind::Component,
        name: m.name.to_string(),
        version: Some(VERSION),
        owner: "Amazon".into(),
        date_created: created(),
        date_updated: None,
        description: m.description.to_string(),
        digest: crate::store::sha256_hex(m.document.as_bytes()),
        request: json!({
            "name": m.name,
            "semanticVersion": VERSION.to_string(),
            "description": m.description,
            "platform": "Linux",
            "supportedOsVersions": ["Debian 12", "Ubuntu 22.04", "Amazon Linux 2023"],
        }),
        source_file: None,
        component_type: Some(m.ty),
        platform: Some("Linux".into()),
        data: Some(m.document.to_string()),
        status: None,
        uses: Vec::new(),
    }
}

/// Every managed component.
pub fn components() -> Vec<Resource> {
    ALL.iter().map(resource).collect()
}

/// Whether a reference names the managed account.
pub fn is_managed(r: &Reference) -> bool {
    r.account.as_deref() == Some(MANAGED_ACCOUNT)
}

/// The managed component a reference names (any region; version filters apply).
pub fn find(r: &Reference) -> Option<Resource> {
    if !is_managed(r) || r.kind != Kind::Component {
        return None;
    }
    ALL.iter()
        .filter(|m| m.name.eq_ignore_ascii_case(&r.name))
        .filter(|_| r.version.is_none_or(|v| v.matches(&VERSION)))
        .filter(|_| r.build.is_none_or(|b| b == 1))
        .map(resource)
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_managed_document_is_a_valid_component() {
        for c in components() {
            let text = c.data.clone().unwrap_or_default();
            let doc = kiln_toe::load::parse(kiln_toe::document::Source {
                name: c.name.clone(),
                text,
                dir: None,
            });
            assert!(doc.is_ok(), "{}", c.name);
        }
    }

    #[test]
    fn aws_arns_find_them_in_any_region() {
        let r = Reference::parse(
            "arn:aws:imagebuilder:us-east-1:aws:component/update-linux/x.x.x",
            &[Kind::Component],
        )
        .unwrap();
        assert_eq!(find(&r).map(|c| c.name), Some("update-linux".into()));
        let r = Reference::parse(
            "arn:aws:imagebuilder:eu-west-1:aws:component/update-linux/2.x.x",
            &[Kind::Component],
        )
        .unwrap();
        assert!(find(&r).is_none());
    }
}
