//! Signatures and referrers in a real docker-registry (2.8: no referrers API): written while
//! a build is staged, under digest-named tags only; a signer that fails takes the build back
//! with no tag written; a build taken back leaves no signature or referrer behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use kiln_dist::attach::{self, Attached, Attachments, Document, Signer};
use kiln_dist::{
    distribute, Naming, OutputKind, Place, Region, RegistryPlace, RemoteTarget, Target,
};
use kiln_image::registry::RegistryOptions;
use kiln_testkit::registry::Registry;

mod common;
use common::artifact;

struct Fixed(Result<Vec<u8>, String>);

impl Signer for Fixed {
    fn sign(&self, _payload: &[u8]) -> Result<Vec<u8>, String> {
        self.0.clone()
    }
}

fn target(host: &str, signer: Fixed, log: Arc<Mutex<Vec<Attached>>>) -> Arc<RemoteTarget> {
    let att = Attachments {
        signer: Arc::new(signer),
        documents: vec![
            Document {
                artifact_type: "application/spdx+json".into(),
                bytes: br#"{"spdxVersion":"SPDX-2.3"}"#.to_vec(),
            },
            Document {
                artifact_type: "application/vnd.in-toto+json".into(),
                bytes: br#"{"_type":"https://in-toto.io/Statement/v1"}"#.to_vec(),
            },
        ],
        created: "2026-12-02T00:00:00Z".into(),
        creator: "kiln test".into(),
    };
    Arc::new(
        RemoteTarget::new(
            "eu",
            Box::new(RegistryPlace::new(
                host,
                Some("golden"),
                RegistryOptions::default(),
            )),
            vec![OutputKind::OciRegistry],
            Naming::default(),
        )
        .with_attachments(att, log),
    )
}

#[tokio::test]
async fn attached_while_staged_and_gone_when_taken_back() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let a = artifact(dir.path(), 1, "build 1");
    let subject = a.pieces[0].digest.clone();
    let place = RegistryPlace::new(&reg.host(), Some("golden"), RegistryOptions::default());
    let repo = place.repo("web").unwrap();

    // A signer that fails: the build is taken back, no tag of it is written.
    let failing = target(&reg.host(), Fixed(Err("no key".into())), Arc::default());
    let regions = [Region {
        name: "eu".into(),
        targets: vec![failing],
    }];
    let e = distribute(&regions, &a, &|_| {}).await.unwrap_err();
    assert!(e.to_string().contains("no key"), "{e}");
    assert_eq!(repo.tag_digest("1.0.0").await.unwrap(), None);
    assert_eq!(repo.manifest(&subject).await.unwrap(), None, "taken back");

    let log = Arc::new(Mutex::new(Vec::new()));
    let t = target(&reg.host(), Fixed(Ok(vec![0x30, 0x00])), log.clone());
    let regions = [Region {
        name: "eu".into(),
        targets: vec![t.clone()],
    }];
    distribute(&regions, &a, &|_| {}).await.unwrap();
    let attached = log.lock().unwrap().clone();
    assert_eq!(attached.len(), 1);
    assert_eq!(attached[0].subject, subject);
    assert!(!attached[0].referrers_api);
    let sig = repo
        .manifest(&attach::signature_tag(&subject))
        .await
        .unwrap()
        .expect("the signature tag");
    let sig: serde_json::Value = serde_json::from_slice(&sig.bytes).unwrap();
    assert_eq!(sig["layers"][0]["mediaType"], attach::SIMPLE_SIGNING);
    assert_eq!(
        sig["layers"][0]["annotations"][attach::SIGNATURE_ANNOTATION],
        "MAA="
    );
    let index = repo
        .manifest(&attach::referrers_tag(&subject))
        .await
        .unwrap()
        .expect("the referrers index tag");
    assert_eq!(index.media_type, attach::INDEX_MEDIA_TYPE);
    let index: serde_json::Value = serde_json::from_slice(&index.bytes).unwrap();
    let referrers = index["manifests"].as_array().unwrap().clone();
    assert_eq!(referrers.len(), 2);
    assert_eq!(referrers[0]["artifactType"], "application/spdx+json");

    // Staging the same build again (a retry) adds nothing: read, extended only with what is new.
    distribute(&regions, &a, &|_| {}).await.unwrap();
    let again = repo
        .manifest(&attach::referrers_tag(&subject))
        .await
        .unwrap()
        .unwrap();
    let again: serde_json::Value = serde_json::from_slice(&again.bytes).unwrap();
    assert_eq!(again["manifests"].as_array().unwrap().len(), 2);
    let sig = repo
        .manifest(&attach::signature_tag(&subject))
        .await
        .unwrap()
        .unwrap();
    let sig: serde_json::Value = serde_json::from_slice(&sig.bytes).unwrap();
    assert_eq!(sig["layers"].as_array().unwrap().len(), 1);

    // Taken back: the image, its signature, its referrers and the index tag go.
    let planned = t.plan(&a);
    let undone = t.take_back(&planned, &a.build, None).await;
    assert!(undone.iter().any(|u| u.contains(".sig")), "{undone:?}");
    assert_eq!(repo.manifest(&subject).await.unwrap(), None);
    assert_eq!(
        repo.manifest(&attach::signature_tag(&subject))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        repo.manifest(&attach::referrers_tag(&subject))
            .await
            .unwrap(),
        None
    );
    for r in referrers {
        let d = r["digest"].as_str().unwrap();
        assert_eq!(repo.manifest(d).await.unwrap(), None, "referrer {d} left");
    }
}
