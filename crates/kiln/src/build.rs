//! `kiln build RECIPE`: the terminal side of a build.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use kiln_core::build::{BuildEvent, BuildObserver, BuildOptions, Builder, Origin};
use kiln_core::record::{BootBreakdown, CacheUse, ImageRecord, OutputRecord, State};
use kiln_core::store::Home;
use kiln_dist::logs::LogDestination;
use kiln_instance::LocalLauncher;

use crate::{config, ui, EXIT_INVALID};

/// Output format of commands that report a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// For programs.
    Json,
}

/// Writes `value` for `--output json`: pretty JSON and a newline.
pub fn write_json<T: serde::Serialize + ?Sized>(out: &mut impl Write, value: &T) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// `kiln build`
#[derive(Args)]
pub struct BuildArgs {
    /// The recipe file.
    recipe: PathBuf,
    #[command(flatten)]
    flags: BuildFlags,
}

/// How a build runs and reports (shared by `kiln build` and `kiln pipeline start`).
#[derive(Args)]
pub struct BuildFlags {
    /// Rebuild every component instead of taking unchanged ones from the step cache.
    #[arg(long)]
    no_cache: bool,
    /// Make the parent image again (bootstrap anew) instead of reusing the cached one.
    #[arg(long)]
    refresh_parent: bool,
    /// Result format (progress always goes to stderr).
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
    /// Do not show step output (it is in the build's logs).
    #[arg(long, short = 'q')]
    quiet: bool,
}

struct BuildTerminal {
    term: ui::Terminal,
}

fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

impl BuildObserver for BuildTerminal {
    fn event(&self, e: &BuildEvent) {
        match e {
            BuildEvent::Started { record: r } => self.term.line(&format!(
                "kiln build {} {} (build {}); logs in {}",
                r.name,
                r.version,
                r.build,
                r.logs.display()
            )),
            BuildEvent::Stage { state } => self.term.line(&format!("== {state}")),
            BuildEvent::Builder { choice } => self.term.line(&format!("builder: {choice}")),
            BuildEvent::Progress { message } => self.term.progress(message),
            BuildEvent::ComponentStarted {
                index,
                total,
                name,
                cached,
            } => {
                if !cached {
                    self.term.line(&format!(
                        "[{}/{total}] {name}: running build and validate phases",
                        index + 1
                    ));
                }
            }
            BuildEvent::ComponentFinished { index, record } => {
                let what = match record.cache {
                    CacheUse::Hit => "from the step cache".to_string(),
                    CacheUse::NoLayer => "no build or validate phase (tests only)".to_string(),
                    CacheUse::InVm => format!("built in the VM in {}", secs(record.duration_ms)),
                    _ => format!(
                        "built in {} ({} layer)",
                        secs(record.duration_ms),
                        human_bytes(record.layer_size)
                    ),
                };
                self.term
                    .line(&format!("[{}] {}: {what}", index + 1, record.name));
            }
            BuildEvent::Step { event } => self.term.step(event),
            BuildEvent::LogsShipped {
                to,
                files,
                uploaded,
            } => self.term.line(&format!(
                "logs: {files} file(s) {} {to}",
                if *uploaded {
                    "uploaded to"
                } else {
                    "copied to"
                }
            )),
            BuildEvent::Warning { message } => self.term.line(&format!("warning: {message}")),
            BuildEvent::Finished { .. } => self.term.finish(),
        }
    }
}

/// Runs `kiln build`.
pub async fn run(args: BuildArgs) -> Result<u8> {
    let recipe = match kiln_core::recipe::load(&args.recipe) {
        Ok(r) => r,
        Err(e) => {
            eprint!("{e}");
            eprintln!("nothing was built: fix the recipe above");
            return Ok(EXIT_INVALID);
        }
    };
    let name = args.recipe.display().to_string();
    for w in &recipe.warnings {
        eprint!("{}", w.render(&name, &recipe.source.text));
    }
    // Without root the build refuses to start, and says why, before anything is opened.
    let store = if kiln_instance::is_root() {
        Some(config::open_store(&Home::new(config::kiln_home()), &config::load()?).await?)
    } else {
        None
    };
    Ok(execute(&recipe, store, Provenance::default(), &args.flags)
        .await?
        .0)
}

/// Where a build comes from and where its logs go (a pipeline's resources say).
#[derive(Default)]
pub struct Provenance {
    /// Who and what started it; the local principal with no pipeline when `None`.
    pub origin: Option<Origin>,
    /// Where its logs are shipped.
    pub logging: Vec<LogDestination>,
}

/// Runs one build in the foreground: progress on stderr, the result on stdout, Ctrl-C stops
/// it. Returns the exit code and the record (when the build got a number).
pub async fn execute(
    recipe: &kiln_core::recipe::Recipe,
    store: Option<kiln_core::state::Store>,
    provenance: Provenance,
    flags: &BuildFlags,
) -> Result<(u8, Option<ImageRecord>)> {
    let cfg = config::load()?;
    let home = Home::new(config::kiln_home());
    let options = BuildOptions {
        no_cache: flags.no_cache,
        refresh_parent: flags.refresh_parent,
        epoch: std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.trim().parse().ok()),
        ..cfg.build_options()
    };
    let launcher = Arc::new(LocalLauncher::current_exe(agent_path()));
    let observer = Arc::new(BuildTerminal {
        term: ui::Terminal::new(flags.quiet),
    });
    let origin = provenance
        .origin
        .unwrap_or_else(|| Origin::of(crate::principal::local()));
    let mut builder =
        Builder::new(home, options, origin, launcher).with_logging(provenance.logging);
    if let Some(store) = store {
        // A pipeline's final record writes its topic's message; `kiln serve` delivers it.
        let notices = Arc::new(kiln_api::notices::ImageNotices::new(store.clone()));
        builder = builder.with_store(store).with_notices(notices);
    }
    let build = builder.build(recipe, observer.clone());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // On a signal the build future is dropped: its sandboxes are stopped (their namespaces
    // die with their helpers) and the next kiln sweeps the scratch folder.
    let record = tokio::select! {
        r = build => r,
        _ = tokio::signal::ctrl_c() => {
            observer.term.finish();
            eprintln!("interrupted: the build was stopped; its instance and every process in it are gone");
            return Ok((130, None));
        }
        _ = term.recv() => {
            observer.term.finish();
            eprintln!("terminated: the build was stopped");
            return Ok((143, None));
        }
    };
    let record = match record {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("nothing was built");
            return Ok((EXIT_INVALID, None));
        }
    };
    report(&record, flags.output)?;
    let code = if record.state == State::Available {
        0
    } else {
        1
    };
    Ok((code, Some(record)))
}

/// `kiln-agent`: `KILN_AGENT`, or next to the kiln binary (cargo and the packages put it there).
pub(crate) fn agent_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_AGENT") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join("kiln-agent"))
}

fn report(r: &ImageRecord, output: Output) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if output == Output::Json {
        write_json(&mut out, r)?;
        return Ok(());
    }
    if r.state == State::Available {
        let with_layers = r.components.iter().filter(|c| c.layer.is_some()).count();
        let tests = match &r.tests {
            Some(t) if t.boot_ms.is_some() => format!(
                "{} in a VM that booted in {}",
                t.status,
                secs(t.boot_ms.unwrap_or(0))
            ),
            Some(t) => t.status.to_string(),
            None => "-".into(),
        };
        let built = if r.components.iter().any(|c| c.cache == CacheUse::InVm) {
            "built in a VM".to_string()
        } else {
            format!(
                "{} of {} component layers from the step cache",
                r.cache_hits(),
                with_layers
            )
        };
        writeln!(
            out,
            "AVAILABLE {} in {} ({built}; tests {tests})",
            r.build_version(),
            secs(r.duration_ms),
        )?;
        write_boot(&mut out, r)?;
        for o in r.outputs.iter().filter(|o| !o.kind.is_image()) {
            writeln!(
                out,
                "  {}: {}  ({})",
                o.region,
                where_is(o),
                o.manifest_digest
            )?;
        }
        for o in r
            .outputs
            .iter()
            .filter(|o| o.kind.is_image() && o.tag == r.version.to_string())
        {
            writeln!(
                out,
                "  {}: {}  ({})",
                o.region,
                where_is(o),
                o.manifest_digest
            )?;
        }
    } else if r.state == State::Cancelled {
        writeln!(
            out,
            "CANCELLED {} (on request); nothing was distributed",
            r.build_version()
        )?;
    } else if let Some(f) = &r.failure {
        writeln!(out, "FAILED {} in {}", r.build_version(), f.stage.as_str())?;
        write_boot(&mut out, r)?;
        if let Some(c) = &f.component {
            write!(out, "  component {c}")?;
            if let Some(s) = &f.step {
                write!(out, ", step {s}")?;
            }
            writeln!(out)?;
        }
        // The engine's message quotes the output too; the tail below is the fuller copy.
        let reason = match (
            f.output_tail.is_empty(),
            f.reason.split_once("; last output:"),
        ) {
            (false, Some((head, _))) => head,
            _ => f.reason.as_str(),
        };
        writeln!(out, "  {}", reason.replace('\n', "\n  "))?;
        if !f.output_tail.is_empty() {
            writeln!(out, "  last output:")?;
            for l in &f.output_tail {
                writeln!(out, "    {l}")?;
            }
        }
        if let Some(log) = &f.log {
            writeln!(out, "  full log: {}", log.display())?;
        }
        writeln!(
            out,
            "  nothing was distributed; `kiln image get {}` shows the record",
            r.build_version()
        )?;
        if let Some(id) = &f.kept_instance {
            let home = kiln_core::store::Home::new(crate::config::kiln_home());
            if let Ok(k) = kiln_core::instances::Instances::new(&home).get(id) {
                writeln!(
                    out,
                    "  the failed instance is kept (terminateInstanceOnFailure: false):"
                )?;
                writeln!(out, "    shell: {}", k.shell_hint())?;
                writeln!(out, "    stop:  kiln instance stop {id}")?;
            }
        }
    }
    Ok(())
}

/// The test VM's boot, phase by phase, when the tests booted one.
fn write_boot(out: &mut impl Write, r: &ImageRecord) -> Result<()> {
    let Some((ms, b)) = r
        .tests
        .as_ref()
        .and_then(|t| Some((t.boot_ms?, t.boot_breakdown?)))
    else {
        return Ok(());
    };
    let phases = boot_phases(&b);
    if !phases.is_empty() {
        writeln!(out, "  test VM boot {}: {phases}", secs(ms))?;
    }
    Ok(())
}

/// A boot's phases for humans: `firmware + bootloader 4.7 s, kernel 3.6 s, ...`.
pub fn boot_phases(b: &BootBreakdown) -> String {
    b.phases()
        .iter()
        .map(|(phase, ms)| format!("{} {}", phase.label(), secs(*ms)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a user names an output to other tools: `oci:DIR:TAG` (skopeo, umoci),
/// `docker://HOST/REPO:TAG`, or a disk's path.
pub fn where_is(o: &OutputRecord) -> String {
    o.reference()
}

/// Sizes for humans (shared with other commands).
pub fn bytes(b: u64) -> String {
    human_bytes(b)
}

/// Seconds for humans.
pub fn seconds(ms: u64) -> String {
    secs(ms)
}
