//! The package inventory of an image: what the dpkg (or rpm) database says is installed.

use crate::record::Package;

/// Parses `/var/lib/dpkg/status`, keeping installed packages.
pub fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let mut name = None;
        let mut version = None;
        let mut arch = None;
        let mut installed = false;
        for line in para.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Architecture: ") {
                arch = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                installed = v.trim().ends_with(" installed");
            }
        }
        if let (Some(n), Some(v), true) = (name, version, installed) {
            out.push(Package {
                name: n.to_string(),
                version: v.to_string(),
                architecture: arch.unwrap_or("").to_string(),
            });
        }
    }
    out.sort();
    out
}

/// Parses `rpm -qa --qf '%{NAME}\t%{VERSION}-%{RELEASE}\t%{ARCH}\n'`.
pub fn parse_rpm_query(text: &str) -> Vec<Package> {
    let mut out: Vec<Package> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some(Package {
                name: f.next()?.to_string(),
                version: f.next()?.to_string(),
                architecture: f.next().unwrap_or("").to_string(),
            })
        })
        .collect();
    out.sort();
    out
}

/// The query `parse_rpm_query` reads.
pub const RPM_QUERY: &str = "%{NAME}\t%{VERSION}-%{RELEASE}\t%{ARCH}\n";

/// Packages added, removed and changed between two inventories.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PackageDiff {
    /// In `new` only.
    pub added: Vec<Package>,
    /// In `old` only.
    pub removed: Vec<Package>,
    /// (old, new) with different versions.
    pub changed: Vec<(Package, Package)>,
}

impl PackageDiff {
    /// True when the inventories are the same.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// The image a build's packages are compared with: the newest AVAILABLE image made before it
/// by the same pipeline (for `kiln build FILE`, of the same name).
pub async fn previous_image(
    records: &crate::record::Records,
    rec: &crate::record::ImageRecord,
) -> Result<Option<crate::record::ImageRecord>, crate::store::StoreError> {
    let mut f = kiln_store::Filter {
        states: vec!["AVAILABLE".into()],
        order: kiln_store::Order::Newest,
        ..kiln_store::Filter::default()
    };
    match &rec.pipeline {
        Some(p) => f.pipeline = Some(p.clone()),
        None => f.name = Some(rec.name.clone()),
    }
    // Newest first, a page at a time: the previous image is usually on the first.
    f.limit = Some(50);
    loop {
        let page = records.summaries(&f).await?;
        for s in &page {
            let same_origin = s.pipeline == rec.pipeline;
            if s.created < rec.created && s.arn != rec.arn && same_origin {
                return records.get(&s.arn).await;
            }
        }
        if page.len() < 50 {
            return Ok(None);
        }
        f.offset += 50;
    }
}

/// Compares inventories by package name and architecture.
pub fn diff(old: &[Package], new: &[Package]) -> PackageDiff {
    use std::collections::BTreeMap;
    let key = |p: &Package| (p.name.clone(), p.architecture.clone());
    let o: BTreeMap<_, _> = old.iter().map(|p| (key(p), p)).collect();
    let n: BTreeMap<_, _> = new.iter().map(|p| (key(p), p)).collect();
    let mut d = PackageDiff::default();
    for (k, p) in &n {
        match o.get(k) {
            None => d.added.push((*p).clone()),
            Some(q) if q.version != p.version => d.changed.push(((*q).clone(), (*p).clone())),
            _ => {}
        }
    }
    for (k, p) in &o {
        if !n.contains_key(k) {
            d.removed.push((*p).clone());
        }
    }
    d
}

/// Reads the package database inside a (test) instance: dpkg's status file, else `rpm -qa`.
/// An image with neither has no inventory.
pub async fn read(instance: &dyn kiln_instance::Instance) -> Vec<Package> {
    use kiln_instance::fileops::{FileOp, FileOpOutput};
    if let Ok(FileOpOutput::Text(t)) = instance
        .file_op(&FileOp::ReadFile {
            path: "/var/lib/dpkg/status".into(),
            encoding: Default::default(),
        })
        .await
    {
        return parse_dpkg_status(&t);
    }
    let req = kiln_instance::ExecRequest {
        program: "rpm".into(),
        args: vec!["-qa".into(), "--qf".into(), RPM_QUERY.into()],
        timeout: Some(std::time::Duration::from_secs(120)),
        ..Default::default()
    };
    match instance.exec(&req, &mut kiln_instance::Discard).await {
        Ok(out) if out.status.success() => parse_rpm_query(&out.stdout),
        _ => Vec::new(),
    }
}

/// The dpkg database straight from the layers (topmost copy wins; a whiteout hides it), for
/// builds that run no tests.
pub fn from_layers(chain: &[crate::store::StoredLayer]) -> Vec<Package> {
    use std::os::unix::fs::FileTypeExt;
    for l in chain.iter().rev() {
        let p = l.fs.join("var/lib/dpkg/status");
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_char_device() => return Vec::new(),
            Ok(m) if m.is_file() => {
                return std::fs::read_to_string(&p)
                    .map(|t| parse_dpkg_status(&t))
                    .unwrap_or_default()
            }
            _ => {}
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status() {
        let text = "Package: bash\nStatus: install ok installed\nVersion: 5.2.15-2+b2\nArchitecture: amd64\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\nArchitecture: all\n\nPackage: apt\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.6.1\n";
        let p = parse_dpkg_status(text);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "apt");
        assert_eq!(p[1].version, "5.2.15-2+b2");
    }

    #[test]
    fn rpm_and_diff() {
        let a = parse_rpm_query("bash\t5.1-1\tx86_64\nzlib\t1.2-1\tx86_64\n");
        let b = parse_rpm_query("bash\t5.2-1\tx86_64\nnginx\t1.24-1\tx86_64\n");
        let d = diff(&a, &b);
        assert_eq!(d.added[0].name, "nginx");
        assert_eq!(d.removed[0].name, "zlib");
        assert_eq!(d.changed[0].1.version, "5.2-1");
    }
}
