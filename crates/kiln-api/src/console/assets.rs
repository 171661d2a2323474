//! The console's static files, embedded in the binary: htmx and Pico CSS,
//! pinned copies from the npm registry whose digests `assets/SHA256SUMS` records (a unit test
//! checks them), and the console's own stylesheet and script (the live log).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// The embedded files: the name they are served as, the file they come from, their type.
pub const FILES: [(&str, &str, &[u8], &str); 4] = [
    (
        "htmx.min.js",
        "htmx-2.0.11.min.js",
        include_bytes!("../../assets/htmx-2.0.11.min.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "console.js",
        "console.js",
        include_bytes!("../../assets/console.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "pico.min.css",
        "pico-2.1.1.min.css",
        include_bytes!("../../assets/pico-2.1.1.min.css"),
        "text/css; charset=utf-8",
    ),
    (
        "console.css",
        "console.css",
        include_bytes!("../../assets/console.css"),
        "text/css; charset=utf-8",
    ),
];

/// Answers `/console/assets/NAME`.
pub fn serve(name: &str) -> Response {
    match FILES.iter().find(|(n, ..)| *n == name) {
        Some((_, _, body, kind)) => super::harden(
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, *kind),
                    // A new kiln may bring new files under the same names: an hour, not forever.
                    (header::CACHE_CONTROL, "public, max-age=3600"),
                ],
                *body,
            )
                .into_response(),
        ),
        None => super::plain(StatusCode::NOT_FOUND, "no such console file"),
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    #[test]
    fn the_vendored_files_are_the_ones_their_digests_name() {
        let sums = include_str!("../../assets/SHA256SUMS");
        let mut checked = 0;
        for (_, file, body, _) in super::FILES {
            if file.starts_with("console.") {
                continue;
            }
            let want = sums
                .lines()
                .find_map(|l| {
                    l.split_once("  ")
                        .filter(|(_, f)| *f == file)
                        .map(|(d, _)| d)
                })
                .unwrap_or_else(|| panic!("{file} is not in assets/SHA256SUMS"));
            let got = Sha256::digest(body)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>();
            assert_eq!(got, want, "{file} is not the pinned file");
            checked += 1;
        }
        assert_eq!(checked, 2);
    }
}
