//! The web console in a real browser (headless Chromium through chromedriver) against a real
//! `kiln serve`: a person signs in with an access key, writes a component whose mistake is shown
//! at its line and then fixed, creates a pipeline with the wizard by keyboard alone, runs it and
//! watches the build log grow live until the image is AVAILABLE, and sees a failing image's
//! step, exit code and last lines. Every page passes axe-core's WCAG 2.1 A and AA rules in the
//! light and the dark theme, and none scrolls sideways at 360 px.
//!
//! The images build in sandboxes from a parent of a few host programs pushed to a loopback
//! registry, so no Debian bootstrap or VM is needed. `KILN_CONSOLE_SHOTS=DIR` saves
//! screenshots there (docs/console/ is made that way); `KILN_BENCH_OUT=FILE` appends the
//! measured log latency (bench/console.sh).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::text;
use kiln_testkit::browser::fantoccini::key::Key;
use kiln_testkit::browser::fantoccini::Locator;
use kiln_testkit::browser::Browser;
use kiln_testkit::registry::{free_port, Registry};

/// How long a tiny image's build may take (a loaded CI machine).
const BUILD: std::time::Duration = std::time::Duration::from_secs(300);

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The document the test writes, with its one typo when `typo`.
fn document(typo: bool) -> String {
    let action = if typo { "ExecuteBsh" } else { "ExecuteBash" };
    format!(
        "name: ticks\nschemaVersion: 1.0\nparameters:\n  - fail:\n      type: string\n      default: \"0\"\n      description: the last step's exit code\nphases:\n  - name: build\n    steps:\n      - name: Tick\n        action: {action}\n        inputs:\n          commands:\n            - for i in 1 2 3 4 5 6 7 8; do echo \"tick $i $(date +%s%3N)\"; sleep 1; done\n      - name: Finish\n        action: ExecuteBash\n        inputs:\n          commands:\n            - echo \"finishing with {{{{ fail }}}}\"\n            - exit {{{{ fail }}}}\n"
    )
}

struct Ui {
    b: Browser,
    base: String,
    shots: Option<PathBuf>,
    /// Pages already checked with axe, by path and theme.
    checked: Vec<String>,
}

impl Ui {
    async fn go(&self, path: &str) {
        self.b
            .client()
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
    }

    async fn path(&self) -> String {
        let u = self.b.client().current_url().await.unwrap();
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        }
    }

    async fn el(&self, css: &str) -> kiln_testkit::browser::fantoccini::elements::Element {
        self.b.wait_for(css).await.unwrap()
    }

    /// Presses Tab until the element `id` has the focus (as a keyboard user reaches it).
    async fn tab_to(&self, id: &str) {
        // The page it is on is there (a form just sent may still be loading the next one).
        self.el(&format!("#{id}")).await;
        let c = self.b.client();
        for _ in 0..80 {
            let Ok(active) = c.active_element().await else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            if active.attr("id").await.ok().flatten().as_deref() == Some(id) {
                return;
            }
            let _ = active.send_keys(&Key::Tab).await;
        }
        panic!("Tab never reached #{id} on {}", self.path().await);
    }

    /// Types into the focused field (after clearing it) by keyboard.
    async fn type_in(&self, id: &str, value: &str) {
        self.tab_to(id).await;
        let el = self.b.client().active_element().await.unwrap();
        // Select all and type over it: what a person does.
        el.send_keys(&format!("{}a", Key::Control)).await.unwrap();
        el.send_keys(&Key::Backspace).await.unwrap();
        el.send_keys(value).await.unwrap();
    }

    async fn enter(&self) {
        let el = self.b.client().active_element().await.unwrap();
        el.send_keys(&Key::Enter).await.unwrap();
    }

    /// axe-core on the page as it is (in the theme it shows), noted per path and theme.
    async fn accessible(&mut self) {
        let path = self.path().await;
        let theme = self
            .b
            .client()
            .execute(
                "return document.documentElement.getAttribute('data-theme') || 'light'",
                vec![],
            )
            .await
            .unwrap();
        let theme = theme.as_str().unwrap_or("light").to_string();
        let key = format!("{theme} {}", path.split('?').next().unwrap_or(""));
        let v = self.b.axe().await.unwrap();
        assert!(
            v.is_empty(),
            "{path} ({theme} theme) breaks WCAG rules:\n{}",
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        if !self.checked.contains(&key) {
            self.checked.push(key);
        }
    }

    async fn shot(&self, name: &str) {
        if let Some(dir) = &self.shots {
            std::fs::create_dir_all(dir).unwrap();
            self.b
                .screenshot(&dir.join(format!("{name}.png")))
                .await
                .unwrap();
        }
    }

    /// Switches the theme with the footer's button, by keyboard.
    async fn toggle_theme(&self, to: &str) {
        self.tab_to("theme-toggle").await;
        self.enter().await;
        self.b
            .wait_for(&format!("html[data-theme={to}] main"))
            .await
            .unwrap();
    }

    /// No page may scroll sideways on a 360 px phone.
    async fn fits(&self, width: u32) {
        let got = self
            .b
            .client()
            .execute(
                "return [document.documentElement.scrollWidth, window.innerWidth]",
                vec![],
            )
            .await
            .unwrap();
        let (scroll, inner) = (got[0].as_u64().unwrap(), got[1].as_u64().unwrap());
        assert!(
            scroll <= inner,
            "{} is {scroll} px wide in a {width} px window ({inner} px inside)",
            self.path().await
        );
    }

    /// Runs the wizard by keyboard; the pipeline's page path.
    async fn wizard(
        &mut self,
        pipeline: &str,
        component: &str,
        parameters: &str,
        host: &str,
    ) -> String {
        self.go("/console/wizard").await;
        self.el("#recipeName").await;
        self.accessible().await;
        self.type_in("recipeName", pipeline).await;
        self.type_in("recipeVersion", "1.0.0").await;
        self.type_in("parentImage", &format!("docker://{host}/base/tiny:1.0.0"))
            .await;
        self.type_in("repository", pipeline).await;
        self.enter().await;
        self.b.wait_text("#step-title", "Components").await.unwrap();
        self.accessible().await;
        self.type_in("component-1", component).await;
        self.type_in("parameters-1", parameters).await;
        self.enter().await;
        self.b
            .wait_text("#step-title", "Build infrastructure")
            .await
            .unwrap();
        self.accessible().await;
        self.type_in("infraName", &format!("{pipeline}-builders"))
            .await;
        self.enter().await;
        self.b
            .wait_text("#step-title", "Distribution")
            .await
            .unwrap();
        self.accessible().await;
        self.type_in("distName", &format!("{pipeline}-dist")).await;
        self.type_in("distRegion", "reg").await;
        self.enter().await;
        self.b
            .wait_text("#step-title", "Pipeline and schedule")
            .await
            .unwrap();
        self.accessible().await;
        self.type_in("pipelineName", pipeline).await;
        self.type_in("scheduleExpression", "cron(0 6 * * ? *)")
            .await;
        // The preview follows the typing: the next five runs.
        self.b
            .wait_text("#schedule-preview", "06:00 every day")
            .await
            .unwrap();
        let runs = self
            .b
            .client()
            .find_all(Locator::Css("#schedule-preview li"))
            .await
            .unwrap();
        assert_eq!(runs.len(), 5, "the preview lists the next five runs");
        self.tab_to("pipelineName").await;
        self.enter().await;
        self.b.wait_text("#step-title", "Review").await.unwrap();
        self.accessible().await;
        let review = self.b.wait_text("#review", pipeline).await.unwrap();
        assert!(review.contains("at 06:00 every day"), "{review}");
        self.tab_to("create").await;
        self.enter().await;
        self.b.wait_text("h1", pipeline).await.unwrap();
        let at = self.path().await;
        assert!(at.starts_with("/console/pipeline?arn="), "{at}");
        at
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_builds_an_image_through_the_console() {
    kiln_testkit::require_tool("skopeo");
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let config = d.join("config.yaml");

    // The parent: bash, date and sleep, in a loopback registry.
    let registry = Registry::start();
    let host = registry.host();
    common::push_tiny_parent(d, &host, &["bash", "sh", "date", "sleep", "cat"]);

    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "regions:\n  reg: {{registry: \"{host}\", namespace: golden}}\ntrust:\n  untrustedComponents: sandbox\nserve:\n  listen: \"127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    let kiln = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .env("KILN_HOME", &home)
            .env("KILN_CONFIG", &config)
            .env("KILN_PLAIN", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "kiln {args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    };
    let account: serde_json::Value =
        serde_json::from_str(&kiln(&["account", "create", "ada", "-o", "json"])).unwrap();
    let key_id = account["accessKeyId"].as_str().unwrap().to_string();
    let secret = account["secretAccessKey"].as_str().unwrap().to_string();
    let account_id = account["accountId"].as_str().unwrap().to_string();

    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .env("KILN_HOME", &home)
        .env("KILN_CONFIG", &config)
        .env("KILN_PLAIN", "1")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _serve = Serve(child);
    let base = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("kiln serve said {first:?}"))
        .to_string();

    let mut ui = Ui {
        b: Browser::start().await.unwrap(),
        base,
        shots: std::env::var_os("KILN_CONSOLE_SHOTS").map(PathBuf::from),
        checked: Vec::new(),
    };

    // Signing in: a wrong secret is refused, the right one lands where the person was going.
    ui.go("/console/components").await;
    ui.el("#access-key-id").await;
    assert!(ui.path().await.starts_with("/console/signin?next="));
    ui.accessible().await;
    ui.type_in("access-key-id", &key_id).await;
    ui.type_in("secret-access-key", "not-the-secret").await;
    ui.enter().await;
    ui.b.wait_text("#refused", "secret").await.unwrap();
    ui.type_in("access-key-id", &key_id).await;
    ui.type_in("secret-access-key", &secret).await;
    ui.enter().await;
    ui.b.wait_text("h1", "Components").await.unwrap();
    assert_eq!(ui.path().await, "/console/components");

    // A component: the typo is shown at its line and column as it is typed, then fixed.
    ui.go("/console/components/new").await;
    ui.type_in("component-name", "ticks").await;
    ui.type_in("component-version", "1.0.0").await;
    ui.type_in("component-data", &document(true)).await;
    let told = ui.b.wait_text("#diagnostics", "line 12").await.unwrap();
    assert!(told.contains("ExecuteBsh"), "{told}");
    ui.accessible().await;
    ui.shot("component-editor").await;
    ui.type_in("component-data", &document(false)).await;
    ui.b.wait_text("#diagnostics", "valid").await.unwrap();
    ui.tab_to("create-component").await;
    ui.enter().await;
    ui.b.wait_text("h1", "ticks").await.unwrap();
    ui.accessible().await;
    let component = format!("arn:kiln:imagebuilder:local:{account_id}:component/ticks/1.0.0/1");

    // A pipeline by the wizard, by keyboard; then Run now, and the log as it is written.
    let pipeline = ui.wizard("web", &component, "", &host).await;
    ui.accessible().await;
    ui.shot("pipeline").await;
    ui.tab_to("run-now").await;
    ui.enter().await;
    ui.el("#log").await;
    assert!(ui.path().await.starts_with("/console/image?arn="));
    // When each line appears, by the browser's clock (the same host's as the step's `date`).
    ui.b.client()
        .execute(
            "window.__seen = []; new MutationObserver(function (ms) { ms.forEach(function (m) { m.addedNodes.forEach(function (n) { window.__seen.push([Date.now(), n.textContent]); }); }); }).observe(document.getElementById('log'), {childList: true});",
            vec![],
        )
        .await
        .unwrap();
    ui.accessible().await;
    ui.b.wait_text("#log", "tick 2 ").await.unwrap();
    ui.b.client()
        .execute(
            "document.getElementById('log').scrollIntoView({block: 'end'})",
            vec![],
        )
        .await
        .unwrap();
    ui.shot("image-running").await;
    ui.b.wait_text("#log", "tick 4 ").await.unwrap();
    let seen =
        ui.b.client()
            .execute("return window.__seen", vec![])
            .await
            .unwrap();
    let mut latencies: Vec<i64> = seen
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let shown = e[0].as_i64()?;
            let line = e[1].as_str()?;
            let stamp: i64 = line
                .split("tick ")
                .nth(1)?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some(shown - stamp)
        })
        .collect();
    latencies.sort_unstable();
    assert!(
        latencies.len() >= 2,
        "lines arrived live, not only when the page loaded: {seen}"
    );
    // A reload mid-build: the page shows what was written and follows on from there, no line
    // lost or repeated.
    ui.b.client().refresh().await.unwrap();
    let log = ui.b.wait_text("#log", "tick 8 ").await.unwrap();
    for i in 1..=8 {
        let n = log.matches(&format!("tick {i} ")).count();
        assert_eq!(n, 1, "tick {i} is shown {n} times after a reload:\n{log}");
    }
    ui.b.wait_text_within("#image-state", "AVAILABLE", BUILD)
        .await
        .unwrap();
    let median = latencies[latencies.len() / 2];
    let worst = latencies[latencies.len() - 1];
    eprintln!("log latency (step's echo to the browser's page): median {median} ms, worst {worst} ms over {} lines", latencies.len());
    if let Some(out) = std::env::var_os("KILN_BENCH_OUT") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .unwrap();
        writeln!(
            f,
            "console_log_latency_ms median={median} worst={worst} lines={}",
            latencies.len()
        )
        .unwrap();
    }
    let outputs = ui.b.wait_text("#summary", "golden/web").await.unwrap();
    assert!(
        outputs.contains("podman run") || outputs.contains("skopeo"),
        "{outputs}"
    );
    ui.accessible().await;
    ui.shot("image").await;

    // Links the pipeline's page has: its recipe and configurations.
    ui.go(&pipeline).await;
    let mut details = Vec::new();
    for a in
        ui.b.client()
            .find_all(Locator::Css("dl.kv a"))
            .await
            .unwrap()
    {
        let href = a.attr("href").await.unwrap().unwrap();
        details.push(href.trim_start_matches(&ui.base).to_string());
    }
    assert!(details.len() >= 3, "{details:?}");

    // A failing image: the step, its exit code and its last lines, on the image's page; this
    // wizard and image in the dark theme.
    ui.toggle_theme("dark").await;
    let failing = ui.wizard("broken", &component, "fail=3", &host).await;
    ui.tab_to("run-now").await;
    ui.enter().await;
    ui.b.wait_text_within("#image-state", "FAILED", BUILD)
        .await
        .unwrap();
    let failure = ui.b.wait_text("#failure", "Finish").await.unwrap();
    assert_eq!(
        ui.el("#exit-code").await.text().await.unwrap(),
        "3",
        "{failure}"
    );
    let lines = ui.el("#failure-lines").await.text().await.unwrap();
    assert!(lines.contains("finishing with 3"), "{lines}");
    ui.accessible().await;
    ui.shot("image-failed").await;
    let failed_image = ui.path().await;

    // Every page, in both themes, and at a phone's width.
    let mut pages = vec![
        "/console/pipelines".to_string(),
        pipeline.clone(),
        failing,
        "/console/images".into(),
        failed_image,
        "/console/components".into(),
        format!("/console/component?arn={component}"),
        "/console/components/new".into(),
        "/console/wizard".into(),
        "/console/recipes".into(),
        "/console/infrastructure-configurations".into(),
        "/console/distribution-configurations".into(),
        "/console/lifecycle-policies".into(),
        "/console/topics".into(),
        // The error page.
        "/console/no-such-page".into(),
    ];
    pages.extend(details);
    for p in &pages {
        ui.go(p).await;
        ui.el("html[data-theme=dark] main").await;
        ui.accessible().await;
    }
    ui.go(&pipeline).await;
    ui.shot("pipeline-dark").await;
    ui.toggle_theme("light").await;
    for p in &pages {
        ui.go(p).await;
        ui.el("html[data-theme=light] main").await;
        ui.accessible().await;
    }
    ui.go("/console/pipelines").await;
    ui.shot("pipelines").await;
    ui.b.set_size(360, 800).await.unwrap();
    for p in &pages {
        ui.go(p).await;
        ui.el("main").await;
        ui.fits(360).await;
    }
    ui.shot("pipelines-phone").await;
    // The sign-in page in the dark theme: signing out lands there.
    ui.b.set_size(1280, 900).await.unwrap();
    ui.go("/console/pipelines").await;
    ui.toggle_theme("dark").await;
    ui.tab_to("sign-out").await;
    ui.enter().await;
    ui.b.wait_for("html[data-theme=dark] #access-key-id")
        .await
        .unwrap();
    ui.accessible().await;
    eprintln!(
        "checked {} pages with axe in {:.0?}",
        ui.checked.len(),
        t0.elapsed()
    );
    ui.b.close().await.unwrap();
}
