//! `kiln serve` driven by the real clients: runs the pytest suite in `tests/api` (boto3 and the
//! AWS CLI v1, every answer checked against botocore's imagebuilder model) with the test venv's
//! python, against this build's kiln and the shared test home (so the Debian bootstrap that the
//! build scenarios start from is cached across runs).
//!
//! The venv comes from `scripts/setup --test` (`$KILN_TEST_TOOLS/venv`, default
//! `/opt/kiln-test/venv`); without it the test is skipped with a message, except in CI, where it
//! fails. `KILN_API_TEST_MARK` selects by marker (`not build` leaves out the image builds);
//! `KILN_API_TEST_ARGS` adds pytest arguments, split at spaces (`-x -k paging`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

/// The venv's python, when it has what the suite imports.
fn python() -> Result<PathBuf, String> {
    let python = match std::env::var_os("KILN_API_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let tools =
                std::env::var("KILN_TEST_TOOLS").unwrap_or_else(|_| "/opt/kiln-test".into());
            PathBuf::from(tools).join("venv/bin/python")
        }
    };
    if !python.exists() {
        return Err(format!("no test venv at {}", python.display()));
    }
    let probe = Command::new(&python)
        .args(["-c", "import boto3, botocore, pytest, awscli"])
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !probe.status.success() {
        return Err(format!(
            "{} lacks boto3, botocore, pytest or awscli: {}",
            python.display(),
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    Ok(python)
}

#[test]
fn boto3_and_the_aws_cli_against_kiln_serve() {
    let python = match python() {
        Ok(p) => p,
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: {why}; run `scripts/setup --test` to run the API suite");
            return;
        }
        Err(why) => panic!("{why}: CI runs `scripts/setup --test`, which installs it"),
    };
    let home = common::home();
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "pytest", "tests/api", "-q", "-rs"])
        .current_dir(common::repo())
        .env("KILN_BIN", env!("CARGO_BIN_EXE_kiln"))
        .env("KILN_API_TEST_HOME", &home)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE");
    if let Ok(mark) = std::env::var("KILN_API_TEST_MARK") {
        cmd.args(["-m", &mark]);
    }
    if let Ok(extra) = std::env::var("KILN_API_TEST_ARGS") {
        cmd.args(extra.split_whitespace());
    }
    let out = cmd.output().expect("pytest runs");
    let stdout = common::text(&out.stdout);
    let stderr = common::text(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "pytest tests/api failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}
