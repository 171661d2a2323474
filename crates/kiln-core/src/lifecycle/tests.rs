//! Lifecycle policies over a real store and real local region folders: builds are recorded
//! and distributed with kiln-dist into two regions (an OCI layout with `disks/` each), then
//! policies run over them and the regions are read back on disk.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, TimeZone, Utc};
use kiln_dist::{Artifact, DiskFile, DiskImage, OciImage, Region};
use kiln_image::disk::DiskFormat;
use kiln_image::ImageSettings;
use kiln_store::Kind;
use serde_json::json;
use tempfile::TempDir;

use super::*;
use crate::record::tests::record;
use crate::request::{Document, Operation, Request};
use crate::resources::ErrorCode;
use crate::store::Home;

struct World {
    dir: TempDir,
    store: Store,
    records: Records,
    resources: Resources,
    lifecycle: Lifecycle,
    regions: Vec<Region>,
    now: DateTime<Utc>,
}

fn tester() -> Principal {
    Principal::local("tester")
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Home::new(dir.path())).await.unwrap();
    let regions = vec![
        Region::local("east", dir.path().join("regions/east")),
        Region::local("west", dir.path().join("regions/west")),
    ];
    World {
        records: Records::new(store.clone()),
        resources: Resources::new(store.clone()),
        lifecycle: Lifecycle::new(store.clone(), Default::default()),
        store,
        regions,
        dir,
        now: Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap(),
    }
}

impl World {
    fn region(&self, name: &str) -> PathBuf {
        self.dir.path().join("regions").join(name)
    }

    /// Records a build of web/1.0.0 made `days` ago and distributes it (a container image and
    /// a raw disk) into both regions, as a build's distribute stage does.
    async fn build(&self, days: i64, tags: &[(&str, &str)]) -> ImageRecord {
        let mut rec = record("web", "1.0.0", State::Distributing);
        rec.created = self.now - Duration::days(days);
        rec.tags = tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.records.create(&mut rec).await.unwrap();
        let disk = self
            .dir
            .path()
            .join(format!("scratch/disk-{}.raw", rec.build));
        std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
        std::fs::write(&disk, format!("disk of build {}", rec.build)).unwrap();
        let artifact = Artifact {
            build: rec.build_id(),
            image: Some(OciImage {
                blobs: vec![],
                settings: ImageSettings {
                    labels: [("build".to_string(), rec.build.to_string())].into(),
                    ..ImageSettings::default()
                },
            }),
            disk: Some(DiskImage {
                files: vec![DiskFile {
                    format: DiskFormat::Raw,
                    path: disk,
                    digest: format!("sha256:{}", rec.build),
                    size: 20,
                }],
            }),
            previous: self.records.previous_available(&rec).await,
            pieces: Vec::new(),
            scratch: self.dir.path().join("scratch"),
        };
        rec.outputs = kiln_dist::distribute(&self.regions, &artifact, &|_| {})
            .await
            .unwrap();
        rec.state = State::Available;
        self.records.save(&rec).await.unwrap();
        rec
    }

    async fn policy(&self, body: serde_json::Value) -> Policy {
        let doc = Document::parse("the request", body.to_string(), None).unwrap();
        let out = self
            .resources
            .apply(
                &tester(),
                Request::new(Operation::CreateLifecyclePolicy, doc),
            )
            .await
            .unwrap();
        Policy::from_resource(&out.resource).unwrap()
    }

    async fn state(&self, rec: &ImageRecord) -> ImageRecord {
        self.records.get(&rec.arn).await.unwrap().unwrap()
    }
}

fn tags(layout: &Path) -> Vec<String> {
    let mut t = kiln_image::list_tags(layout).unwrap();
    t.sort();
    t
}

fn policy_body(resource_type: &str, details: serde_json::Value) -> serde_json::Value {
    json!({
        "name": "keep-few",
        "executionRole": "arn:aws:iam::123456789012:role/lifecycle",
        "resourceType": resource_type,
        "policyDetails": details,
        "resourceSelection": {"recipes": [{"name": "web", "semanticVersion": "1.x.x"}]},
    })
}

#[tokio::test]
async fn count_keeps_two_deletes_three_in_every_region_and_skips_a_parent() {
    let w = world().await;
    let mut builds = Vec::new();
    for days in [60, 50, 40, 30, 20, 10] {
        builds.push(w.build(days, &[]).await);
    }
    // An image recipe names build 2 as its parent: that build stays.
    let mut recipe = crate::state::row(
        Kind::ImageRecipe,
        format!("{}image-recipe/child/1.0.0", tester().arn_prefix()),
        "child".into(),
    );
    recipe.version = Some([1, 0, 0]);
    recipe.body = "{}".into();
    recipe.summary = "{}".into();
    w.store
        .db()
        .create(recipe, vec![builds[1].arn.clone()], None)
        .await
        .unwrap();
    let p = w
        .policy(policy_body(
            "AMI_IMAGE",
            json!([{"action": {"type": "DELETE"}, "filter": {"type": "COUNT", "value": 2}}]),
        ))
        .await;

    let e = w.lifecycle.run(&p, w.now, false).await.unwrap();
    assert_eq!(e.status, ExecutionStatus::Success);
    let got: Vec<(u32, ResourceStatus)> = e
        .resources
        .iter()
        .map(|r| {
            (
                r.image_arn.rsplit('/').next().unwrap().parse().unwrap(),
                r.status,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, ResourceStatus::Success),
            (2, ResourceStatus::Skipped),
            (3, ResourceStatus::Success),
            (4, ResourceStatus::Success),
        ],
        "oldest first"
    );
    let skipped = &e.resources[1];
    assert!(
        skipped
            .reason
            .as_deref()
            .unwrap()
            .contains("image-recipe/child/1.0.0"),
        "{skipped:?}"
    );
    for region in ["east", "west"] {
        let layout = w.region(region);
        assert_eq!(
            tags(&layout),
            vec!["1.0.0", "1.0.0-2", "1.0.0-5", "1.0.0-6"],
            "{region}"
        );
        assert_eq!(
            kiln_image::oci::tag_digest(&layout, "1.0.0").unwrap(),
            kiln_image::oci::tag_digest(&layout, "1.0.0-6").unwrap()
        );
        for n in [1, 3, 4] {
            assert!(!layout.join(format!("disks/web-1.0.0-{n}.raw")).exists());
        }
        for n in [2, 5, 6] {
            assert!(layout.join(format!("disks/web-1.0.0-{n}.raw")).exists());
        }
        assert_eq!(
            std::fs::read_to_string(layout.join("disks/web-1.0.0.raw")).unwrap(),
            "disk of build 6"
        );
    }
    for (i, b) in builds.iter().enumerate() {
        let r = w.state(b).await;
        if [0, 2, 3].contains(&i) {
            assert_eq!(r.state, State::Deleted, "{}", r.arn);
            assert!(r.outputs.is_empty());
            assert_eq!(r.lifecycle_execution(), Some(e.id.as_str()));
        } else {
            assert_eq!(r.state, State::Available, "{}", r.arn);
            assert_eq!(r.outputs.len(), b.outputs.len());
        }
    }
    // Recorded, and found by policy and by image.
    let by_policy = w
        .lifecycle
        .executions()
        .of_policy(&tester(), &p.arn)
        .await
        .unwrap();
    assert_eq!(by_policy, vec![e.clone()]);
    let by_image = w
        .lifecycle
        .executions()
        .of_image(&tester(), &builds[0].arn)
        .await
        .unwrap();
    assert_eq!(by_image.len(), 1);
    assert_eq!(
        w.lifecycle
            .executions()
            .get(&tester(), &e.id)
            .await
            .unwrap(),
        Some(e.clone())
    );
    // Running it again finds nothing more to do.
    let again = w.lifecycle.run(&p, w.now, false).await.unwrap();
    assert_eq!(again.resources.len(), 1, "only the skipped parent again");
}

#[tokio::test]
async fn age_keeps_retain_at_least() {
    let w = world().await;
    let mut builds = Vec::new();
    for days in [50, 40, 30, 20, 10] {
        builds.push(w.build(days, &[]).await);
    }
    let p = w
        .policy(policy_body(
            "CONTAINER_IMAGE",
            json!([{"action": {"type": "DELETE"},
                    "filter": {"type": "AGE", "value": 15, "unit": "DAYS", "retainAtLeast": 3}}]),
        ))
        .await;
    let e = w.lifecycle.run(&p, w.now, false).await.unwrap();
    // Four are older than 15 days, but the newest three stay: builds 1 and 2 go.
    let gone: Vec<&str> = e.resources.iter().map(|r| r.image_arn.as_str()).collect();
    assert_eq!(gone, vec![builds[0].arn.as_str(), builds[1].arn.as_str()]);
    assert_eq!(
        tags(&w.region("east")),
        vec!["1.0.0", "1.0.0-3", "1.0.0-4", "1.0.0-5"]
    );
    // Without retainAtLeast, all four old ones would go: a dry run says so and changes nothing.
    let all = w
        .policy(json!({
            "name": "by-age",
            "executionRole": "r",
            "resourceType": "CONTAINER_IMAGE",
            "policyDetails": [{"action": {"type": "DELETE"},
                               "filter": {"type": "AGE", "value": 2, "unit": "WEEKS"}}],
            "resourceSelection": {"recipes": [{"name": "web", "semanticVersion": "1.0.0"}]},
        }))
        .await;
    let dry = w.lifecycle.run(&all, w.now, true).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.resources.len(), 2, "builds 3 and 4");
    assert_eq!(
        tags(&w.region("east")),
        vec!["1.0.0", "1.0.0-3", "1.0.0-4", "1.0.0-5"]
    );
    assert!(w
        .lifecycle
        .executions()
        .of_policy(&tester(), &all.arn)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn deprecate_disable_and_exclusion_by_tag() {
    let w = world().await;
    let b1 = w.build(40, &[("keep", "yes")]).await;
    let b2 = w.build(30, &[]).await;
    let b3 = w.build(20, &[]).await;
    let b4 = w.build(10, &[]).await;
    let p = w
        .policy(policy_body(
            "AMI_IMAGE",
            json!([
                {"action": {"type": "DEPRECATE"}, "filter": {"type": "COUNT", "value": 1}},
                {"action": {"type": "DISABLE"}, "filter": {"type": "COUNT", "value": 2},
                 "exclusionRules": {"tagMap": {"keep": "yes"}}},
            ]),
        ))
        .await;
    let e = w.lifecycle.run(&p, w.now, false).await.unwrap();
    assert_eq!(e.resources.len(), 3);
    assert_eq!(w.state(&b4).await.state, State::Available);
    let r3 = w.state(&b3).await;
    assert_eq!(r3.state, State::Deprecated);
    assert_eq!(r3.deprecation_time(), Some(w.now));
    assert_eq!(w.state(&b2).await.state, State::Disabled);
    // Excluded from DISABLE by its tag, still deprecated by the other rule.
    assert_eq!(w.state(&b1).await.state, State::Deprecated);
    // Nothing left the regions.
    assert_eq!(tags(&w.region("west")).len(), 5);
    // A deprecated build is still a parent; a disabled one is not.
    let q: crate::record::ImageQuery = "web/1.0.0".parse().unwrap();
    let q = crate::record::ImageQuery {
        account: Some(tester().account),
        ..q
    };
    assert_eq!(
        w.records.newest_available(&q).await.unwrap().unwrap().arn,
        b4.arn
    );
    // The next run does nothing again.
    assert!(w
        .lifecycle
        .run(&p, w.now, false)
        .await
        .unwrap()
        .resources
        .is_empty());
}

#[tokio::test]
async fn deleting_the_newest_build_points_the_version_back() {
    let w = world().await;
    let b1 = w.build(20, &[]).await;
    let b2 = w.build(10, &[]).await;
    let d = crate::retire::delete_image(
        &w.records,
        b2.clone(),
        &Default::default(),
        Scope::default(),
        None,
        w.now,
        None,
    )
    .await
    .unwrap();
    assert!(d.complete(), "{:?}", d.failed);
    assert_eq!(d.record.state, State::Deleted);
    for region in ["east", "west"] {
        let layout = w.region(region);
        assert_eq!(tags(&layout), vec!["1.0.0", "1.0.0-1"]);
        assert_eq!(
            std::fs::read_to_string(layout.join("disks/web-1.0.0.raw")).unwrap(),
            "disk of build 1"
        );
        assert!(!layout.join("disks/web-1.0.0-2.raw").exists());
    }
    // The last one takes the version's names with it.
    crate::retire::delete_image(
        &w.records,
        b1,
        &Default::default(),
        Scope::default(),
        None,
        w.now,
        None,
    )
    .await
    .unwrap();
    assert!(tags(&w.region("east")).is_empty());
    assert!(std::fs::read_dir(w.region("east").join("disks"))
        .unwrap()
        .next()
        .is_none());
}

#[tokio::test]
async fn an_artifact_that_cannot_be_removed_is_named_and_kept_in_the_record() {
    let w = world().await;
    let b = w.build(10, &[]).await;
    // The west region's build disk cannot be removed: in its place is a folder with a file in
    // it, which no unlink removes (root's neither, unlike a read-only folder).
    let stuck = w.region("west").join("disks/web-1.0.0-1.raw");
    std::fs::remove_file(&stuck).unwrap();
    std::fs::create_dir(&stuck).unwrap();
    std::fs::write(stuck.join("held"), "x").unwrap();
    let d = crate::retire::delete_image(
        &w.records,
        b,
        &Default::default(),
        Scope::default(),
        None,
        w.now,
        None,
    )
    .await
    .unwrap();
    assert!(!d.complete());
    assert_eq!(d.record.state, State::Available);
    assert_eq!(d.record.outputs.len(), 1, "{:?}", d.record.outputs);
    assert_eq!(d.record.outputs[0].region, "west");
    assert!(d.failed[0].contains("web-1.0.0-1.raw"), "{:?}", d.failed);
}

#[tokio::test]
async fn bad_policies_name_the_field() {
    let w = world().await;
    let bad = |details: serde_json::Value, rt: &str| {
        let body = policy_body(rt, details);
        let res = w.resources.clone();
        async move {
            let doc = Document::parse("the request", body.to_string(), None).unwrap();
            res.apply(
                &tester(),
                Request::new(Operation::CreateLifecyclePolicy, doc),
            )
            .await
            .unwrap_err()
        }
    };
    let e = bad(
        json!([{"action": {"type": "DELETE"}, "filter": {"type": "AGE", "value": 3}}]),
        "AMI_IMAGE",
    )
    .await;
    assert_eq!(e.code(), ErrorCode::InvalidParameterValue);
    assert_eq!(
        e.problems()[0].field.as_deref(),
        Some("policyDetails[0].filter"),
        "{e}"
    );
    assert!(e.to_string().contains("needs `unit`"), "{e}");
    let e = bad(
        json!([{"action": {"type": "DEPRECATE"}, "filter": {"type": "COUNT", "value": 3}}]),
        "CONTAINER_IMAGE",
    )
    .await;
    assert_eq!(
        e.problems()[0].field.as_deref(),
        Some("policyDetails[0].action.type")
    );
    let e = bad(
        json!([{"action": {"type": "DELETE"}, "filter": {"type": "COUNT", "value": 0}}]),
        "AMI_IMAGE",
    )
    .await;
    assert_eq!(
        e.problems()[0].field.as_deref(),
        Some("policyDetails[0].filter.value")
    );
}

#[tokio::test]
async fn apply_all_runs_enabled_policies_only() {
    let w = world().await;
    for days in [30, 20, 10] {
        w.build(days, &[]).await;
    }
    let mut off = policy_body(
        "AMI_IMAGE",
        json!([{"action": {"type": "DELETE"}, "filter": {"type": "COUNT", "value": 1}}]),
    );
    off["name"] = json!("off");
    off["status"] = json!("DISABLED");
    w.policy(off).await;
    let on = w
        .policy(policy_body(
            "AMI_IMAGE",
            json!([{"action": {"type": "DEPRECATE"}, "filter": {"type": "COUNT", "value": 2}}]),
        ))
        .await;
    let ran = apply_all(&w.store, &Default::default(), w.now)
        .await
        .unwrap();
    assert_eq!(ran.len(), 1);
    assert_eq!(ran[0].0, on.arn);
    let e = ran[0].1.as_ref().unwrap();
    assert_eq!(e.resources.len(), 1);
    assert_eq!(e.resources[0].action, ActionType::Deprecate);
    assert_eq!(tags(&w.region("east")).len(), 4, "nothing deleted");
}

#[tokio::test]
async fn every_action_tells_the_topic_of_the_images_infrastructure_configuration() {
    let w = world().await;
    crate::notify::Topics::new(w.store.clone())
        .create(&tester(), "retired", "http://127.0.0.1:9/hook", &[])
        .await
        .unwrap();
    let topic = format!("{}topic/retired", tester().arn_prefix());
    let doc = Document::parse(
        "the request",
        json!({"name": "small", "snsTopicArn": topic}).to_string(),
        None,
    )
    .unwrap();
    let infra = w
        .resources
        .apply(
            &tester(),
            Request::new(Operation::CreateInfrastructureConfiguration, doc),
        )
        .await
        .unwrap()
        .resource;
    let mut built = Vec::new();
    for days in [30, 20, 10] {
        let mut b = w.build(days, &[]).await;
        b.configurations = vec![infra.arn.clone()];
        w.records.save(&b).await.unwrap();
        built.push(b);
    }
    let p = w
        .policy(policy_body(
            "AMI_IMAGE",
            json!([
                {"action": {"type": "DELETE"}, "filter": {"type": "COUNT", "value": 2}},
                {"action": {"type": "DEPRECATE"}, "filter": {"type": "COUNT", "value": 1}},
            ]),
        ))
        .await;
    let e = w.lifecycle.run(&p, w.now, false).await.unwrap();
    let told = w.store.db().messages(&topic, 10).await.unwrap();
    let mut seen: Vec<(String, String, String)> = told
        .iter()
        .map(|q| {
            let v: serde_json::Value = serde_json::from_str(&q.message.body).unwrap();
            assert_eq!(v["type"], "lifecycle.action");
            assert_eq!(v["data"]["lifecycleExecutionId"], e.id);
            (
                v["data"]["imageBuildVersionArn"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                v["data"]["action"].as_str().unwrap().to_string(),
                v["data"]["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (built[0].arn.clone(), "DELETE".into(), "DELETED".into()),
            (
                built[1].arn.clone(),
                "DEPRECATE".into(),
                "DEPRECATED".into()
            ),
        ]
    );
    // A dry run tells nobody.
    let again = w.lifecycle.run(&p, w.now, true).await.unwrap();
    assert!(again.dry_run);
    assert_eq!(w.store.db().messages(&topic, 10).await.unwrap().len(), 2);
}
