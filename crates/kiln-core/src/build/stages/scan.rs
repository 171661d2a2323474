//! The scanning hook, in TESTING after the tests passed: the configured scanner runs on the
//! host over a read-only view of the image (its layers as one overlay, or a VM-written disk's
//! root filesystem), in a mount namespace of its own so the view vanishes with it. Its JSON
//! output is kept in the build's logs and its findings in the record.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use chrono::Utc;

use crate::record::State;
use crate::scan::{self, ScanRecord, ScanSettings, ScanStatus};

use super::super::failure::StageFailure;
use super::super::run::BuildRun;

/// What the scanner looks at.
enum View {
    /// Layer trees, topmost first.
    Layers(Vec<PathBuf>),
    /// A raw kiln disk (its root filesystem at [`kiln_image::disk::ROOT_OFFSET`]).
    Disk(PathBuf),
}

/// Scans the image when the recipe asks and kiln has a scanner; records why not otherwise.
pub(crate) async fn run(run: &mut BuildRun<'_>) -> Result<(), StageFailure> {
    if !run.recipe.scanning.enabled {
        run.rec.scan = Some(ScanRecord::ended(
            ScanStatus::NotRequested,
            "imageScanningConfiguration.imageScanningEnabled is not true",
        ));
        return Ok(());
    }
    let Some(settings) = run.options.scanning.clone() else {
        run.rec.scan = Some(ScanRecord::not_scanned(
            "scanning was asked for, but kiln's configuration names no scanner (`scanning: {command: [...]}` in config.yaml)",
        ));
        run.progress(
            "not scanned: kiln's configuration names no scanner (`scanning:` in config.yaml)",
        );
        return Ok(());
    };
    let view = match &run.disk {
        // A builder VM wrote the disk itself: only the disk holds the components' work.
        Some(d) if d.chain.is_empty() => View::Disk(d.assembled.raw.clone()),
        _ => View::Layers(run.chain.iter().rev().map(|l| l.fs.clone()).collect()),
    };
    let dir = run.rec.logs.join("scan");
    let root = run.run_dir.join("scan-root");
    run.progress(format!("scanning the image: {}", settings.display()));
    let rec = scan_view(&settings, &view, &root, &dir).await;
    let _ = std::fs::remove_dir(&root);
    run.progress(rec.summary());
    let failure = match (rec.status, settings.fail_on) {
        (ScanStatus::Failed | ScanStatus::TimedOut, _) => Some(StageFailure::new(
            State::Testing,
            format!(
                "the image scan failed: {}",
                rec.reason.as_deref().unwrap_or("no reason")
            ),
        )),
        (ScanStatus::Completed, Some(level)) if rec.at_or_above(level) > 0 => {
            let worst: Vec<String> = rec
                .findings
                .iter()
                .filter(|f| f.severity >= level)
                .take(5)
                .map(|f| format!("{} ({}, {} {})", f.id, f.severity, f.package, f.version))
                .collect();
            let mut f = StageFailure::new(
                State::Testing,
                format!(
                    "the image scan found {} finding(s) at or above {level}, which kiln's configuration refuses (scanning.failOn): {}",
                    rec.at_or_above(level),
                    worst.join(", ")
                ),
            );
            f.log = rec.output.clone();
            Some(f)
        }
        _ => None,
    };
    run.rec.scan = Some(rec);
    run.save().await;
    match failure {
        Some(mut f) => {
            if f.log.is_none() {
                f.log = Some(dir.join("stderr.log"));
            }
            Err(f)
        }
        None => Ok(()),
    }
}

/// The shell script that mounts the view read-only at `$KILN_SCAN_ROOT`, then becomes the
/// scanner (its argv passed as `"$@"`, never through the shell's parser).
fn mount_script(view: &View) -> Result<String, String> {
    let quote = |p: &Path| -> Result<String, String> {
        let s = p.display().to_string();
        if s.contains(['\'', ',', ':', '\n']) {
            return Err(format!("the path {s} has a character kiln cannot mount"));
        }
        Ok(format!("'{s}'"))
    };
    let mount = match view {
        View::Layers(layers) if layers.len() == 1 => format!(
            "mount --bind {} \"$KILN_SCAN_ROOT\"\nmount -o remount,bind,ro \"$KILN_SCAN_ROOT\"",
            quote(&layers[0])?
        ),
        View::Layers(layers) if layers.is_empty() => {
            return Err("the image has no layers to scan".into())
        }
        View::Layers(layers) => {
            let lower = layers
                .iter()
                .map(|p| quote(p).map(|q| q.trim_matches('\'').to_string()))
                .collect::<Result<Vec<_>, _>>()?
                .join(":");
            format!("mount -t overlay overlay -o 'ro,lowerdir={lower}' \"$KILN_SCAN_ROOT\"")
        }
        View::Disk(raw) => format!(
            "mount -t ext4 -o ro,noload,loop,offset={} {} \"$KILN_SCAN_ROOT\"",
            kiln_image::disk::ROOT_OFFSET,
            quote(raw)?
        ),
    };
    Ok(format!("set -eu\n{mount}\nexec \"$@\"\n"))
}

/// Runs the scanner over the view and reads its findings; every failure becomes a FAILED
/// scan record with its reason.
async fn scan_view(settings: &ScanSettings, view: &View, root: &Path, dir: &Path) -> ScanRecord {
    let started = Utc::now();
    let t0 = Instant::now();
    let ended = |status: ScanStatus, reason: String| ScanRecord {
        scanner: Some(settings.display()),
        started: Some(started),
        duration_ms: t0.elapsed().as_millis() as u64,
        ..ScanRecord::ended(status, reason)
    };
    let failed = |reason: String| ended(ScanStatus::Failed, reason);
    let script = match mount_script(view) {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    if let Err(e) = std::fs::create_dir_all(root).and_then(|_| std::fs::create_dir_all(dir)) {
        return failed(format!("cannot make {}: {e}", dir.display()));
    }
    let output = dir.join("output.json");
    let (Ok(stdout), Ok(stderr)) = (
        std::fs::File::create(&output),
        std::fs::File::create(dir.join("stderr.log")),
    ) else {
        return failed(format!("cannot write the scan's logs in {}", dir.display()));
    };
    let root_text = root.display().to_string();
    let argv = settings.argv(&root_text);
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        .arg(&script)
        .arg("kiln-scan")
        .args(&argv)
        .env("KILN_SCAN_ROOT", &root_text)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot start the scanner through unshare(1): {e}")),
    };
    let status = match tokio::time::timeout(settings.timeout, child.wait_with_output()).await {
        Err(_) => {
            return ended(
                ScanStatus::TimedOut,
                format!(
                    "the scanner ran longer than scanning.timeoutMinutes ({} min)",
                    settings.timeout.as_secs() / 60
                ),
            )
        }
        Ok(Err(e)) => return failed(format!("the scanner could not be waited for: {e}")),
        Ok(Ok(out)) => out.status,
    };
    let last_line = || {
        std::fs::read_to_string(dir.join("stderr.log"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(str::to_string)
            })
            .unwrap_or_default()
    };
    let bytes = std::fs::read(&output).unwrap_or_default();
    // grype and trivy exit non-zero when told to fail on findings; their JSON still counts.
    match scan::parse_findings(&bytes) {
        Ok((format, findings)) => scan::completed(
            settings,
            format,
            findings,
            started,
            t0.elapsed().as_millis() as u64,
            output,
        ),
        Err(e) if !status.success() => failed(format!(
            "the scanner exited with {status}: {}",
            match last_line() {
                l if l.is_empty() => e.to_string(),
                l => l,
            }
        )),
        Err(e) => failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_mount_as_one_read_only_overlay() {
        let s = mount_script(&View::Layers(vec!["/k/l2".into(), "/k/l1".into()])).unwrap();
        assert!(s.contains("-o 'ro,lowerdir=/k/l2:/k/l1'"), "{s}");
        assert!(s.ends_with("exec \"$@\"\n"));
        let one = mount_script(&View::Layers(vec!["/k/l1".into()])).unwrap();
        assert!(one.contains("remount,bind,ro"), "{one}");
        let disk = mount_script(&View::Disk("/r/disk.raw".into())).unwrap();
        assert!(
            disk.contains("ro,noload,loop,offset=2097152 '/r/disk.raw'"),
            "{disk}"
        );
        assert!(mount_script(&View::Layers(vec!["/k/a,b".into(), "/k/c".into()])).is_err());
    }
}
