//! The browser harness against Debian's real Chromium and chromedriver (`scripts/setup --test`
//! installs them): axe-core finds the problems of a page made with them and none on a clean
//! one, waits see text a script writes late, screenshots are PNGs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use kiln_testkit::browser::{Browser, Violation};

/// Writes `html` to `dir/name` and returns its `file://` URL.
fn page(dir: &Path, name: &str, html: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, html).unwrap();
    format!("file://{}", path.display())
}

fn listed(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn axe_reports_the_problems_of_a_bad_page() {
    let dir = tempfile::tempdir().unwrap();
    let url = page(
        dir.path(),
        "bad.html",
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Bad page</title></head>
<body>
  <img src="missing.png">
  <input type="text" name="who">
  <p style="color: #c8c8c8; background: #ffffff">Faint text nobody can read.</p>
</body></html>"#,
    );
    let browser = Browser::start().await.unwrap();
    browser.client().goto(&url).await.unwrap();
    browser.wait_for("img").await.unwrap();
    let violations = browser.axe().await.unwrap();
    let ids: Vec<&str> = violations.iter().map(|v| v.id.as_str()).collect();
    for expected in ["image-alt", "label", "color-contrast", "html-has-lang"] {
        assert!(
            ids.contains(&expected),
            "axe did not report {expected}; it reported:\n{}",
            listed(&violations)
        );
    }
    let image_alt = violations.iter().find(|v| v.id == "image-alt").unwrap();
    assert_eq!(image_alt.impact.as_deref(), Some("critical"));
    assert!(
        image_alt.nodes.iter().any(|n| n.contains("missing.png")),
        "{image_alt}"
    );
    // A second run reuses the axe already injected.
    assert_eq!(browser.axe().await.unwrap(), violations);
    browser.close().await.unwrap();
}

#[tokio::test]
async fn axe_finds_nothing_on_a_good_page() {
    let dir = tempfile::tempdir().unwrap();
    let url = page(
        dir.path(),
        "good.html",
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Good page</title></head>
<body>
  <main>
    <h1>A good page</h1>
    <p>Plain text, dark on light.</p>
    <img src="missing.png" alt="A picture of nothing">
    <label for="who">Your name</label>
    <input id="who" type="text" name="who">
  </main>
</body></html>"#,
    );
    let browser = Browser::start().await.unwrap();
    browser.client().goto(&url).await.unwrap();
    browser.wait_for("main").await.unwrap();
    let violations = browser.axe().await.unwrap();
    assert!(violations.is_empty(), "{}", listed(&violations));
    browser.close().await.unwrap();
}

#[tokio::test]
async fn wait_text_sees_late_text_and_screenshots_are_png() {
    let dir = tempfile::tempdir().unwrap();
    let url = page(
        dir.path(),
        "late.html",
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Late</title></head>
<body><main><p id="status">starting</p></main>
<script>
  setTimeout(() => { document.getElementById('status').textContent = 'build 42 succeeded'; }, 700);
</script>
</body></html>"#,
    );
    let browser = Browser::start().await.unwrap();
    browser.set_size(800, 600).await.unwrap();
    browser.client().goto(&url).await.unwrap();
    let text = browser.wait_text("#status", "succeeded").await.unwrap();
    assert_eq!(text, "build 42 succeeded");

    let shot = dir.path().join("shot.png");
    browser.screenshot(&shot).await.unwrap();
    let png = std::fs::read(&shot).unwrap();
    assert!(png.len() > 100, "a {}-byte screenshot", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // Dropped without close: Drop kills chromedriver and the browser all the same.
    drop(browser);
}
