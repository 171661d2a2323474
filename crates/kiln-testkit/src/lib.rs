//! Test support shared by kiln's crates: the real servers their tests talk to (an OCI registry,
//! [`registry::Registry`]; a PostgreSQL cluster, [`postgres::Cluster`]), started on
//! loopback ports in temporary folders and stopped when dropped, and checks that the host tools
//! a test needs are installed (a missing one fails the test with what to run; nothing skips),
//! and a TCP proxy that breaks connections on purpose ([`proxy::CutProxy`]). With the `browser`
//! feature, a headless Chromium driven through chromedriver, with axe-core's accessibility
//! checks ([`browser::Browser`]).
//!
//! Only tests use it (a dev-dependency): failing loudly is its job, so it unwraps.
#![deny(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;

#[cfg(feature = "browser")]
pub mod browser;
pub mod postgres;
pub mod proxy;
pub mod registry;
pub mod tmpfs;

/// Fails the test unless `name` is an executable in `PATH`, saying how to install it.
pub fn require_tool(name: &str) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(name))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    });
    assert!(
        found,
        "`{name}` is not installed (not found in PATH); run `scripts/setup --test` as root to \
         install the test tools"
    );
}
