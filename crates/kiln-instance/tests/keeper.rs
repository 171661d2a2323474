//! The VM keeper with a plain program under it (QEMU's place): it dies with the thread that
//! started it, and outlives that thread once detached. Both are about the moment kiln exits,
//! so each test starts the keeper on a thread of its own and lets that thread end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kiln_instance::process::is_alive;
use kiln_instance::vm::keeper::{Keeper, KEEPER_ARG};
use nix::sys::signal::Signal;

fn helper() -> (PathBuf, Vec<String>) {
    (
        PathBuf::from(env!("CARGO_BIN_EXE_kiln-sandbox-helper")),
        vec![KEEPER_ARG.to_string()],
    )
}

/// The process whose parent is `parent`, once there is one.
fn child_of(parent: u32) -> Option<i32> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        let found = std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let p = kiln_instance::process::parse_stat(&stat)?;
            (p.ppid == parent as i32 && !p.zombie).then_some(p.pid)
        });
        if found.is_some() {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Starts a keeper of `sleep` on a thread that ends right after; returns the keeper's
/// and the sleep's process ids.
fn on_a_thread_that_ends(detach: bool) -> (i32, i32) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let log = tempfile::tempfile().unwrap();
            let argv = ["sleep".to_string(), "300".to_string()];
            let keeper = Keeper::spawn(&helper(), &argv, log).unwrap();
            let pid = keeper.id().unwrap();
            // The program runs: the keeper is past its set-up and handles signals.
            let child = child_of(pid).expect("the keeper's program never started");
            if detach {
                // Held still for a moment, as a keeper not yet scheduled on a busy host is: the
                // signal waits, and the thread must not end before the keeper has let go.
                signal(pid as i32, Signal::SIGSTOP);
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(300));
                    signal(pid as i32, Signal::SIGCONT);
                });
                assert_eq!(keeper.detach(Duration::from_secs(10)).await.unwrap(), pid);
            } else {
                // Not even the handle's kill-on-drop: only the death signal is left to act.
                std::mem::forget(keeper);
            }
            (pid as i32, child)
        })
    })
    .join()
    .unwrap()
}

fn signal(pid: i32, sig: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

fn gone_within(pid: i32, within: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if !is_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn kill_group(pid: i32) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
}

#[test]
fn a_keeper_dies_with_the_thread_that_started_it_and_takes_its_program() {
    let (keeper, child) = on_a_thread_that_ends(false);
    let keeper_gone = gone_within(keeper, Duration::from_secs(5));
    let child_gone = gone_within(child, Duration::from_secs(5));
    kill_group(keeper);
    assert!(
        keeper_gone,
        "the keeper outlived the thread that started it"
    );
    assert!(child_gone, "the keeper's program outlived the keeper");
}

#[test]
fn a_detached_keeper_and_its_program_outlive_the_thread_that_started_it() {
    let (keeper, child) = on_a_thread_that_ends(true);
    // Long enough for a death signal to have arrived.
    let keeper_gone = gone_within(keeper, Duration::from_secs(1));
    let child_alive = is_alive(child);
    kill_group(keeper);
    assert!(!keeper_gone, "the detached keeper died with the thread");
    assert!(child_alive, "the detached keeper's program died");
    assert!(gone_within(child, Duration::from_secs(5)));
}

#[test]
fn a_keeper_that_does_not_confirm_the_detach_is_killed_with_its_program() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (keeper, child, result) = rt.block_on(async {
        let log = tempfile::tempfile().unwrap();
        let argv = ["sleep".to_string(), "300".to_string()];
        let keeper = Keeper::spawn(&helper(), &argv, log).unwrap();
        let pid = keeper.id().unwrap();
        let child = child_of(pid).expect("the keeper's program never started");
        // Stopped for good: the detach signal is never handled.
        signal(pid as i32, Signal::SIGSTOP);
        let result = keeper.detach(Duration::from_millis(300)).await;
        (pid as i32, child, result)
    });
    let keeper_gone = gone_within(keeper, Duration::from_secs(5));
    let child_gone = gone_within(child, Duration::from_secs(5));
    kill_group(keeper);
    let e = result.expect_err("a keeper that never confirmed was kept");
    assert!(e.to_string().contains("did not confirm"), "{e}");
    assert!(keeper_gone, "the keeper outlived a failed detach");
    assert!(child_gone, "the keeper's program outlived a failed detach");
}
