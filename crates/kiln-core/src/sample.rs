//! Realistic image records for benchmarks (feature `sample`): four components of five timed
//! steps each and 100 packages, as a finished build has them, so that the store holds what it
//! holds in use (about 24 KB a record).

use std::path::PathBuf;

use chrono::Utc;

use crate::record::{
    CacheUse, ComponentRecord, ImageRecord, Package, State, StepTiming, LOCAL_REGION,
};
use crate::version::Version;

/// Names the records of [`image_record`] use (`img-0` to `img-49`).
pub const NAMES: usize = 50;

/// The name and version of the `i`-th sample record (what a load generator needs to name the
/// stored images without reading them).
pub fn name_version(i: usize) -> (String, Version) {
    let version = Version {
        major: 1,
        minor: (i / NAMES % 20) as u32,
        patch: (i / 1000) as u32,
    };
    (format!("img-{}", i % NAMES), version)
}

/// The `i`-th sample record of `account`: AVAILABLE, with its whole state history, build 0 and
/// no ARN yet (the caller numbers it, with [`crate::record::Records::create`] or by hand).
///
/// `(name, version)` is different for every `i` (50 names, 20 minor versions, then the patch),
/// so a store filled with `0..10_000` holds 10,000 image versions of one build each.
pub fn image_record(i: usize, account: &str) -> ImageRecord {
    let (name, version) = name_version(i);
    let prefix = format!("arn:kiln:imagebuilder:{LOCAL_REGION}:{account}");
    let components = (0..4)
        .map(|c| ComponentRecord {
            name: format!("component-{c}"),
            source: format!("{prefix}:component/c{c}/1.0.0/1"),
            arn: Some(format!("{prefix}:component/c{c}/1.0.0/1")),
            document_sha256: format!("{:064x}", c),
            parameters: vec![],
            cache_key: format!("{:064x}", i * 7 + c),
            cache: CacheUse::Hit,
            layer: Some(format!("sha256:{:064x}", i * 11 + c)),
            layer_size: 1 << 20,
            duration_ms: 1234,
            steps: (0..5)
                .map(|s| StepTiming {
                    step: format!("build/step-{s}"),
                    action: "ExecuteBash".into(),
                    status: kiln_toe::report::StepStatus::Success,
                    duration_ms: 100,
                })
                .collect(),
        })
        .collect();
    let packages = (0..100)
        .map(|p| Package {
            name: format!("package-{p}"),
            version: format!("1.{p}.{}", i % 3),
            architecture: "amd64".into(),
        })
        .collect();
    let mut r = ImageRecord {
        arn: String::new(),
        name,
        version,
        build: 0,
        state: State::Pending,
        history: vec![],
        recipe: PathBuf::from("recipe.yml"),
        recipe_sha256: format!("{:064x}", i),
        parent: None,
        components,
        tests: None,
        disk: None,
        failure: None,
        outputs: vec![],
        layers: vec![],
        packages,
        created: Utc::now(),
        duration_ms: 42_000,
        logs: PathBuf::new(),
        run_dir: None,
        host: None,
        owner: "bench".into(),
        account: account.into(),
        pipeline: Some(format!("{prefix}:image-pipeline/p{}", i % NAMES)),
        recipe_arn: None,
        configurations: vec![],
        distributing: vec![],
        tags: Default::default(),
        usage: None,
        build_type: crate::record::BuildType::UserInitiated,
        triggers: vec![],
        network: None,
        builder: None,
        scan: None,
        account_copies: Vec::new(),
        supply_chain: None,
        attempt: None,
    };
    for s in [
        State::Pending,
        State::Building,
        State::Testing,
        State::Distributing,
        State::Available,
    ] {
        r.set_state(s, None);
    }
    r
}
