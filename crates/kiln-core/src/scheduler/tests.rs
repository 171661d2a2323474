//! The scheduler over a store in a temporary folder, real builds over the fake launcher, and
//! a clock the tests move: a month of daily runs in seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, TimeZone, Utc};
use kiln_instance::fake::{FakeExec, FakeLauncher, FakeReply};
use kiln_schedule::ManualClock;
use serde_json::json;

use super::*;
use crate::build::tests::{greeting_launcher, Fixture, COMPONENT};
use crate::build::BuildObserver;
use crate::request::{Document, Operation, Request};

/// Runs each plan as a real build to its end (so that the next tick sees its record).
struct BuildNow {
    fixture: Arc<Fixture>,
    launcher: Mutex<Arc<FakeLauncher>>,
    started: Mutex<Vec<String>>,
}

struct Quiet;
impl BuildObserver for Quiet {
    fn event(&self, _: &crate::build::BuildEvent) {}
}

#[async_trait]
impl Starter for BuildNow {
    async fn start(&self, plan: Plan) -> Result<String, String> {
        let launcher = self.launcher.lock().unwrap().clone();
        let options = crate::build::BuildOptions {
            epoch: Some(0),
            cache_max_bytes: u64::MAX,
            ..crate::build::BuildOptions::default()
        };
        let builder = crate::build::Builder::new(
            self.fixture.home.clone(),
            options,
            plan.origin.clone(),
            launcher,
        )
        .with_store(self.fixture.store.clone());
        let recipe = plan.build_recipe;
        let handle = tokio::runtime::Handle::current();
        let rec = tokio::task::spawn_blocking(move || {
            handle.block_on(builder.build(&recipe, Arc::new(Quiet)))
        })
        .await
        .unwrap()
        .map_err(|e| e.to_string())?;
        self.started.lock().unwrap().push(rec.arn.clone());
        Ok(rec.arn)
    }
}

struct World {
    fixture: Arc<Fixture>,
    resources: Resources,
    clock: ManualClock,
    starter: Arc<BuildNow>,
    scheduler: Scheduler,
}

fn request(op: Operation, body: serde_json::Value, dir: &std::path::Path) -> Request {
    Request::new(
        op,
        Document::parse(
            format!("the {op} request"),
            body.to_string(),
            Some(dir.into()),
        )
        .unwrap(),
    )
}

const P: &str = "arn:kiln:imagebuilder:local:000000000000";

impl World {
    /// A component `greet`, a container recipe over the fixture's parent naming
    /// `greet/x.x.x`, an infrastructure configuration and a pipeline with `schedule`.
    async fn new(schedule: serde_json::Value) -> World {
        let fixture = Arc::new(Fixture::new().await);
        let resources = Resources::new(fixture.store.clone());
        let dir = fixture.dir.path().to_path_buf();
        let who = Principal::local("tester");
        let world_start = Utc::now();
        let clock = ManualClock::new(world_start);
        crate::notify::Topics::new(fixture.store.clone())
            .create(&who, "builds", "http://127.0.0.1:9/hook", &[])
            .await
            .unwrap();
        for (op, body) in [
            (
                Operation::CreateComponent,
                json!({"name": "greet", "semanticVersion": "1.0.0", "platform": "Linux", "data": COMPONENT}),
            ),
            (
                Operation::CreateContainerRecipe,
                json!({"name": "web", "semanticVersion": "1.0.0", "containerType": "DOCKER",
                       "parentImage": "oci:parent:base",
                       "components": [{"componentArn": format!("{P}:component/greet/x.x.x")}]}),
            ),
            (
                Operation::CreateInfrastructureConfiguration,
                json!({"name": "small", "snsTopicArn": format!("{P}:topic/builds")}),
            ),
            (
                Operation::CreateImagePipeline,
                json!({"name": "nightly",
                       "containerRecipeArn": format!("{P}:container-recipe/web/1.0.0"),
                       "infrastructureConfigurationArn": format!("{P}:infrastructure-configuration/small"),
                       "schedule": schedule}),
            ),
        ] {
            resources
                .apply(&who, request(op, body, &dir))
                .await
                .unwrap_or_else(|e| panic!("{op}: {e}"));
        }
        let starter = Arc::new(BuildNow {
            fixture: fixture.clone(),
            launcher: Mutex::new(greeting_launcher()),
            started: Mutex::default(),
        });
        let scheduler = Scheduler::new(
            resources.clone(),
            Records::new(fixture.store.clone()),
            Arc::new(clock.clone()),
            starter.clone(),
        );
        World {
            fixture,
            resources,
            clock,
            starter,
            scheduler,
        }
    }

    fn pipeline_arn(&self) -> String {
        format!("{P}:image-pipeline/nightly")
    }

    async fn pipeline(&self) -> Resource {
        self.resources
            .get(
                &Principal::local("t"),
                &self.pipeline_arn(),
                &[Kind::ImagePipeline],
            )
            .await
            .unwrap()
    }

    /// Moves the clock to `until` in steps of `step`, ticking at each; returns every outcome.
    async fn run_until(&self, until: DateTime<Utc>, step: Duration) -> Vec<Outcome> {
        let mut out = Vec::new();
        while self.clock.now() < until {
            self.clock.advance(step);
            out.extend(self.scheduler.tick().await.unwrap());
        }
        out
    }

    fn started(&self) -> Vec<String> {
        self.starter.started.lock().unwrap().clone()
    }

    async fn runs(&self) -> Vec<Run> {
        self.fixture
            .store
            .db()
            .runs(&self.pipeline_arn(), 1000)
            .await
            .unwrap()
    }
}

/// The next 03:00 UTC after `t`.
fn three_am_after(t: DateTime<Utc>) -> DateTime<Utc> {
    let d = t.date_naive();
    let at = Utc.from_utc_datetime(&d.and_hms_opt(3, 0, 0).unwrap());
    if at > t {
        at
    } else {
        at + Duration::days(1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_pipeline_runs_once_a_day_for_a_month_and_never_twice_after_a_clock_step() {
    let w = World::new(json!({"scheduleExpression": "cron(0 3 * * ? *)",
                              "pipelineExecutionStartCondition": "EXPRESSION_MATCH_ONLY"}))
    .await;
    let start = w.clock.now();
    let first = three_am_after(start);
    // 37-minute steps never land on 03:00 itself: each run is found late, as a real tick is.
    let outcomes = w
        .run_until(
            first + Duration::days(30) + Duration::hours(1),
            Duration::minutes(37),
        )
        .await;
    let started: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| matches!(o.decision, Decision::Started { .. }))
        .collect();
    assert_eq!(started.len(), 31, "{outcomes:#?}");
    assert_eq!(outcomes.len(), 31, "no other decisions: {outcomes:#?}");
    for (i, o) in started.iter().enumerate() {
        assert_eq!(o.at, Some(first + Duration::days(i as i64)), "run {i}");
    }
    let images = w.started();
    assert_eq!(images.len(), 31);
    let records = Records::new(w.fixture.store.clone());
    for arn in &images {
        let r = records.get(arn).await.unwrap().unwrap();
        assert_eq!(r.build_type, BuildType::Scheduled);
        assert_eq!(r.state, State::Available, "{:?}", r.failure);
        assert_eq!(r.pipeline.as_deref(), Some(w.pipeline_arn().as_str()));
    }
    assert_eq!(w.runs().await.len(), 31);

    // The clock stepped back two days and forward again: nothing runs twice.
    let now = w.clock.now();
    w.clock.set(now - Duration::days(2));
    let again = w.run_until(now, Duration::minutes(37)).await;
    assert!(again.is_empty(), "{again:#?}");
    assert_eq!(w.started().len(), 31);

    // kiln down for three days: one catch-up run of the latest missed instant, not three.
    let down = w.clock.now() + Duration::days(3);
    w.clock.set(down);
    let caught = w.scheduler.tick().await.unwrap();
    assert_eq!(caught.len(), 1, "{caught:#?}");
    assert_eq!(caught[0].at, Some(three_am_after(down) - Duration::days(1)));
    assert!(matches!(caught[0].decision, Decision::Started { .. }));

    let status = w.scheduler.status(&w.pipeline().await).await.unwrap();
    assert_eq!(status.date_next_run, Some(three_am_after(down)));
    assert_eq!(status.last_run_status, Some(State::Available));
    assert_eq!(status.consecutive_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_missed_by_more_than_the_catch_up_window_is_recorded_not_built() {
    let w = World::new(json!({"scheduleExpression": "rate(7 days)",
                              "pipelineExecutionStartCondition": "EXPRESSION_MATCH_ONLY"}))
    .await;
    let created = w.pipeline().await.date_created;
    w.clock
        .set(created + Duration::days(7) + Duration::hours(25));
    let o = w.scheduler.tick().await.unwrap();
    assert_eq!(o.len(), 1);
    match &o[0].decision {
        Decision::Skipped { reason } => assert!(reason.starts_with("missed"), "{reason}"),
        d => panic!("{d:?}"),
    }
    assert!(w.started().is_empty());
    assert_eq!(w.runs().await[0].note.split(':').next(), Some("skipped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_condition_builds_again_only_after_a_newer_matching_component() {
    let w = World::new(json!({"scheduleExpression": "cron(0 3 * * ? *)"})).await;
    let first = three_am_after(w.clock.now());
    let o = w
        .run_until(first + Duration::hours(1), Duration::hours(1))
        .await;
    assert_eq!(o.len(), 1);
    match &o[0].decision {
        Decision::Started { reason, .. } => assert_eq!(reason, "it has no image yet"),
        d => panic!("{d:?}"),
    }
    // Three days with nothing new: three runs considered, none built.
    let o = w
        .run_until(
            first + Duration::days(3) + Duration::hours(1),
            Duration::hours(1),
        )
        .await;
    assert_eq!(o.len(), 3, "{o:#?}");
    for x in &o {
        match &x.decision {
            Decision::Skipped { reason } => {
                assert!(reason.contains("no dependency updates"), "{reason}")
            }
            d => panic!("{d:?}"),
        }
    }
    // A component the recipe does not name is no reason.
    let dir = w.fixture.dir.path().to_path_buf();
    w.resources
        .apply(
            &Principal::local("tester"),
            request(
                Operation::CreateComponent,
                json!({"name": "other", "semanticVersion": "2.0.0", "platform": "Linux",
                       "data": COMPONENT.replace("name: greet", "name: other")}),
                &dir,
            ),
        )
        .await
        .unwrap();
    let o = w
        .run_until(
            first + Duration::days(4) + Duration::hours(1),
            Duration::hours(1),
        )
        .await;
    assert_eq!(o.len(), 1, "{o:#?}");
    assert!(matches!(o[0].decision, Decision::Skipped { .. }), "{o:#?}");
    // A newer version of a component the recipe names by `x.x.x`: the next run builds it.
    w.resources
        .apply(
            &Principal::local("tester"),
            request(
                Operation::CreateComponent,
                json!({"name": "greet", "semanticVersion": "1.0.1", "platform": "Linux",
                       "data": COMPONENT.replace("echo hello", "echo hello again")}),
                &dir,
            ),
        )
        .await
        .unwrap();
    let o = w
        .run_until(
            first + Duration::days(5) + Duration::hours(1),
            Duration::hours(1),
        )
        .await;
    assert_eq!(o.len(), 1, "{o:#?}");
    let image = match &o[0].decision {
        Decision::Started { reason, image } => {
            assert!(
                reason.starts_with("newer versions: component greet")
                    && reason.contains("greet/1.0.1/1"),
                "{reason}"
            );
            image.clone()
        }
        d => panic!("{d:?}"),
    };
    let rec = Records::new(w.fixture.store.clone())
        .get(&image)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        rec.components[0].arn.as_deref(),
        Some(format!("{P}:component/greet/1.0.1/1").as_str())
    );
    let o = w
        .run_until(
            first + Duration::days(6) + Duration::hours(1),
            Duration::hours(1),
        )
        .await;
    assert!(matches!(o[0].decision, Decision::Skipped { .. }), "{o:#?}");
    assert_eq!(w.started().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_scheduled_runs_disable_the_pipeline_and_manual_starts_do_not_count() {
    let w = World::new(json!({"scheduleExpression": "rate(1 hour)",
                              "pipelineExecutionStartCondition": "EXPRESSION_MATCH_ONLY",
                              "autoDisablePolicy": {"failureCount": 2}}))
    .await;
    *w.starter.launcher.lock().unwrap() = Arc::new(FakeLauncher::new(|e: &FakeExec| {
        match e.script.as_deref() {
            Some(s) if s.contains("echo hello") => FakeReply::fail(3, "no space left"),
            _ => FakeReply::ok(),
        }
    }));
    let created = w.pipeline().await.date_created;
    w.clock.set(created + Duration::minutes(61));
    let o = w.scheduler.tick().await.unwrap();
    assert!(matches!(o[0].decision, Decision::Started { .. }), "{o:#?}");
    assert_eq!(
        w.scheduler
            .status(&w.pipeline().await)
            .await
            .unwrap()
            .consecutive_failures,
        1
    );
    assert_eq!(
        w.scheduler
            .status(&w.pipeline().await)
            .await
            .unwrap()
            .last_run_status,
        Some(State::Failed)
    );

    // A failing manual start between them counts for nothing.
    let plan = pipeline::plan(&w.resources, &Principal::local("tester"), &w.pipeline_arn())
        .await
        .unwrap();
    let manual = w.starter.start(plan).await.unwrap();
    let manual = Records::new(w.fixture.store.clone())
        .get(&manual)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (manual.state, manual.build_type),
        (State::Failed, BuildType::UserInitiated)
    );
    assert_eq!(
        w.scheduler
            .status(&w.pipeline().await)
            .await
            .unwrap()
            .consecutive_failures,
        1
    );

    w.clock.advance(Duration::hours(1));
    w.scheduler.tick().await.unwrap();
    assert_eq!(
        w.scheduler
            .status(&w.pipeline().await)
            .await
            .unwrap()
            .consecutive_failures,
        2
    );
    w.clock.advance(Duration::hours(1));
    let o = w.scheduler.tick().await.unwrap();
    assert_eq!(o.len(), 1, "{o:#?}");
    assert_eq!(o[0].decision, Decision::Disabled { failures: 2 });
    let p = w.pipeline().await;
    assert_eq!(p.status, Some(PipelineStatus::Disabled));
    // Its topic is told, by a message stored with the change.
    let told = w
        .fixture
        .store
        .db()
        .messages(&format!("{P}:topic/builds"), 10)
        .await
        .unwrap();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].message.event, "pipeline.disabled");
    let body: serde_json::Value = serde_json::from_str(&told[0].message.body).unwrap();
    assert_eq!(body["type"], "pipeline.disabled");
    assert_eq!(body["data"]["imagePipelineArn"], w.pipeline_arn());
    assert_eq!(body["data"]["consecutiveFailures"], 2);
    let s = w.scheduler.status(&p).await.unwrap();
    assert_eq!(s.date_next_run, None, "a disabled pipeline has no next run");
    // Disabled: no more runs.
    w.clock.advance(Duration::hours(5));
    assert!(w.scheduler.tick().await.unwrap().is_empty());
    assert_eq!(w.started().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_scheduler_on_the_same_store_starts_nothing_twice() {
    let w = World::new(json!({"scheduleExpression": "rate(1 hour)",
                              "pipelineExecutionStartCondition": "EXPRESSION_MATCH_ONLY"}))
    .await;
    let other = Scheduler::new(
        w.resources.clone(),
        Records::new(w.fixture.store.clone()),
        Arc::new(w.clock.clone()),
        w.starter.clone(),
    );
    let created = w.pipeline().await.date_created;
    w.clock.set(created + Duration::minutes(61));
    let (a, b) = tokio::join!(w.scheduler.tick(), other.tick());
    let all: Vec<Outcome> = a.unwrap().into_iter().chain(b.unwrap()).collect();
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(w.started().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_policies_run_once_a_day() {
    let mut w = World::new(json!({"scheduleExpression": "rate(1 day)",
                                  "pipelineExecutionStartCondition": "EXPRESSION_MATCH_ONLY"}))
    .await;
    w.scheduler = Scheduler::new(
        w.resources.clone(),
        Records::new(w.fixture.store.clone()),
        Arc::new(w.clock.clone()),
        w.starter.clone(),
    )
    .with_lifecycle(Default::default());
    let lifecycle = |o: &[Outcome]| {
        o.iter()
            .filter(|o| matches!(o.decision, Decision::Lifecycle { .. }))
            .count()
    };
    assert_eq!(lifecycle(&w.scheduler.tick().await.unwrap()), 1);
    assert_eq!(lifecycle(&w.scheduler.tick().await.unwrap()), 0);
    w.clock.advance(Duration::hours(25));
    assert_eq!(lifecycle(&w.scheduler.tick().await.unwrap()), 1);
    let runs = w.fixture.store.db().runs(LIFECYCLE_RUNS, 10).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].note, "no enabled lifecycle policies");
}
