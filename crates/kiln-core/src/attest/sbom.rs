//! The package inventory as an SPDX 2.3 JSON document and a CycloneDX 1.6 JSON BOM.
//!
//! Both describe the image (its name and version, the digests it was distributed under) and
//! list every package of the record's inventory with its purl; they assert nothing about
//! licences (`NOASSERTION`): dpkg's database does not say them in a machine-readable form.

use serde_json::{json, Value};

use super::purl::{ecosystem, purl};
use super::{hex_of, time, Subject, KILN_VERSION};
use crate::record::ImageRecord;
use crate::store::sha256_hex;

/// An SPDX identifier from free text: SPDX allows letters, digits, `.` and `-`.
fn spdx_id(i: usize, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-Package-{i}-{clean}")
}

/// A stable `urn:uuid:` for a build (name-based, version 5 layout over sha256): the same build
/// gives the same serial number, so its documents are the same bytes each time.
pub fn serial(rec: &ImageRecord) -> String {
    let h = sha256_hex(format!("kiln-sbom {}", rec.arn).as_bytes());
    let b = h.as_bytes();
    let s = |r: std::ops::Range<usize>| String::from_utf8_lossy(&b[r]).into_owned();
    let variant = ['8', '9', 'a', 'b'][(b[16] as usize) % 4];
    format!(
        "urn:uuid:{}-{}-5{}-{variant}{}-{}",
        s(0..8),
        s(8..12),
        s(13..16),
        s(17..20),
        s(20..32)
    )
}

/// The SPDX 2.3 document.
pub fn spdx(rec: &ImageRecord, subjects: &[Subject]) -> Value {
    let eco = ecosystem(
        rec.parent.as_ref().map(|p| p.reference.as_str()),
        &rec.packages,
    );
    let image_id = "SPDXRef-Image";
    let mut image = json!({
        "SPDXID": image_id,
        "name": rec.name,
        "versionInfo": format!("{}/{}", rec.version, rec.build),
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "CONTAINER",
        "supplier": "NOASSERTION",
        "comment": format!("kiln image {}", rec.arn),
    });
    if let Some(s) = subjects.first() {
        image["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": hex_of(&s.digest)}]);
    }
    let mut packages = vec![image];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];
    for (i, p) in rec.packages.iter().enumerate() {
        let id = spdx_id(i + 1, &p.name);
        packages.push(json!({
            "SPDXID": id,
            "name": p.name,
            "versionInfo": p.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": "LIBRARY",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl(&eco, p),
            }],
        }));
        relationships.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}-{}-{}", rec.name, rec.version, rec.build),
        "documentNamespace": format!(
            "https://kiln.invalid/spdx/{}/{}/{}/{}/{}",
            rec.account, rec.name, rec.version, rec.build, &serial(rec)["urn:uuid:".len()..]
        ),
        "creationInfo": {
            "created": time(rec.created),
            "creators": [format!("Tool: kiln-{KILN_VERSION}")],
        },
        "documentDescribes": [image_id],
        "packages": packages,
        "relationships": relationships,
    })
}

/// The CycloneDX 1.6 BOM.
pub fn cyclonedx(rec: &ImageRecord, subjects: &[Subject]) -> Value {
    let eco = ecosystem(
        rec.parent.as_ref().map(|p| p.reference.as_str()),
        &rec.packages,
    );
    let mut seen = std::collections::BTreeSet::new();
    let components: Vec<Value> = rec
        .packages
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let purl = purl(&eco, p);
            // bom-refs must be unique; a database listing one package twice keeps both.
            let bom_ref = if seen.insert(purl.clone()) {
                purl.clone()
            } else {
                format!("{purl}#{i}")
            };
            json!({
                "type": "library",
                "bom-ref": bom_ref,
                "name": p.name,
                "version": p.version,
                "purl": purl,
            })
        })
        .collect();
    let mut image = json!({
        "type": "container",
        "bom-ref": rec.arn,
        "name": rec.name,
        "version": format!("{}/{}", rec.version, rec.build),
    });
    if let Some(s) = subjects.first() {
        image["hashes"] = json!([{"alg": "SHA-256", "content": hex_of(&s.digest)}]);
    }
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": serial(rec),
        "version": 1,
        "metadata": {
            "timestamp": time(rec.created),
            "tools": {"components": [{"type": "application", "name": "kiln", "version": KILN_VERSION}]},
            "component": image,
        },
        "components": components,
    })
}
