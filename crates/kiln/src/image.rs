//! `kiln image ...` and `kiln cache ...`: reading build records and managing the step cache.

use std::io::Write;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use kiln_core::cache::StepCache;
use kiln_core::record::{ImageQuery, ImageRecord, Records, StepTiming};
use kiln_core::store::Home;

use crate::build::{bytes, seconds, Output};
use crate::config;

/// `kiln image ...`
#[derive(Subcommand)]
pub enum ImageCommand {
    /// List builds (newest version and build first).
    List(ListArgs),
    /// Show one build: NAME/VERSION[/BUILD] (the newest build when BUILD is left out).
    Get(GetArgs),
    /// Print a build's logs.
    Logs(LogsArgs),
}

/// `kiln image list`
#[derive(Args)]
pub struct ListArgs {
    /// Only this image name (NAME, or NAME/VERSION with x wildcards).
    filter: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// `kiln image get`
#[derive(Args)]
pub struct GetArgs {
    /// NAME/VERSION[/BUILD], or an image ARN.
    image: String,
    /// List every package of the image.
    #[arg(long)]
    packages: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// `kiln image logs`
#[derive(Args)]
pub struct LogsArgs {
    /// NAME/VERSION[/BUILD], or an image ARN.
    image: String,
    /// Only this component's build log (its name, or its position from 1).
    #[arg(long)]
    component: Option<String>,
    /// Only the test stage's log.
    #[arg(long)]
    test: bool,
}

/// `kiln cache ...`
#[derive(Subcommand)]
pub enum CacheCommand {
    /// How much the layer store and step cache use.
    Info,
    /// Remove least-recently-used layers down to a size (the configured limit by default).
    Prune(PruneArgs),
}

/// `kiln cache prune`
#[derive(Args)]
pub struct PruneArgs {
    /// Remove everything not needed by a running build.
    #[arg(long)]
    all: bool,
    /// Target size, such as 5GiB.
    #[arg(long)]
    max_size: Option<String>,
}

fn records() -> Records {
    Records::new(Home::new(config::kiln_home()))
}

fn one(reference: &str) -> Result<ImageRecord> {
    let q: ImageQuery = reference.parse().map_err(anyhow::Error::msg)?;
    let found = records().find(&q);
    match found.into_iter().next() {
        Some(r) => Ok(r),
        None => {
            bail!("no build matches `{reference}` (`kiln image list` shows what kiln has built)")
        }
    }
}

/// Runs `kiln image ...`.
pub fn run(cmd: ImageCommand) -> Result<u8> {
    // A build whose kiln died shows as FAILED (interrupted) from the next command on.
    let home = Home::new(config::kiln_home());
    kiln_instance::sandbox::sweep(&home.run());
    records().recover_interrupted();
    match cmd {
        ImageCommand::List(a) => list(a),
        ImageCommand::Get(a) => get(a),
        ImageCommand::Logs(a) => logs(a),
    }
}

/// One line per step: name, status, time.
fn write_steps(out: &mut impl Write, steps: &[StepTiming]) -> std::io::Result<()> {
    for s in steps {
        writeln!(
            out,
            "         {:<40} {:<10} {:>8}",
            s.step,
            s.status,
            seconds(s.duration_ms)
        )?;
    }
    Ok(())
}

fn list(a: ListArgs) -> Result<u8> {
    let mut all = records().all();
    if let Some(f) = &a.filter {
        let q: ImageQuery = f.parse().map_err(anyhow::Error::msg)?;
        all.retain(|r| r.name == q.name && q.version.is_none_or(|v| v.matches(&r.version)));
    }
    all.sort_by(|a, b| {
        a.name.cmp(&b.name).then(kiln_core::version::cmp_build(
            (b.version, b.build),
            (a.version, a.build),
        ))
    });
    let mut out = std::io::stdout().lock();
    if a.output == Output::Json {
        serde_json::to_writer_pretty(&mut out, &all)?;
        writeln!(out)?;
        return Ok(0);
    }
    if all.is_empty() {
        writeln!(out, "no builds yet (`kiln build RECIPE` makes one)")?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<24} {:<10} {:>5}  {:<12} {:<20} {:>9}  CACHE",
        "NAME", "VERSION", "BUILD", "STATE", "CREATED", "DURATION"
    )?;
    for r in &all {
        let layers = r.components.iter().filter(|c| c.layer.is_some()).count();
        writeln!(
            out,
            "{:<24} {:<10} {:>5}  {:<12} {:<20} {:>9}  {}/{}",
            r.name,
            r.version.to_string(),
            r.build,
            r.state.as_str(),
            r.created.format("%Y-%m-%d %H:%M:%S"),
            seconds(r.duration_ms),
            r.cache_hits(),
            layers
        )?;
    }
    Ok(0)
}

fn get(a: GetArgs) -> Result<u8> {
    let r = one(&a.image)?;
    let mut out = std::io::stdout().lock();
    if a.output == Output::Json {
        serde_json::to_writer_pretty(&mut out, &r)?;
        writeln!(out)?;
        return Ok(0);
    }
    writeln!(out, "{}", r.arn)?;
    writeln!(out, "  state      {}", r.state.as_str())?;
    writeln!(out, "  recipe     {}", r.recipe.display())?;
    if let Some(p) = &r.parent {
        writeln!(
            out,
            "  parent     {} -> {}{}",
            p.reference,
            p.resolved,
            if p.cached { " (cached)" } else { "" }
        )?;
    }
    writeln!(
        out,
        "  created    {}  ({})",
        r.created.to_rfc3339(),
        seconds(r.duration_ms)
    )?;
    writeln!(out, "  history")?;
    for h in &r.history {
        writeln!(
            out,
            "    {}  {}{}",
            h.at.format("%H:%M:%S%.3f"),
            h.state.as_str(),
            h.reason
                .as_ref()
                .map(|x| format!(": {}", x.lines().next().unwrap_or("")))
                .unwrap_or_default()
        )?;
    }
    writeln!(out, "  components")?;
    for (i, c) in r.components.iter().enumerate() {
        let cache = serde_json::to_value(c.cache)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        writeln!(
            out,
            "    {}. {:<28} cache {:<9} {:>9}  {}",
            i + 1,
            c.name,
            cache,
            seconds(c.duration_ms),
            c.layer
                .as_deref()
                .map(|l| format!("{} ({})", &l[..l.len().min(19)], bytes(c.layer_size)))
                .unwrap_or_else(|| "no layer".into())
        )?;
        write_steps(&mut out, &c.steps)?;
    }
    if let Some(t) = &r.tests {
        writeln!(
            out,
            "  tests      {} {}{}",
            t.status,
            seconds(t.duration_ms),
            t.reused_from
                .as_ref()
                .map(|b| format!(" (passed in {b})"))
                .unwrap_or_default()
        )?;
        if let Some(ms) = t.boot_ms {
            writeln!(
                out,
                "             in a VM booted from the disk in {} ({})",
                seconds(ms),
                t.accelerator.as_deref().unwrap_or("?")
            )?;
        }
        write_steps(&mut out, &t.steps)?;
    }
    if let Some(d) = &r.disk {
        writeln!(
            out,
            "  disk       {} MiB, kernel {}, root UUID {}, guest agent {} (assembled in {})",
            d.size >> 20,
            d.kernel,
            d.filesystem_uuid,
            d.guest_agent,
            seconds(d.assemble_ms)
        )?;
    }
    for o in &r.outputs {
        if o.kind.starts_with("disk-") {
            writeln!(
                out,
                "  output     {}: {} {}",
                o.region,
                o.location.display(),
                o.manifest_digest
            )?;
            continue;
        }
        writeln!(
            out,
            "  output     {}: oci:{}:{} {}",
            o.region,
            o.location.display(),
            o.tag,
            o.manifest_digest
        )?;
    }
    if let Some(f) = &r.failure {
        writeln!(
            out,
            "  failure    in {}: {}",
            f.stage.as_str(),
            f.reason.replace('\n', "\n             ")
        )?;
        if let Some(c) = &f.component {
            writeln!(
                out,
                "             component {c}{}",
                f.step
                    .as_ref()
                    .map(|s| format!(", step {s}"))
                    .unwrap_or_default()
            )?;
        }
        for l in &f.output_tail {
            writeln!(out, "             | {l}")?;
        }
        if let Some(l) = &f.log {
            writeln!(out, "             log: {}", l.display())?;
        }
    }
    writeln!(out, "  packages   {}", r.packages.len())?;
    if a.packages {
        for p in &r.packages {
            writeln!(
                out,
                "    {:<40} {:<40} {}",
                p.name, p.version, p.architecture
            )?;
        }
    }
    writeln!(out, "  logs       {}", r.logs.display())?;
    Ok(0)
}

fn logs(a: LogsArgs) -> Result<u8> {
    let r = one(&a.image)?;
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&r.logs)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for p in entries {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let wanted = match (&a.component, a.test) {
            (None, false) => true,
            (None, true) => name == "test",
            (Some(c), _) => {
                name.starts_with("build-")
                    && (name.ends_with(&format!("-{}", kiln_core::build::file_safe(c)))
                        || c.parse::<usize>()
                            .is_ok_and(|n| name.starts_with(&format!("build-{n:02}-"))))
            }
        };
        if wanted {
            dirs.push(p);
        }
    }
    if dirs.is_empty() {
        bail!(
            "no such log in {} (it has: parent.log, build-NN-COMPONENT/, test/)",
            r.logs.display()
        );
    }
    let mut out = std::io::stdout().lock();
    for d in dirs {
        let file = if d.is_dir() {
            d.join("console.log")
        } else {
            d.clone()
        };
        if let Ok(text) = std::fs::read_to_string(&file) {
            writeln!(out, "### {}", file.display())?;
            out.write_all(text.as_bytes())?;
        }
    }
    Ok(0)
}

/// Runs `kiln cache ...`.
pub fn cache(cmd: CacheCommand) -> Result<u8> {
    let cfg = config::load()?;
    let home = Home::new(config::kiln_home());
    kiln_instance::sandbox::sweep(&home.run());
    records().recover_interrupted();
    let cache = StepCache::new(home.clone());
    let mut out = std::io::stdout().lock();
    match cmd {
        CacheCommand::Info => {
            let layers = kiln_core::store::LayerStore::new(home.clone()).list();
            writeln!(out, "{}", home.root.display())?;
            writeln!(out, "  layers        {}", layers.len())?;
            writeln!(out, "  cache entries {}", cache.entries().len())?;
            writeln!(out, "  used          {}", bytes(cache.usage()))?;
            writeln!(out, "  limit         {}", bytes(cfg.cache_max_bytes))?;
        }
        CacheCommand::Prune(a) => {
            let max = if a.all {
                0
            } else if let Some(s) = &a.max_size {
                kiln_core::recipe::parse_size(s)
                    .ok_or_else(|| anyhow::anyhow!("`{s}` is not a size (write 5GiB, 500MiB)"))?
            } else {
                cfg.cache_max_bytes
            };
            // Layers of running builds are protected by their run locks: only prune when no
            // build runs, which `sweep` tells by the locks it cannot take.
            let running = std::fs::read_dir(home.run())
                .map(|d| d.flatten().count())
                .unwrap_or(0);
            kiln_instance::sandbox::sweep(&home.run());
            let still = std::fs::read_dir(home.run())
                .map(|d| d.flatten().count())
                .unwrap_or(0);
            if still > 0 {
                bail!("{still} build(s) are running ({} total folders in {}); prune when they are done", running, home.run().display());
            }
            let r = cache.prune(max, &Default::default());
            writeln!(
                out,
                "removed {} layer(s), freed {}, {} left",
                r.layers_removed,
                bytes(r.bytes_freed),
                bytes(r.bytes_left)
            )?;
        }
    }
    Ok(0)
}
