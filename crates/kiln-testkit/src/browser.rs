//! A real browser for tests: Debian's headless Chromium driven through its `chromedriver`
//! (WebDriver, with [fantoccini]) on a free loopback port, its profile in a temporary folder,
//! and axe-core's accessibility checks ([`Browser::axe`]). The driver and every browser process
//! it started are killed when the [`Browser`] is dropped.
//!
//! Unlike the rest of this crate, it returns errors instead of panicking: a test decides
//! whether a missing element is a failure.

/// The WebDriver client the harness drives, for what a test does beyond it (keys, locators).
pub use fantoccini;

use std::fmt;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::wd::TimeoutConfiguration;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where Debian's `chromium-driver` package puts chromedriver.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Where Debian's `chromium` package puts the browser.
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long chromedriver has to answer `/status` after it is spawned.
const DRIVER_START: Duration = Duration::from_secs(10);
/// How long [`Browser::wait_for`] and [`Browser::wait_text`] poll.
const WAIT: Duration = Duration::from_secs(15);
/// Between two polls.
const POLL: Duration = Duration::from_millis(100);
/// How long a script (axe's run, mostly) may take.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);
/// axe-core, vendored in `assets/` (see `assets/SHA256SUMS`).
const AXE_SOURCE: &str = include_str!("../assets/axe-core-4.14.1.min.js");
/// The WCAG 2.0 and 2.1 A and AA rules, the ones [`Browser::axe`] runs.
const AXE_RUN: &str = r#"
const done = arguments[arguments.length - 1];
axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})
  .then(
    (results) => done({violations: results.violations.map((v) => ({
      id: v.id,
      impact: v.impact || null,
      help: v.help,
      nodes: v.nodes.map((n) => {
        const target = n.target
          .map((t) => (Array.isArray(t) ? t.join(' >>> ') : String(t)))
          .join(' ');
        const html = n.html.length > 120 ? n.html.slice(0, 117) + '...' : n.html;
        return target + ' ' + html;
      }),
    }))}),
    (e) => done({error: String(e && e.stack ? e.stack : e)}),
  );
"#;

/// What went wrong starting or driving the browser.
#[derive(Debug)]
pub enum Error {
    /// chromedriver could not be spawned, or a file could not be written.
    Io(String, std::io::Error),
    /// chromedriver exited or did not answer in time; the message carries its log.
    Driver(String),
    /// chromedriver refused to start a browser session.
    Session(fantoccini::error::NewSessionError),
    /// A WebDriver command failed.
    Command(fantoccini::error::CmdError),
    /// A wait ran out of time; the message says what was last seen.
    Timeout(String),
    /// axe-core could not be injected or run, or answered something unexpected.
    Axe(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(what, e) => write!(f, "{what}: {e}"),
            Error::Driver(message) => write!(f, "chromedriver: {message}"),
            Error::Session(e) => write!(f, "starting a WebDriver session: {e}"),
            Error::Command(e) => write!(f, "WebDriver command: {e}"),
            Error::Timeout(message) => write!(f, "timed out: {message}"),
            Error::Axe(message) => write!(f, "axe-core: {message}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(_, e) => Some(e),
            Error::Session(e) => Some(e),
            Error::Command(e) => Some(e),
            Error::Driver(_) | Error::Timeout(_) | Error::Axe(_) => None,
        }
    }
}

impl From<fantoccini::error::CmdError> for Error {
    fn from(e: fantoccini::error::CmdError) -> Error {
        Error::Command(e)
    }
}

/// One rule axe-core found broken on the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule's id, like `image-alt` or `color-contrast`.
    pub id: String,
    /// How bad axe rates it: `minor`, `moderate`, `serious` or `critical`.
    pub impact: Option<String>,
    /// What the rule asks for, in a sentence.
    pub help: String,
    /// The offending elements: each one's CSS selector, then its HTML (cut to 120 characters).
    pub nodes: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.id,
            self.impact.as_deref().unwrap_or("no impact given"),
            self.help
        )?;
        for node in &self.nodes {
            write!(f, "\n    {node}")?;
        }
        Ok(())
    }
}

/// A headless Chromium behind its own chromedriver on a free loopback port. Dropping it kills
/// chromedriver and the browser; [`Browser::close`] ends the session cleanly first.
pub struct Browser {
    client: Client,
    driver: Child,
    /// chromedriver's log and the browser's profile; removed after the processes are killed.
    dir: tempfile::TempDir,
}

impl Browser {
    /// Spawns chromedriver, waits until it is ready (up to 10 s) and opens a session of a
    /// headless Chromium with a fresh profile, a 1280x900 window and a 30 s script timeout.
    pub async fn start() -> Result<Browser, Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::Io("a temporary folder".into(), e))?;
        let port = free_port()?;
        let log_path = dir.path().join("chromedriver.log");
        let log = fs::File::create(&log_path)
            .map_err(|e| Error::Io(format!("creating {}", log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::Io(format!("opening {}", log_path.display()), e))?;
        // Its own process group, so that Drop kills the browser processes it starts with it.
        // Chromium keeps its crash database under $XDG_CONFIG_HOME and dconf writes under
        // $XDG_CACHE_HOME whatever --user-data-dir says: both go to the temporary folder too.
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .map_err(|e| {
                Error::Io(
                    format!("spawning {CHROMEDRIVER} (run `scripts/setup --test` as root)"),
                    e,
                )
            })?;
        // Until the Browser exists, the guard kills chromedriver on every early return.
        let mut guard = DriverGuard(Some(driver));
        wait_ready(&mut guard, port, &log_path).await?;

        let profile = dir.path().join("profile");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-default-apps",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .map_err(Error::Session)?;
        client
            .update_timeouts(TimeoutConfiguration::new(
                Some(SCRIPT_TIMEOUT),
                Some(Duration::from_secs(60)),
                Some(Duration::ZERO),
            ))
            .await?;
        let driver = guard.take().ok_or_else(|| {
            Error::Driver("lost track of the chromedriver process (a bug in the harness)".into())
        })?;
        Ok(Browser {
            client,
            driver,
            dir,
        })
    }

    /// The WebDriver client, for everything this harness does not wrap (`goto`, `find`, ...).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Everything chromedriver logged so far.
    pub fn driver_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default()
    }

    /// Ends the WebDriver session (the browser quits), then stops chromedriver.
    pub async fn close(self) -> Result<(), Error> {
        let closed = self.client.clone().close().await;
        drop(self);
        closed.map_err(Error::Command)
    }

    /// Resizes the browser window to `width` x `height` CSS pixels.
    pub async fn set_size(&self, width: u32, height: u32) -> Result<(), Error> {
        self.client.set_window_size(width, height).await?;
        Ok(())
    }

    /// Writes a PNG screenshot of the window to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<(), Error> {
        let png = self.client.screenshot().await?;
        fs::write(path, png).map_err(|e| Error::Io(format!("writing {}", path.display()), e))
    }

    /// The first element matching the CSS selector `css`, polling for up to 15 s until there
    /// is one.
    pub async fn wait_for(&self, css: &str) -> Result<Element, Error> {
        let deadline = Instant::now() + WAIT;
        let mut failed = None;
        loop {
            match self.client.find(Locator::Css(css)).await {
                Ok(element) => return Ok(element),
                Err(e) if e.is_no_such_element() => {}
                // A page being replaced answers with errors of its own (Chromium's "Node
                // with given id does not belong to the document"): look again.
                Err(e) => failed = Some(e.to_string()),
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "no element matches `{css}` after {} s{}",
                    WAIT.as_secs(),
                    failed
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The text of the first element matching `css`, once it contains `needle` (polling for up
    /// to 15 s); the error says what the text was last.
    pub async fn wait_text(&self, css: &str, needle: &str) -> Result<String, Error> {
        self.wait_text_within(css, needle, WAIT).await
    }

    /// [`Browser::wait_text`], polling for up to `within` (for what takes longer, a build).
    pub async fn wait_text_within(
        &self,
        css: &str,
        needle: &str,
        within: Duration,
    ) -> Result<String, Error> {
        let deadline = Instant::now() + within;
        let mut last = None;
        let mut failed = None;
        loop {
            match self.client.find(Locator::Css(css)).await {
                Ok(element) => match element.text().await {
                    Ok(text) if text.contains(needle) => return Ok(text),
                    Ok(text) => last = Some(text),
                    // Replaced between finding and reading it: look again.
                    Err(e) => failed = Some(e.to_string()),
                },
                Err(e) if e.is_no_such_element() => {}
                // A page being replaced: look again.
                Err(e) => failed = Some(e.to_string()),
            }
            if Instant::now() >= deadline {
                let seen = match (last, failed) {
                    (Some(text), _) => format!("its text was last {text:?}"),
                    (None, Some(e)) => format!("the last error was {e}"),
                    (None, None) => "no element matched".to_string(),
                };
                return Err(Error::Timeout(format!(
                    "the text of `{css}` did not contain {needle:?} after {} s: {seen}",
                    within.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Runs axe-core's WCAG 2.0 and 2.1 level A and AA rules on the current page (injecting
    /// axe first if the page does not have it) and returns what they found broken.
    pub async fn axe(&self) -> Result<Vec<Violation>, Error> {
        let present = self
            .client
            .execute("return typeof window.axe === 'object';", vec![])
            .await?;
        if present != Value::Bool(true) {
            self.client.execute(AXE_SOURCE, vec![]).await?;
        }
        let answer = self.client.execute_async(AXE_RUN, vec![]).await?;
        if let Some(error) = answer.get("error") {
            return Err(Error::Axe(format!("axe.run failed: {error}")));
        }
        let Some(violations) = answer.get("violations").and_then(Value::as_array) else {
            return Err(Error::Axe(format!("unexpected answer: {answer}")));
        };
        violations.iter().map(violation).collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
    }
}

/// Kills chromedriver's process group unless taken out of it: [`Browser::start`]'s error paths.
struct DriverGuard(Option<Child>);

impl DriverGuard {
    fn take(&mut self) -> Option<Child> {
        self.0.take()
    }
}

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            kill_group(child);
        }
    }
}

/// SIGKILLs the process group `child` leads (chromedriver and the browser processes it
/// started), then reaps `child`. The group is signalled before the reaping, while its id
/// cannot have been reused.
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{}", child.id())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    // In case `kill` itself could not run: at least chromedriver goes.
    let _ = child.kill();
    let _ = child.wait();
}

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| Error::Io("binding 127.0.0.1:0".into(), e))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Io("the address of 127.0.0.1:0".into(), e))?
        .port();
    Ok(port)
}

/// Polls chromedriver's `/status` until it says it is ready, it exits, or 10 s pass.
async fn wait_ready(guard: &mut DriverGuard, port: u16, log_path: &Path) -> Result<(), Error> {
    let log = || fs::read_to_string(log_path).unwrap_or_default();
    let deadline = Instant::now() + DRIVER_START;
    loop {
        if let Some(child) = &mut guard.0 {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(Error::Driver(format!(
                        "exited ({status}) before answering on 127.0.0.1:{port}:\n{}",
                        log()
                    )))
                }
                Ok(None) => {}
                Err(e) => return Err(Error::Io("waiting for chromedriver".into(), e)),
            }
        }
        if status_ready(port).await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Driver(format!(
                "not ready on 127.0.0.1:{port} after {} s:\n{}",
                DRIVER_START.as_secs(),
                log()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether chromedriver on `port` answers `GET /status` with `"ready": true`. It keeps the
/// connection open whatever the request says, so the answer is read up to its Content-Length.
async fn status_ready(port: u16) -> bool {
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(
                format!(
                    "GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if complete(&answer) {
                break;
            }
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(2), ask).await {
        Ok(Ok(answer)) => {
            let compact: String = answer.split_whitespace().collect();
            answer.starts_with("HTTP/1.1 200") && compact.contains("\"ready\":true")
        }
        _ => false,
    }
}

/// Whether `answer` holds an HTTP response's headers and the whole body they announce.
fn complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let headers = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    let length = headers.lines().find_map(|line| {
        line.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    match length {
        Some(length) => answer.len() >= end + 4 + length,
        None => false,
    }
}

/// One violation of axe's answer, as [`AXE_RUN`] shaped it.
fn violation(v: &Value) -> Result<Violation, Error> {
    let text = |key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| Error::Axe(format!("a violation without `{key}`: {v}")))
    };
    let nodes = v
        .get("nodes")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Axe(format!("a violation without `nodes`: {v}")))?
        .iter()
        .map(|n| {
            n.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| n.to_string())
        })
        .collect();
    Ok(Violation {
        id: text("id")?,
        impact: v.get("impact").and_then(Value::as_str).map(str::to_string),
        help: text("help")?,
        nodes,
    })
}
