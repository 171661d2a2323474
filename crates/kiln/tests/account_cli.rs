//! `kiln account` as a user runs it: the real binary over a temporary `KILN_HOME`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn kiln(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_HOME", home)
        .output()
        .expect("kiln runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok_json(home: &Path, args: &[&str]) -> serde_json::Value {
    let o = kiln(home, args);
    assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("JSON output")
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn create_list_and_keys() {
    if !is_root() {
        eprintln!("skipped: kiln account runs as root only");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path();

    let alice = ok_json(h, &["account", "create", "alice", "-o", "json"]);
    let id = alice["accountId"].as_str().unwrap();
    let key = alice["accessKeyId"].as_str().unwrap();
    let secret = alice["secretAccessKey"].as_str().unwrap();
    assert_eq!(alice["name"], "alice");
    assert_eq!(id.len(), 12);
    assert!(key.starts_with("AKIA") && key.len() == 20, "{key}");
    assert_eq!(secret.len(), 40);
    let file = h.join("accounts.json");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The text form shows the secret once and how to use it.
    let o = kiln(h, &["account", "create", "bob"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("Secret access key: "), "{out}");
    assert!(out.contains("aws configure --profile bob"), "{out}");
    assert!(
        out.contains(
            "aws imagebuilder list-components --endpoint-url http://127.0.0.1:8479 --region local --profile bob"
        ),
        "{out}"
    );

    let more = ok_json(h, &["account", "key", "create", "alice", "-o", "json"]);
    assert_eq!(more["accountId"], id);
    let more_key = more["accessKeyId"].as_str().unwrap();
    let by_id = ok_json(h, &["account", "key", "create", id, "-o", "json"]);
    assert_eq!(by_id["name"], "alice");

    let list = ok_json(h, &["account", "list", "-o", "json"]);
    let list_text = list.to_string();
    assert!(!list_text.contains(secret), "{list_text}");
    assert!(!list_text.contains("secret"), "{list_text}");
    let accounts = list.as_array().unwrap();
    assert_eq!(accounts.len(), 2);
    assert_eq!(accounts[0]["name"], "alice");
    assert_eq!(accounts[0]["accountId"], id);
    assert_eq!(accounts[0]["keys"].as_array().unwrap().len(), 3);
    assert!(accounts[0]["keys"][0]["created"].is_string());

    let o = kiln(h, &["account", "key", "delete", "alice", more_key]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = kiln(h, &["account", "list"]);
    let out = text(&o.stdout);
    assert!(out.contains("alice") && out.contains(key), "{out}");
    assert!(!out.contains(more_key), "{out}");
    assert!(!out.contains(secret), "{out}");
}

#[test]
fn mistakes_exit_2_with_what_to_do() {
    if !is_root() {
        eprintln!("skipped: kiln account runs as root only");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    assert!(kiln(h, &["account", "create", "alice"]).status.success());
    for (args, says) in [
        (&["account", "create", "alice"][..], "exists already"),
        (
            &["account", "create", "a b"][..],
            "not a valid account name",
        ),
        (
            &["account", "key", "create", "nobody"][..],
            "no account `nobody`",
        ),
        (
            &["account", "key", "delete", "alice", "AKIANOSUCHKEY0000000"][..],
            "has no access key AKIANOSUCHKEY0000000",
        ),
    ] {
        let o = kiln(h, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = text(&o.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn non_root_is_told_to_use_root() {
    if !is_root() || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: needs root and setpriv to run kiln as another user");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let o = Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(["account", "list"])
        .env("KILN_HOME", home.path())
        .output()
        .expect("setpriv runs");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("only root may read"), "{err}");
    assert!(!home.path().join("accounts.json").exists());
}

#[test]
fn concurrent_commands_keep_every_change() {
    if !is_root() {
        eprintln!("skipped: kiln account runs as root only");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..8)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_kiln"))
                .args(["account", "create", &format!("acct{i}"), "-o", "json"])
                .env("KILN_HOME", home.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("kiln starts")
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let list = ok_json(home.path(), &["account", "list", "-o", "json"]);
    assert_eq!(list.as_array().unwrap().len(), 8, "{list}");
}

/// A worker's token is shown once and only its digest kept; a live name is refused, a revoked
/// one listed as such (and given a new token on request).
#[test]
fn worker_tokens_are_shown_once_listed_and_revoked() {
    if !is_root() {
        eprintln!("skipped: kiln worker runs as root only");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let made = ok_json(h, &["worker", "token", "create", "build-1", "-o", "json"]);
    let token = made["token"].as_str().unwrap();
    assert!(token.starts_with("kwt_") && token.len() == 68, "{token}");
    let db = std::fs::read(h.join("kiln.db")).unwrap();
    let wal = std::fs::read(h.join("kiln.db-wal")).unwrap_or_default();
    let needle = token.as_bytes();
    assert!(
        ![db, wal]
            .iter()
            .any(|f| f.windows(needle.len()).any(|w| w == needle)),
        "the token itself is stored"
    );
    let again = kiln(h, &["worker", "token", "create", "build-1"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again.stderr).contains("revoke it first"),
        "{}",
        text(&again.stderr)
    );
    let listed = ok_json(h, &["worker", "list", "-o", "json"]);
    assert_eq!(listed[0]["name"], "build-1");
    assert!(listed[0]["revoked"].is_null());
    let o = kiln(h, &["worker", "token", "revoke", "build-1"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let listed = ok_json(h, &["worker", "list", "-o", "json"]);
    assert!(listed[0]["revoked"].is_string());
    let table = text(&kiln(h, &["worker", "list"]).stdout);
    assert!(
        table.contains("build-1") && table.contains("revoked"),
        "{table}"
    );
    let renewed = ok_json(h, &["worker", "token", "create", "build-1", "-o", "json"]);
    assert_ne!(renewed["token"], made["token"]);
}
