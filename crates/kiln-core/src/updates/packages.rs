//! Whether the last image's package manager has updates: asked in a throwaway sandbox over the
//! image's layers (its writable layer is thrown away, never captured; the layers are only ever
//! its read-only lower directories).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use kiln_instance::runlock::RunLock;
use kiln_instance::sandbox::{Network, SandboxSpec};
use kiln_instance::{ExecOutcome, ExecRequest, Instance, LaunchSpec, Launcher, Stream};

use crate::record::{ImageRecord, OutputKind};
use crate::store::{Home, LayerStore, StoredLayer};

use super::{PackageUpdate, UpdateError};

/// How long one command of a check may take (an `apt-get update` over a slow mirror).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How many of a failed command's last lines its error quotes.
const TAIL: usize = 20;

/// A package manager kiln knows how to ask for updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageManager {
    /// Debian and its derivatives: `apt-get` over dpkg.
    Apt,
    /// Fedora, RHEL and their derivatives: `dnf` over rpm.
    Dnf,
}

impl PackageManager {
    /// The one the image's layers have (`apt-get` before `dnf`), looked for in the layers
    /// topmost first, where a whiteout hides a program a lower layer has.
    pub fn of_layers(chain: &[StoredLayer]) -> Option<PackageManager> {
        [
            ("usr/bin/apt-get", PackageManager::Apt),
            ("usr/bin/dnf", PackageManager::Dnf),
        ]
        .into_iter()
        .find(|(path, _)| in_layers(chain, path))
        .map(|(_, pm)| pm)
    }
}

/// Whether `path` exists in the merged view of `chain` (bottom first).
fn in_layers(chain: &[StoredLayer], path: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    for layer in chain.iter().rev() {
        if let Ok(m) = std::fs::symlink_metadata(layer.fs.join(path)) {
            // Overlayfs's whiteout: a character device hides the lower layers' copies.
            return !m.file_type().is_char_device();
        }
    }
    false
}

/// Runs the image's package manager's update check in a throwaway sandbox over the last
/// image's layers, started by `launcher` (the one builds use), with the network its build had
/// (`private` unless the recipe opted into the host's):
/// `apt-get update` then a simulated `apt-get dist-upgrade`, or `dnf check-update`. Returns
/// what would be upgraded, sorted by name; empty when nothing would.
///
/// A check that fails (no network, a broken source, an index that could not be fetched) is an
/// [`UpdateError::Check`] naming the command, how it ended and its last lines: a scheduler
/// must not take it for "no updates".
pub async fn package_updates(
    home: &Home,
    launcher: &dyn Launcher,
    last: &ImageRecord,
) -> Result<Vec<PackageUpdate>, UpdateError> {
    let image = last.build_version();
    let layers = layers_of(home, last).await?;
    let pm = PackageManager::of_layers(&layers).ok_or_else(|| UpdateError::NoPackageManager {
        image: image.clone(),
    })?;
    let sandbox_error = |why: String| UpdateError::Sandbox {
        image: image.clone(),
        why,
    };
    let short = uuid::Uuid::new_v4().simple().to_string();
    let id = format!("updates-{}", &short[..12]);
    // A run folder like a build's: a kiln that dies here leaves it to the next one's sweep.
    let dir = home.run().join(&id);
    let lock = RunLock::acquire(&dir).map_err(|e| sandbox_error(e.to_string()))?;
    let mut spec = SandboxSpec::new(
        &id,
        layers.iter().rev().map(|l| l.fs.clone()).collect(),
        dir.join("upper"),
        dir.join("work"),
        dir.join("root"),
    );
    // The image's own package sources and scripts run here: the network the build had.
    spec.network = last.network.unwrap_or(Network::Private);
    let result = match launcher.launch(LaunchSpec::Sandbox(spec)).await {
        Ok(sandbox) => {
            let result = check(pm, sandbox.as_ref())
                .await
                .map_err(|e| e.into_update_error(&sandbox_error));
            // Nothing of it is kept: discarded, not captured.
            if let Err(e) = sandbox.discard().await {
                tracing::warn!("stopping the sandbox {id}: {e}");
            }
            result
        }
        Err(e) => Err(sandbox_error(format!("starting it: {e}"))),
    };
    drop(lock);
    crate::store::remove_tree(&dir);
    result
}

/// The last image's layers, bottom first: from the layer store, or read back from its OCI
/// layout output when the store has let them go.
async fn layers_of(home: &Home, last: &ImageRecord) -> Result<Vec<StoredLayer>, UpdateError> {
    let image = last.build_version();
    if last.layers.is_empty() {
        return Err(UpdateError::Layers {
            image,
            why: format!("its record has no layers (it is {})", last.state),
        });
    }
    let store = LayerStore::new(home.clone());
    let stored: Option<Vec<StoredLayer>> = last.layers.iter().map(|d| store.get(d)).collect();
    if let Some(layers) = stored {
        return Ok(layers);
    }
    let Some(out) = last
        .outputs
        .iter()
        .find(|o| o.kind == OutputKind::OciLayout)
    else {
        return Err(UpdateError::Layers {
            image,
            why: "its layers are not in the layer store any more, and it has no OCI layout output to read them from".into(),
        });
    };
    let parent = crate::parent::from_layout(&store, out.path(), Some(&out.tag), image.clone())
        .await
        .map_err(|e| UpdateError::Layers {
            image,
            why: e.to_string(),
        })?;
    Ok(parent.layers)
}

/// What went wrong inside the sandbox.
enum CheckError {
    /// The instance failed (not the command).
    Instance(String),
    /// The command failed.
    Update(UpdateError),
}

impl CheckError {
    fn into_update_error(self, sandbox: &dyn Fn(String) -> UpdateError) -> UpdateError {
        match self {
            CheckError::Instance(why) => sandbox(why),
            CheckError::Update(e) => e,
        }
    }
}

/// Asks the package manager, in the sandbox.
async fn check(
    pm: PackageManager,
    sandbox: &dyn Instance,
) -> Result<Vec<PackageUpdate>, CheckError> {
    let mut updates = match pm {
        PackageManager::Apt => {
            // Without Error-Mode=any, an index that cannot be fetched is a warning and exit 0
            // (apt before 2.1.16 ignores the option; the output is checked too).
            let update = ["-q", "-o", "APT::Update::Error-Mode=any", "update"];
            let out = run(sandbox, "apt-get", &update, &[0]).await?;
            if out.lines.iter().any(|l| fetch_failed(l)) {
                return Err(CheckError::Update(failed("apt-get", &update, &out)));
            }
            let simulate = ["-q", "-s", "dist-upgrade"];
            let out = run(sandbox, "apt-get", &simulate, &[0]).await?;
            parse_apt_simulation(&out.outcome.stdout)
        }
        PackageManager::Dnf => {
            // 100 means updates are available, 0 none; anything else failed.
            let args = ["-q", "--refresh", "check-update"];
            let out = run(sandbox, "dnf", &args, &[0, 100]).await?;
            if out.outcome.status.code() == Some(0) {
                return Ok(Vec::new());
            }
            let query = ["-qa", "--qf", "%{NAME}.%{ARCH}\t%{VERSION}-%{RELEASE}\n"];
            let installed = run(sandbox, "rpm", &query, &[0]).await?;
            parse_dnf_check_update(&out.outcome.stdout, &installed.outcome.stdout)
        }
    };
    updates.sort();
    updates.dedup();
    Ok(updates)
}

/// apt's words for an index it could not fetch.
fn fetch_failed(line: &str) -> bool {
    (line.starts_with("W: ") || line.starts_with("E: "))
        && (line.contains("Failed to fetch") || line.contains("Some index files failed"))
}

/// A command's outcome and every line it wrote, in the order it wrote them.
struct Ran {
    outcome: ExecOutcome,
    lines: Vec<String>,
}

/// Runs a command in the sandbox (C locale, no prompts); an exit code outside `ok` is an
/// [`UpdateError::Check`].
async fn run(
    sandbox: &dyn Instance,
    program: &str,
    args: &[&str],
    ok: &[i32],
) -> Result<Ran, CheckError> {
    let req = ExecRequest {
        program: program.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![
            ("LC_ALL".into(), "C".into()),
            ("DEBIAN_FRONTEND".into(), "noninteractive".into()),
        ],
        cwd: Some("/".into()),
        timeout: Some(COMMAND_TIMEOUT),
    };
    let mut lines = Vec::new();
    let mut sink = |_: Stream, line: &str| lines.push(line.to_string());
    let outcome = sandbox
        .exec(&req, &mut sink)
        .await
        .map_err(|e| CheckError::Instance(format!("running {program}: {e}")))?;
    let ran = Ran { outcome, lines };
    match ran.outcome.status.code() {
        Some(code) if ok.contains(&code) => Ok(ran),
        _ => Err(CheckError::Update(failed(program, args, &ran))),
    }
}

/// The error of a command that failed: its command line, how it ended, its last lines.
fn failed(program: &str, args: &[&str], ran: &Ran) -> UpdateError {
    let start = ran.lines.len().saturating_sub(TAIL);
    UpdateError::Check {
        command: std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" "),
        status: ran.outcome.status,
        tail: ran.lines[start..].to_vec(),
    }
}

/// The upgrades of a simulated `apt-get -s dist-upgrade`: its `Inst NAME [OLD] (NEW ...)`
/// lines. A package it would newly install (no `[OLD]`) is a new dependency, not an update.
pub fn parse_apt_simulation(text: &str) -> Vec<PackageUpdate> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("Inst ")?;
            let (name, rest) = rest.split_once(' ')?;
            let (from, rest) = rest.strip_prefix('[')?.split_once(']')?;
            let to = rest
                .trim_start()
                .strip_prefix('(')?
                .split_whitespace()
                .next()?;
            Some(PackageUpdate {
                name: name.to_string(),
                from: from.to_string(),
                to: to.to_string(),
            })
        })
        .collect()
}

/// The updates `dnf check-update` lists (`NAME.ARCH VERSION REPOSITORY`, which dnf wraps onto
/// two lines for long names), with the installed versions from
/// `rpm -qa --qf '%{NAME}.%{ARCH}\t%{VERSION}-%{RELEASE}\n'`. Obsoleted packages, listed after
/// the updates, are left out. A package rpm does not list has an empty `from`.
pub fn parse_dnf_check_update(text: &str, installed: &str) -> Vec<PackageUpdate> {
    let installed: std::collections::HashMap<&str, &str> = installed
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .collect();
    let notes = ["Last metadata expiration check", "Security:"];
    let tokens: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Obsoleting Packages"))
        .filter(|l| !notes.iter().any(|n| l.trim_start().starts_with(n)))
        .flat_map(str::split_whitespace)
        .collect();
    tokens
        .chunks_exact(3)
        .filter_map(|entry| {
            let (name_arch, to) = (entry[0], entry[1]);
            let (name, _arch) = name_arch.rsplit_once('.')?;
            Some(PackageUpdate {
                name: name.to_string(),
                from: installed
                    .get(name_arch)
                    .copied()
                    .unwrap_or_default()
                    .to_string(),
                to: to.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(name: &str, from: &str, to: &str) -> PackageUpdate {
        PackageUpdate {
            name: name.into(),
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn apt_simulation_lists_upgrades_not_new_packages() {
        let text = "Reading package lists...\nBuilding dependency tree...\nCalculating upgrade...\n\
            The following packages will be upgraded:\n  kiln-probe libc6\n\
            Inst kiln-probe [1.0] (1.1 127.0.0.1 [all])\n\
            Inst libnew (2.0 Debian:12.11/stable [amd64])\n\
            Inst libc6 [2.36-9+deb12u9] (2.36-9+deb12u10 Debian:12.11/stable, Debian-Security:12/stable-security [amd64]) []\n\
            Conf kiln-probe (1.1 127.0.0.1 [all])\n";
        assert_eq!(
            parse_apt_simulation(text),
            [
                update("kiln-probe", "1.0", "1.1"),
                update("libc6", "2.36-9+deb12u9", "2.36-9+deb12u10"),
            ]
        );
        assert!(parse_apt_simulation("0 upgraded, 0 newly installed\n").is_empty());
    }

    #[test]
    fn dnf_check_update_with_wrapped_names_and_obsoletes() {
        let text = "\nbash.x86_64                      5.2.26-3.fc40        updates\n\
            a-very-long-package-name-that-wraps.noarch\n                                 1:2.0-1.fc40         updates\n\
            \nObsoleting Packages\nold.x86_64  1.0-1  updates\n";
        let installed =
            "bash.x86_64\t5.2.26-1.fc40\na-very-long-package-name-that-wraps.noarch\t1.9-1.fc40\n";
        assert_eq!(
            parse_dnf_check_update(text, installed),
            [
                update("bash", "5.2.26-1.fc40", "5.2.26-3.fc40"),
                update(
                    "a-very-long-package-name-that-wraps",
                    "1.9-1.fc40",
                    "1:2.0-1.fc40"
                ),
            ]
        );
    }

    #[test]
    fn apt_fetch_failures_are_failures() {
        assert!(fetch_failed(
            "W: Failed to fetch http://127.0.0.1:1/./InRelease  Could not connect"
        ));
        assert!(fetch_failed(
            "E: Some index files failed to download. They have been ignored, or old ones used instead."
        ));
        assert!(!fetch_failed(
            "Get:3 http://127.0.0.1:1 ./ Packages [340 B]"
        ));
    }
}
