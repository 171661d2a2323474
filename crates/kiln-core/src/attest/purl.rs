//! Package URLs (purl) of the inventory's packages: `pkg:deb/debian/NAME@VERSION?arch=ARCH`,
//! `pkg:rpm/fedora/NAME@VERSION?arch=ARCH`.

use crate::record::Package;

/// Which package manager the inventory came from, and the distribution's purl namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ecosystem {
    /// `deb` or `rpm`.
    pub kind: &'static str,
    /// `debian`, `ubuntu`, `fedora`, ...
    pub namespace: String,
}

/// The ecosystem of `packages`: rpm when their architectures are rpm's (`x86_64`, `noarch`;
/// dpkg says `amd64`, `all`), deb otherwise; the namespace from the parent image's name when it
/// names a distribution kiln knows, else the family's usual one.
pub fn ecosystem(parent: Option<&str>, packages: &[Package]) -> Ecosystem {
    let rpm_arch = ["x86_64", "noarch", "aarch64", "i686", "ppc64le", "s390x"];
    let rpm = packages
        .iter()
        .any(|p| rpm_arch.contains(&p.architecture.as_str()));
    let parent = parent.unwrap_or_default().to_ascii_lowercase();
    let known: &[&str] = if rpm {
        &[
            "fedora",
            "centos",
            "rocky",
            "almalinux",
            "rhel",
            "opensuse",
            "amazonlinux",
        ]
    } else {
        &["ubuntu", "debian"]
    };
    let namespace = known
        .iter()
        .find(|d| parent.contains(*d))
        .map(|d| d.to_string())
        .unwrap_or_else(|| if rpm { "redhat" } else { "debian" }.to_string());
    Ecosystem {
        kind: if rpm { "rpm" } else { "deb" },
        namespace,
    }
}

/// The purl of one package.
pub fn purl(eco: &Ecosystem, p: &Package) -> String {
    let mut s = format!(
        "pkg:{}/{}/{}@{}",
        eco.kind,
        eco.namespace,
        encode(&p.name),
        encode(&p.version)
    );
    if !p.architecture.is_empty() {
        s.push_str("?arch=");
        s.push_str(&encode(&p.architecture));
    }
    s
}

/// Percent-encoding as the purl specification asks: everything but unreserved characters
/// (`1:2.36+dfsg` is `1%3A2.36%2Bdfsg`).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str, arch: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            architecture: arch.into(),
        }
    }

    #[test]
    fn deb_and_rpm() {
        let debs = [pkg("libstdc++6", "12.2.0-14", "amd64")];
        let eco = ecosystem(Some("bootstrap:debian/bookworm"), &debs);
        assert_eq!(
            purl(&eco, &pkg("libc6", "2.36-9+deb12u4", "amd64")),
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64"
        );
        assert_eq!(
            purl(&eco, &pkg("libstdc++6", "1:12.2", "amd64")),
            "pkg:deb/debian/libstdc%2B%2B6@1%3A12.2?arch=amd64"
        );
        let rpms = [pkg("bash", "5.2.26-3.fc40", "x86_64")];
        let eco = ecosystem(Some("docker://registry.fedoraproject.org/fedora:40"), &rpms);
        assert_eq!(
            purl(&eco, &rpms[0]),
            "pkg:rpm/fedora/bash@5.2.26-3.fc40?arch=x86_64"
        );
        assert_eq!(ecosystem(None, &rpms).namespace, "redhat");
        assert_eq!(
            ecosystem(Some("docker://ubuntu:24.04"), &debs).namespace,
            "ubuntu"
        );
    }
}
