//! `kiln image ...` and `kiln cache ...`: reading build records and managing the step cache.

use kiln_instance::sandbox::Network;
use std::io::Write;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use kiln_core::build::log::LogSource;
use kiln_core::cache::StepCache;
use kiln_core::record::{
    filter_of, BootBreakdown, ImageQuery, ImageRecord, Records, State, StepTiming,
};
use kiln_core::store::Home;
use kiln_store::Filter;

use crate::build::{boot_phases, bytes, seconds, write_json, Output};
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
    /// Stop a running build (it ends CANCELLED; nothing is distributed).
    Cancel(CancelArgs),
    /// Distribute an AVAILABLE image to more registry or bucket regions (nothing is rebuilt).
    Distribute(DistributeArgs),
    /// Check an image's signature (cosign format), its provenance and its SBOMs in a registry.
    Verify(crate::attest::VerifyArgs),
}

/// `kiln image distribute`
#[derive(Args)]
pub struct DistributeArgs {
    /// NAME/VERSION/BUILD, or an image ARN.
    image: String,
    /// A region kiln's configuration maps to a registry or bucket (repeat for more).
    #[arg(long = "region", required = true)]
    regions: Vec<String>,
}

/// `kiln image cancel`
#[derive(Args)]
pub struct CancelArgs {
    /// NAME/VERSION/BUILD, or an image ARN.
    image: String,
    /// Seconds to wait for the build to stop.
    #[arg(long, default_value_t = 120)]
    wait: u64,
}

/// `kiln image list`
#[derive(Args)]
pub struct ListArgs {
    /// Only this image name (NAME, or NAME/VERSION with x wildcards).
    filter: Option<String>,
    /// Only images in this state (AVAILABLE, FAILED, BUILDING, ...).
    #[arg(long)]
    state: Option<String>,
    /// Only images this owner started (`self`: you).
    #[arg(long)]
    owner: Option<String>,
    /// Only images this pipeline made (its name or ARN).
    #[arg(long)]
    pipeline: Option<String>,
    /// At most this many rows (0: all of them).
    #[arg(long, default_value_t = 100)]
    max_results: u32,
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
    /// The whole build's log (build.log), and its new lines as they are written until the
    /// build ends (the same reader as the API's log stream).
    #[arg(long, short = 'f', conflicts_with_all = ["component", "test"])]
    follow: bool,
}

/// `kiln cache ...`
#[derive(Subcommand)]
pub enum CacheCommand {
    /// How much the layer store, the step cache and the kept disks use.
    Info,
    /// Remove least-recently-used layers and kept disks down to a size (the configured limit
    /// by default).
    Prune(PruneArgs),
}

/// `kiln cache prune`
#[derive(Args)]
pub struct PruneArgs {
    /// Remove everything not needed by a running build.
    #[arg(long)]
    all: bool,
    /// Target size, such as 5GiB.
    #[arg(long, conflicts_with = "disks")]
    max_size: Option<String>,
    /// Remove every kept disk (and only those): the next disk build assembles its disk again.
    #[arg(long, conflicts_with = "all")]
    disks: bool,
}

/// The build records of the data directory, with interrupted builds marked FAILED.
pub async fn records() -> Result<Records> {
    let home = Home::new(config::kiln_home());
    kiln_instance::runlock::sweep(&home.run());
    let cfg = config::load()?;
    let store = config::open_store(&home, &cfg).await?;
    let records = Records::new(store);
    // A build whose kiln died shows as FAILED (interrupted) from the next command on.
    recover(&records, &cfg.access()).await?;
    Ok(records)
}

/// How recovery reaches the configured registries to take a dead build's pushes back.
pub(crate) fn registry_access() -> Result<kiln_dist::RegistryAccess> {
    Ok(config::load()?.access())
}

/// Marks builds of kiln processes that died FAILED, taking back what they half-distributed.
async fn recover(records: &Records, access: &kiln_dist::RegistryAccess) -> Result<()> {
    records
        .recover_interrupted(&kiln_core::record::LocalRuns, access)
        .await?;
    Ok(())
}

pub(crate) async fn one(records: &Records, reference: &str) -> Result<ImageRecord> {
    let q: ImageQuery = reference.parse().map_err(anyhow::Error::msg)?;
    match records.newest(&q, &[]).await? {
        Some(r) => Ok(r),
        None => {
            bail!("no build matches `{reference}` (`kiln image list` shows what kiln has built)")
        }
    }
}

/// Runs `kiln image ...`.
pub async fn run(cmd: ImageCommand) -> Result<u8> {
    let records = records().await?;
    match cmd {
        ImageCommand::List(a) => list(&records, a).await,
        ImageCommand::Get(a) => get(&records, a).await,
        ImageCommand::Logs(a) => logs(&records, a).await,
        ImageCommand::Cancel(a) => cancel(&records, a).await,
        ImageCommand::Distribute(a) => distribute(&records, a).await,
        ImageCommand::Verify(a) => crate::attest::verify(&records, a).await,
    }
}

/// Where the test VM's boot went: its phases, then what came after (the guest's own "startup
/// finished", kiln's agent brought in).
fn write_boot_breakdown(out: &mut impl Write, b: &BootBreakdown) -> std::io::Result<()> {
    let phases = boot_phases(b);
    if !phases.is_empty() {
        writeln!(out, "             boot: {phases}")?;
    }
    let mut after = Vec::new();
    if let Some(ms) = b.finished_ms {
        after.push(format!(
            "systemd finished starting up {} after the kernel",
            seconds(ms)
        ));
    }
    if let Some(ms) = b.kiln_agent_ms {
        after.push(format!(
            "kiln's agent came in {} after the guest agent",
            seconds(ms)
        ));
    }
    if !after.is_empty() {
        writeln!(out, "             then: {}", after.join("; "))?;
    }
    Ok(())
}

/// One line per step: name, status, time.
/// Which pipeline made an image, and what started it: a person or the schedule, and why.
fn write_origin(out: &mut impl Write, r: &ImageRecord) -> std::io::Result<()> {
    if let Some(p) = &r.pipeline {
        writeln!(out, "  pipeline   {p}")?;
    }
    writeln!(out, "  started    {}", r.build_type)?;
    for t in &r.triggers {
        writeln!(out, "  because    {t}")?;
    }
    if let Some(n) = r.network {
        let what = match n {
            Network::Private => "private (outbound only; the host itself out of reach)",
            Network::None => "none (loopback only)",
            Network::Host => {
                "host (the recipe's opt-in: the host's network, its loopback services included)"
            }
        };
        writeln!(out, "  network    {what}")?;
    }
    Ok(())
}

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

async fn list(records: &Records, a: ListArgs) -> Result<u8> {
    let mut filter = match &a.filter {
        Some(f) => filter_of(&f.parse::<ImageQuery>().map_err(anyhow::Error::msg)?),
        None => Filter::default(),
    };
    if let Some(s) = &a.state {
        let s = s.to_ascii_uppercase();
        let known = [
            "PENDING",
            "BUILDING",
            "TESTING",
            "DISTRIBUTING",
            "AVAILABLE",
            "FAILED",
            "CANCELLED",
        ];
        if !known.contains(&s.as_str()) {
            bail!("unknown state `{s}`: use one of {}", known.join(", "));
        }
        filter.states = vec![s];
    }
    filter.owner = a.owner.as_deref().map(crate::principal::owner_filter);
    if let Some(p) = &a.pipeline {
        let resources = kiln_core::resources::Resources::new(records.store().clone());
        let p = resources
            .get(
                &crate::principal::local(),
                p,
                &[kiln_store::Kind::ImagePipeline],
            )
            .await?;
        filter.pipeline = Some(p.arn);
    }
    filter.limit = (a.max_results > 0).then_some(a.max_results);
    let all = records.summaries(&filter).await?;
    let total = if filter.limit.is_some_and(|l| all.len() as u32 >= l) {
        let mut f = filter.clone();
        f.kind = Some(kiln_store::Kind::Image);
        records.store().db().count(&f).await?
    } else {
        all.len() as u64
    };
    let mut out = std::io::stdout().lock();
    if a.output == Output::Json {
        write_json(&mut out, &all)?;
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
        let layers = r.layers;
        writeln!(
            out,
            "{:<24} {:<10} {:>5}  {:<12} {:<20} {:>9}  {}/{}",
            r.name,
            r.version.to_string(),
            r.build,
            r.state.as_str(),
            r.created.format("%Y-%m-%d %H:%M:%S"),
            seconds(r.duration_ms),
            r.cache_hits,
            layers
        )?;
    }
    if total > all.len() as u64 {
        writeln!(
            out,
            "({} of {total} shown; --max-results 0 shows all, or filter by name, version, state)",
            all.len()
        )?;
    }
    Ok(0)
}

async fn get(records: &Records, a: GetArgs) -> Result<u8> {
    let r = one(records, &a.image).await?;
    let previous = kiln_core::inventory::previous_image(records, &r).await?;
    let diff = previous
        .as_ref()
        .map(|p| kiln_core::inventory::diff(&p.packages, &r.packages));
    // A build the queue ran: which worker held each attempt.
    let job = records.store().jobs().job(&r.arn).await?;
    let mut out = std::io::stdout().lock();
    if a.output == Output::Json {
        let mut v = serde_json::to_value(&r)?;
        if let (Some(o), Some(job)) = (v.as_object_mut(), &job) {
            o.insert("attempts".into(), attempts_json(job));
        }
        if let (Some(o), Some(chain)) = (
            v.as_object_mut(),
            r.parent.as_ref().and_then(|p| p.chain_id()),
        ) {
            o.insert("parentChainId".into(), serde_json::Value::String(chain));
        }
        if let (Some(o), Some(p), Some(d)) = (v.as_object_mut(), &previous, &diff) {
            o.insert(
                "previousImage".into(),
                serde_json::Value::String(p.arn.clone()),
            );
            o.insert("packageDiff".into(), serde_json::to_value(d)?);
        }
        write_json(&mut out, &v)?;
        return Ok(0);
    }
    writeln!(out, "{}", r.arn)?;
    writeln!(out, "  state      {}", r.state.as_str())?;
    if !r.owner.is_empty() {
        writeln!(out, "  owner      {}", r.owner)?;
    }
    write_origin(&mut out, &r)?;
    match &r.recipe_arn {
        Some(a) => writeln!(out, "  recipe     {a}")?,
        None => writeln!(out, "  recipe     {}", r.recipe.display())?,
    }
    for c in &r.configurations {
        writeln!(out, "  uses       {c}")?;
    }
    if let Some(b) = &r.builder {
        writeln!(out, "  builder    {b}")?;
    }
    if let Some(job) = &job {
        write_attempts(&mut out, job)?;
    }
    if let Some(scan) = &r.scan {
        writeln!(out, "  scan       {}", scan.summary())?;
        for f in scan.findings.iter().take(10) {
            let fixed = f
                .fixed_in
                .as_deref()
                .map(|v| format!(", fixed in {v}"))
                .unwrap_or_default();
            writeln!(
                out,
                "             {} {} in {} {}{fixed}",
                f.severity, f.id, f.package, f.version
            )?;
        }
        if scan.total > 10 {
            writeln!(
                out,
                "             ... {} more in {}",
                scan.total - 10,
                scan.output
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )?;
        }
    }
    if let Some(p) = &r.parent {
        writeln!(
            out,
            "  parent     {} -> {}{}",
            p.reference,
            p.resolved,
            if p.cached { " (cached)" } else { "" }
        )?;
        if let Some(chain) = p.chain_id() {
            writeln!(
                out,
                "             content {chain} ({} layers)",
                p.layers.len()
            )?;
        }
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
        if let Some(arn) = &c.arn {
            writeln!(out, "         {arn}")?;
        }
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
                t.accelerator.map_or("?", |a| a.as_str())
            )?;
        }
        if let Some(b) = &t.boot_breakdown {
            write_boot_breakdown(&mut out, b)?;
        }
        write_steps(&mut out, &t.steps)?;
    }
    if let Some(d) = &r.disk {
        let made = if d.cached {
            "from the disk cache".to_string()
        } else {
            format!("assembled in {}", seconds(d.assemble_ms))
        };
        writeln!(
            out,
            "  disk       {} MiB, kernel {}, root UUID {}, guest agent {} ({made})",
            d.size >> 20,
            d.kernel,
            d.filesystem_uuid,
            d.guest_agent.map_or("-", |g| g.as_str()),
        )?;
        if let Some(digest) = &d.digest {
            writeln!(out, "             raw disk {digest}")?;
        }
    }
    for o in &r.outputs {
        writeln!(
            out,
            "  output     {}: {} {} {}",
            o.region,
            o.kind,
            crate::build::where_is(o),
            o.manifest_digest
        )?;
        if o.tags.len() > 1 || o.sent.is_some() {
            writeln!(
                out,
                "             tags {}{}",
                o.tags.join(", "),
                o.sent
                    .map(|n| format!("; {} sent", crate::build::bytes(n)))
                    .unwrap_or_default()
            )?;
        }
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
    match (&previous, &diff) {
        (Some(p), Some(d)) if d.is_empty() => {
            writeln!(out, "             the same as {}", p.build_version())?
        }
        (Some(p), Some(d)) => {
            writeln!(
                out,
                "             against {}: {} added, {} removed, {} changed",
                p.build_version(),
                d.added.len(),
                d.removed.len(),
                d.changed.len()
            )?;
            for x in &d.added {
                writeln!(out, "             + {} {}", x.name, x.version)?;
            }
            for x in &d.removed {
                writeln!(out, "             - {} {}", x.name, x.version)?;
            }
            for (old, new) in &d.changed {
                writeln!(
                    out,
                    "             ~ {} {} -> {}",
                    new.name, old.version, new.version
                )?;
            }
        }
        _ => {}
    }
    if a.packages {
        for p in &r.packages {
            writeln!(
                out,
                "    {:<40} {:<40} {}",
                p.name, p.version, p.architecture
            )?;
        }
    }
    if let Some(sc) = &r.supply_chain {
        crate::attest::write_record(&mut out, sc)?;
    }
    writeln!(out, "  logs       {}", r.logs.display())?;
    Ok(0)
}

async fn logs(records: &Records, a: LogsArgs) -> Result<u8> {
    let r = one(records, &a.image).await?;
    let source = LogSource::of(records.store(), &r).await;
    if a.follow {
        let mut f = source.follow(0);
        let arn = r.arn.clone();
        let mut out = std::io::stdout();
        while let Some((_, line)) = f
            .next(|| async {
                matches!(records.get(&arn).await, Ok(Some(r)) if !r.state.is_final())
            })
            .await
        {
            writeln!(out, "{line}")?;
            out.flush()?;
        }
        let end = records.get(&arn).await?.map(|r| r.state);
        eprintln!(
            "{}: {}",
            r.build_version(),
            end.map(|s| s.as_str()).unwrap_or("deleted")
        );
        return Ok(0);
    }
    let wanted = |name: &str| match (&a.component, a.test) {
        (None, false) => true,
        (None, true) => name == "test",
        (Some(c), _) => {
            name.starts_with("build-")
                && (name.ends_with(&format!("-{}", kiln_core::build::file_safe(c)))
                    || c.parse::<usize>()
                        .is_ok_and(|n| name.starts_with(&format!("build-{n:02}-"))))
        }
    };
    // A queued build's worker sent its logs to the store (every attempt's, whichever host ran
    // it); another build's are in its log folder.
    let logs: Vec<(String, String)> = match &source {
        LogSource::Stored { .. } => stored_logs(records, &r.arn, &source, wanted).await?,
        LogSource::File(_) => local_logs(&r.logs, wanted),
    };
    if logs.is_empty() {
        bail!(
            "no such log in {} (it has: parent.log, build-NN-COMPONENT/, test/)",
            r.logs.display()
        );
    }
    let mut out = std::io::stdout().lock();
    for (name, text) in logs {
        writeln!(out, "### {name}")?;
        out.write_all(text.as_bytes())?;
    }
    Ok(0)
}

/// The wanted logs of the folder `dir`, by path: each top-level file, and each folder's
/// `console.log`.
fn local_logs(dir: &std::path::Path, wanted: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    entries
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| wanted(&n.to_string_lossy())))
        .filter_map(|p| {
            let file = if p.is_dir() { p.join("console.log") } else { p };
            let text = std::fs::read_to_string(&file).ok()?;
            Some((file.display().to_string(), text))
        })
        .collect()
}

/// The wanted logs a queued build's worker sent to the store: the build log, and the files
/// of its log folder by their path in it.
async fn stored_logs(
    records: &Records,
    arn: &str,
    source: &LogSource,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<(String, String)>> {
    let logs = records.store().logs();
    let mut out = Vec::new();
    let mut names = logs.log_files(arn).await?;
    names.push(kiln_core::build::log::BUILD_LOG.to_owned());
    names.sort();
    for name in names {
        let top = name.split('/').next().unwrap_or_default();
        if !wanted(top) {
            continue;
        }
        let text = if name == kiln_core::build::log::BUILD_LOG {
            let lines = source.lines().await;
            lines.into_iter().map(|(_, l)| l + "\n").collect()
        } else {
            logs.log_file(arn, &name).await?.unwrap_or_default()
        };
        out.push((format!("{name} (from the store)"), text));
    }
    Ok(out)
}

async fn distribute(records: &Records, a: DistributeArgs) -> Result<u8> {
    let r = one(records, &a.image).await?;
    let cfg = config::load()?;
    let home = Home::new(config::kiln_home());
    let options = kiln_core::build::BuildOptions {
        registries: cfg.registries.clone(),
        s3: cfg.s3.clone(),
        regions: cfg.regions.clone(),
        ..Default::default()
    };
    let progress = |line: &str| eprintln!("{line}");
    let version = r.build_version();
    let rec = kiln_core::build::again::distribute_again(
        &home, records, &options, r, &a.regions, &progress,
    )
    .await
    .with_context(|| format!("distributing {version}"))?;
    for o in rec.outputs.iter().filter(|o| a.regions.contains(&o.region)) {
        println!(
            "{}\t{}\t{}\t{}",
            o.region,
            o.kind,
            o.reference(),
            o.manifest_digest
        );
    }
    Ok(0)
}

async fn cancel(records: &Records, a: CancelArgs) -> Result<u8> {
    let r = one(records, &a.image).await?;
    if r.state.is_final() {
        bail!(
            "{} is {}: only a running build can be cancelled",
            r.build_version(),
            r.state.as_str()
        );
    }
    if r.state == State::Distributing {
        bail!(
            "{} is distributing: it finishes so that no region is left half-written",
            r.build_version()
        );
    }
    let notices = kiln_api::notices::ImageNotices::new(records.store().clone());
    if kiln_core::build::queued::cancel(records.store(), &r.arn, Some(&notices)).await? {
        println!("CANCELLED {}", r.build_version());
        return Ok(0);
    }
    eprintln!("asked {} to stop; waiting for it", r.build_version());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(a.wait);
    let access = registry_access()?;
    loop {
        recover(records, &access).await?;
        let now = records.get(&r.arn).await?;
        if let Some(now) = now.filter(|n| n.state.is_final()) {
            println!("{} {}", now.state.as_str(), now.build_version());
            return Ok(if now.state == State::Cancelled { 0 } else { 1 });
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "{} has not stopped after {} s; it stops at its next step (the request stays)",
                r.build_version(),
                a.wait
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// The attempts of a queued build, as `kiln image get -o json` shows them.
fn attempts_json(job: &kiln_store::Job) -> serde_json::Value {
    job.attempts
        .iter()
        .map(|a| {
            serde_json::json!({
                "attempt": a.number,
                "worker": a.worker,
                "claimed": millis_time(a.claimed_ms),
                "ended": a.ended_ms.map(millis_time),
                "end": a.end.as_str(),
            })
        })
        .collect()
}

/// One line per attempt of a queued build: its worker and how the attempt ended.
fn write_attempts(out: &mut impl Write, job: &kiln_store::Job) -> Result<()> {
    if job.attempts.is_empty() {
        writeln!(out, "  worker     none yet (queued)")?;
    }
    for a in &job.attempts {
        let how = match a.end {
            kiln_store::AttemptEnd::Running => "running",
            kiln_store::AttemptEnd::Finished => "ran it to its end",
            kiln_store::AttemptEnd::Lost => "stopped renewing its lease",
        };
        writeln!(
            out,
            "  worker     attempt {} of {}: {} ({how}, claimed {})",
            a.number,
            job.max_attempts,
            a.worker,
            millis_time(a.claimed_ms)
        )?;
    }
    Ok(())
}

fn millis_time(ms: i64) -> String {
    chrono::TimeZone::timestamp_millis_opt(&chrono::Utc, ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// A unit enum's serde name (`zstd`).
fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Runs `kiln cache ...`.
pub async fn cache(cmd: CacheCommand) -> Result<u8> {
    let cfg = config::load()?;
    let home = Home::new(config::kiln_home());
    records().await?;
    let cache = StepCache::new(home.clone());
    let mut out = std::io::stdout().lock();
    match cmd {
        CacheCommand::Info => {
            let layers = kiln_core::store::LayerStore::new(home.clone()).list();
            let layer_bytes: u64 = layers.iter().map(|l| l.info.size + l.info.tree_bytes).sum();
            let disks = cache.disks().entries();
            let disk_bytes: u64 = disks.iter().map(|d| cache.disks().bytes(d)).sum();
            writeln!(out, "{}", home.root.display())?;
            writeln!(
                out,
                "  layers        {} ({})",
                layers.len(),
                bytes(layer_bytes)
            )?;
            writeln!(out, "  cache entries {}", cache.entries().len())?;
            writeln!(
                out,
                "  disks         {} ({})",
                disks.len(),
                bytes(disk_bytes)
            )?;
            writeln!(out, "  used          {}", bytes(layer_bytes + disk_bytes))?;
            writeln!(out, "  limit         {}", bytes(cfg.cache_max_bytes))?;
            let mut disks = disks;
            disks.sort_by(|a, b| a.name.cmp(&b.name).then(a.created.cmp(&b.created)));
            for d in &disks {
                let mut formats: Vec<String> = vec!["raw".into()];
                formats.extend(d.formats.iter().map(
                    |f| match serde_plain(&f.compression).as_str() {
                        "none" => f.format.extension().to_string(),
                        c => format!("{} ({c})", f.format.extension()),
                    },
                ));
                writeln!(
                    out,
                    "    {:<20} {:>9}  {}  {}  {}",
                    d.name,
                    bytes(cache.disks().bytes(d)),
                    &d.raw.digest[..d.raw.digest.len().min(19)],
                    formats.join(", "),
                    d.created.format("%Y-%m-%d %H:%M")
                )?;
            }
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
            // A running build reads its disk through its own link, so kept disks may go at any
            // time. Layers of running builds are protected by their run locks: only prune
            // layers when no build runs, which `sweep` tells by the locks it cannot take.
            let r = if a.disks {
                cache.prune_disks()
            } else {
                let running = std::fs::read_dir(home.run())
                    .map(|d| d.flatten().count())
                    .unwrap_or(0);
                kiln_instance::runlock::sweep(&home.run());
                let still = std::fs::read_dir(home.run())
                    .map(|d| d.flatten().count())
                    .unwrap_or(0);
                if still > 0 {
                    bail!("{still} build(s) are running ({} total folders in {}); prune when they are done (`--disks` can be pruned now)", running, home.run().display());
                }
                cache.prune(max, &Default::default())
            };
            writeln!(
                out,
                "removed {} layer(s) and {} disk(s), freed {}, {} left",
                r.layers_removed,
                r.disks_removed,
                bytes(r.bytes_freed),
                bytes(r.bytes_left)
            )?;
        }
    }
    Ok(0)
}
