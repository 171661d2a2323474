//! `kiln component|recipe|infrastructure|distribution|pipeline ...`: resources in the state
//! store, created from Image Builder request files (YAML or JSON).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use kiln_core::request::{Document, Operation, Request};
use kiln_core::resources::{
    kind_noun, ErrorCode, Invalid, ListOptions, Outcome, Resource, ResourceError, ResourceSummary,
    Resources,
};
use kiln_core::store::Home;
use kiln_store::Kind;

use crate::build::{write_json, BuildFlags, Output};
use crate::{config, EXIT_INVALID};

/// The request file: a path, or `--cli-input-json`/`--cli-input-yaml` as the AWS CLI takes it.
#[derive(Args)]
pub struct RequestFile {
    /// The request file (YAML or JSON, with Image Builder's field names).
    file: Option<PathBuf>,
    /// The request file, as `aws imagebuilder ... --cli-input-json file://FILE` takes it.
    #[arg(long, value_name = "file://FILE", conflicts_with = "file")]
    cli_input_json: Option<String>,
    /// The same for YAML.
    #[arg(long, value_name = "file://FILE", conflicts_with_all = ["file", "cli_input_json"])]
    cli_input_yaml: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

impl RequestFile {
    /// The request file's path, as the user gave it.
    fn path(&self) -> Result<PathBuf> {
        if let Some(f) = &self.file {
            return Ok(f.clone());
        }
        match self
            .cli_input_json
            .as_ref()
            .or(self.cli_input_yaml.as_ref())
        {
            Some(f) => Ok(PathBuf::from(f.strip_prefix("file://").unwrap_or(f))),
            None => bail!("give the request file (kiln ... create FILE)"),
        }
    }

    /// Reads and parses the request file; the core never opens it.
    fn document(&self) -> Result<Document> {
        let path = self.path()?;
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ResourceError::from(Invalid::message(
                ErrorCode::InvalidRequest,
                format!("cannot read {}: {e}", path.display()),
            ))
        })?;
        Ok(Document::from_file(&path, text)?)
    }
}

/// `get` and `delete`.
#[derive(Args)]
pub struct RefArgs {
    /// An ARN, or NAME (NAME/VERSION for components and recipes; VERSION may use x).
    reference: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// `list`.
#[derive(Args)]
pub struct ListArgs {
    /// Only this name.
    #[arg(long)]
    name: Option<String>,
    /// Only versions matching this filter (1.2.3, 1.x.x, ...).
    #[arg(long)]
    version: Option<String>,
    /// Only this owner's (`self`: yours).
    #[arg(long)]
    owner: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// Components and recipes: versioned and immutable.
#[derive(Subcommand)]
pub enum VersionedCommand {
    /// Create from a request file; without semanticVersion, kiln takes the next patch
    /// version when the content changed and returns the existing one when it did not.
    Create(RequestFile),
    /// Show one (the newest version matching).
    Get(RefArgs),
    /// List them.
    List(ListArgs),
    /// Delete one version (refused while a recipe or pipeline uses it).
    Delete(RefArgs),
}

/// Infrastructure and distribution configurations: one per name, updatable.
#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Create from a request file (the same file again changes nothing).
    Create(RequestFile),
    /// Replace one with a request file's content (same name, same ARN).
    Update(RequestFile),
    /// Show one.
    Get(RefArgs),
    /// List them.
    List(ListArgs),
    /// Delete one (refused while a pipeline uses it; a lifecycle policy's images stay).
    Delete(RefArgs),
}

/// Image pipelines.
#[derive(Subcommand)]
pub enum PipelineCommand {
    /// Create from a request file (CreateImagePipeline's fields).
    Create(RequestFile),
    /// Replace one with a request file's content.
    Update(RequestFile),
    /// Show one.
    Get(RefArgs),
    /// List them.
    List(ListArgs),
    /// Delete one (its images stay).
    Delete(RefArgs),
    /// Run it now: build, test and distribute an image from its recipe, in the foreground.
    Start(StartArgs),
    /// Its scheduled runs, the latest first: what each came to and why.
    Runs(RefArgs),
}

/// `kiln pipeline start`
#[derive(Args)]
pub struct StartArgs {
    /// The pipeline: its name or ARN.
    pipeline: String,
    #[command(flatten)]
    flags: BuildFlags,
}

/// Which resource command.
pub enum Which {
    /// Components.
    Component(VersionedCommand),
    /// Image and container recipes.
    Recipe(VersionedCommand),
    /// Infrastructure configurations.
    Infrastructure(ConfigCommand),
    /// Distribution configurations.
    Distribution(ConfigCommand),
    /// Pipelines.
    Pipeline(PipelineCommand),
    /// Lifecycle policies.
    Lifecycle(ConfigCommand),
}

async fn resources() -> Result<Resources> {
    let home = Home::new(config::kiln_home());
    let cfg = config::load()?;
    Ok(Resources::new(config::open_store(&home, &cfg).await?).with_trust(cfg.trust))
}

/// Runs a resource command.
pub async fn run(which: Which) -> Result<u8> {
    let res = resources().await?;
    let r = match which {
        Which::Component(c) => versioned(&res, &[Kind::Component], c).await,
        Which::Recipe(c) => versioned(&res, &[Kind::ImageRecipe, Kind::ContainerRecipe], c).await,
        Which::Infrastructure(c) => config(&res, Kind::InfrastructureConfiguration, c).await,
        Which::Distribution(c) => config(&res, Kind::DistributionConfiguration, c).await,
        Which::Pipeline(c) => pipeline(&res, c).await,
        Which::Lifecycle(c) => config(&res, Kind::LifecyclePolicy, c).await,
    };
    match r {
        Ok(code) => Ok(code),
        Err(e) => match e.downcast::<ResourceError>() {
            Ok(ResourceError::Invalid(invalid)) => {
                let text = invalid.to_string();
                eprint!("{text}");
                if !text.ends_with('\n') {
                    eprintln!();
                }
                eprintln!("nothing was stored: fix the request above");
                Ok(EXIT_INVALID)
            }
            Ok(other) => {
                eprintln!("error: {other}");
                Ok(1)
            }
            Err(e) => Err(e),
        },
    }
}

async fn versioned(res: &Resources, kinds: &[Kind], c: VersionedCommand) -> Result<u8> {
    match c {
        VersionedCommand::Create(f) => create(res, kinds[0], &f, false).await,
        VersionedCommand::Get(a) => get(res, kinds, &a).await,
        VersionedCommand::List(a) => list(res, kinds, &a).await,
        VersionedCommand::Delete(a) => delete(res, kinds, &a).await,
    }
}

async fn config(res: &Resources, kind: Kind, c: ConfigCommand) -> Result<u8> {
    match c {
        ConfigCommand::Create(f) => create(res, kind, &f, false).await,
        ConfigCommand::Update(f) => create(res, kind, &f, true).await,
        ConfigCommand::Get(a) => get(res, &[kind], &a).await,
        ConfigCommand::List(a) => list(res, &[kind], &a).await,
        ConfigCommand::Delete(a) => delete(res, &[kind], &a).await,
    }
}

async fn pipeline(res: &Resources, c: PipelineCommand) -> Result<u8> {
    let kind = Kind::ImagePipeline;
    match c {
        PipelineCommand::Create(f) => create(res, kind, &f, false).await,
        PipelineCommand::Update(f) => create(res, kind, &f, true).await,
        PipelineCommand::Get(a) => get(res, &[kind], &a).await,
        PipelineCommand::List(a) => list(res, &[kind], &a).await,
        PipelineCommand::Delete(a) => delete(res, &[kind], &a).await,
        PipelineCommand::Start(a) => start(res, a).await,
        PipelineCommand::Runs(a) => runs(res, &a).await,
    }
}

async fn create(res: &Resources, kind: Kind, f: &RequestFile, update: bool) -> Result<u8> {
    let document = f.document()?;
    let operation = match kind {
        Kind::ImageRecipe | Kind::ContainerRecipe => Some(Operation::create_recipe(&document)),
        _ if update => Operation::update(kind),
        _ => Operation::create(kind),
    };
    let Some(operation) = operation else {
        bail!(
            "{}s cannot be {}",
            kind_noun(kind),
            if update { "updated" } else { "created" }
        );
    };
    let Outcome {
        resource,
        created,
        warnings,
    } = res
        .apply(
            &crate::principal::local(),
            Request::new(operation, document),
        )
        .await?;
    eprint!("{warnings}");
    let mut out = std::io::stdout().lock();
    if f.output == Output::Json {
        let mut v = serde_json::to_value(&resource)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("created".into(), serde_json::Value::Bool(created));
        }
        write_json(&mut out, &v)?;
        return Ok(0);
    }
    let what = format!(
        "{} {}{}",
        kind_noun(resource.kind),
        resource.name,
        resource
            .version
            .map(|v| format!(" {v}"))
            .unwrap_or_default()
    );
    match (created, update) {
        (true, false) => writeln!(out, "created {what}")?,
        (true, true) => writeln!(out, "updated {what}")?,
        (false, _) => writeln!(out, "unchanged: {what} already has this content")?,
    }
    writeln!(out, "  {}", resource.arn)?;
    Ok(0)
}

async fn get(res: &Resources, kinds: &[Kind], a: &RefArgs) -> Result<u8> {
    let r = res
        .get(&crate::principal::local(), &a.reference, kinds)
        .await?;
    let runs = match r.kind {
        Kind::ImagePipeline => Some(
            kiln_core::scheduler::status(
                &kiln_core::record::Records::new(res.store().clone()),
                &r,
                chrono::Utc::now(),
            )
            .await?,
        ),
        _ => None,
    };
    let mut out = std::io::stdout().lock();
    if a.output == Output::Json {
        let mut v = serde_json::to_value(&r)?;
        if let (Some(o), Some(runs)) = (v.as_object_mut(), &runs) {
            if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(runs) {
                o.extend(fields);
            }
        }
        write_json(&mut out, &v)?;
        return Ok(0);
    }
    print_resource(&mut out, &r)?;
    if let Some(s) = runs {
        print_runs(&mut out, &r, &s)?;
    }
    Ok(0)
}

/// A pipeline's schedule in words and what its runs came to.
fn print_runs(
    out: &mut impl Write,
    r: &Resource,
    s: &kiln_core::scheduler::RunStatus,
) -> std::io::Result<()> {
    match kiln_core::scheduler::spec::of(r) {
        Ok(Some(spec)) => {
            writeln!(
                out,
                "  schedule    {} ({})",
                spec.schedule.describe(),
                spec.condition
            )?;
            if spec.rebuild_when.any() {
                let mut words = Vec::new();
                if spec.rebuild_when.parent_digest {
                    words.push("the parent's digest moves");
                }
                if spec.rebuild_when.os_packages {
                    words.push("its packages have updates");
                }
                writeln!(out, "  also when   {}", words.join(", "))?;
            }
        }
        Ok(None) => writeln!(out, "  schedule    none (it runs when started)")?,
        Err(e) => writeln!(out, "  schedule    unreadable: {e}")?,
    }
    let at = |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or("-".into(), |t| t.to_rfc3339());
    writeln!(out, "  next run    {}", at(s.date_next_run))?;
    writeln!(out, "  last run    {}", at(s.date_last_run))?;
    if let Some(st) = s.last_run_status {
        writeln!(out, "  last status {st}")?;
    }
    writeln!(
        out,
        "  failures    {} scheduled runs in a row",
        s.consecutive_failures
    )?;
    Ok(())
}

fn print_resource(out: &mut impl Write, r: &Resource) -> std::io::Result<()> {
    writeln!(out, "{}", r.arn)?;
    writeln!(out, "  type        {}", kind_noun(r.kind))?;
    writeln!(out, "  name        {}", r.name)?;
    if let Some(v) = r.version {
        writeln!(out, "  version     {v}")?;
    }
    if let Some(t) = &r.component_type {
        writeln!(out, "  kind        {t}")?;
    }
    if let Some(s) = &r.status {
        writeln!(out, "  status      {s}")?;
    }
    if !r.description.is_empty() {
        writeln!(out, "  description {}", r.description)?;
    }
    writeln!(out, "  owner       {}", r.owner)?;
    writeln!(out, "  created     {}", r.date_created.to_rfc3339())?;
    if let Some(u) = r.date_updated {
        writeln!(out, "  updated     {}", u.to_rfc3339())?;
    }
    writeln!(out, "  digest      sha256:{}", r.digest)?;
    for u in &r.uses {
        writeln!(out, "  uses        {u}")?;
    }
    let mut fields = r.request.clone();
    if let Some(o) = fields.as_object_mut() {
        for k in ["name", "description", "semanticVersion", "data", "status"] {
            o.remove(k);
        }
    }
    if fields.as_object().is_some_and(|o| !o.is_empty()) {
        let text = serde_json::to_string_pretty(&fields).unwrap_or_default();
        writeln!(out, "  fields")?;
        for l in text.lines() {
            writeln!(out, "    {l}")?;
        }
    }
    if let Some(d) = &r.data {
        writeln!(out, "  document")?;
        for l in d.lines() {
            writeln!(out, "    {l}")?;
        }
    }
    Ok(())
}

async fn list(res: &Resources, kinds: &[Kind], a: &ListArgs) -> Result<u8> {
    let version = match &a.version {
        Some(v) => Some(v.parse().map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let o = ListOptions {
        name: a.name.clone(),
        version,
        owner: a.owner.as_deref().map(crate::principal::owner_filter),
    };
    let all: Vec<ResourceSummary> = res.list(&crate::principal::local(), kinds, &o).await?;
    let mut out = std::io::stdout().lock();
    if a.output == Output::Json {
        write_json(&mut out, &all)?;
        return Ok(0);
    }
    if all.is_empty() {
        writeln!(
            out,
            "no {}s yet (`kiln {} create FILE` makes one)",
            kind_noun(kinds[0]),
            kiln_core::resources::cli_noun(kinds[0])
        )?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<28} {:<9} {:<18} {:<10} {:<20} ARN",
        "NAME", "VERSION", "TYPE", "OWNER", "CREATED"
    )?;
    for r in &all {
        let ty = match (r.component_type, r.status) {
            (Some(t), _) => t.as_str(),
            (_, Some(s)) => s.as_str(),
            _ => r.kind.as_str(),
        };
        writeln!(
            out,
            "{:<28} {:<9} {:<18} {:<10} {:<20} {}",
            r.name,
            r.version
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            ty,
            r.owner,
            r.date_created.format("%Y-%m-%d %H:%M:%S"),
            r.arn
        )?;
    }
    Ok(0)
}

async fn delete(res: &Resources, kinds: &[Kind], a: &RefArgs) -> Result<u8> {
    let r = res
        .delete(&crate::principal::local(), &a.reference, kinds)
        .await?;
    println!("deleted {} {}", kind_noun(r.kind), r.arn);
    Ok(0)
}

async fn runs(res: &Resources, a: &RefArgs) -> Result<u8> {
    let p = res
        .get(
            &crate::principal::local(),
            &a.reference,
            &[Kind::ImagePipeline],
        )
        .await?;
    let runs = res.store().db().runs(&p.arn, 100).await?;
    let mut out = std::io::stdout().lock();
    if a.output == Output::Json {
        let v: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "at": chrono::DateTime::from_timestamp_millis(r.at_ms).map(|t| t.to_rfc3339()),
                    "claimed": chrono::DateTime::from_timestamp_millis(r.claimed_ms).map(|t| t.to_rfc3339()),
                    "image": r.image,
                    "note": r.note,
                })
            })
            .collect();
        write_json(&mut out, &v)?;
        return Ok(0);
    }
    if runs.is_empty() {
        writeln!(out, "pipeline {} has no scheduled runs yet", p.name)?;
    }
    for r in &runs {
        let at = chrono::DateTime::from_timestamp_millis(r.at_ms)
            .map_or_else(|| r.at_ms.to_string(), |t| t.to_rfc3339());
        writeln!(out, "{at}  {}", r.note)?;
        if let Some(i) = &r.image {
            writeln!(out, "  {i}")?;
        }
    }
    Ok(0)
}

async fn start(res: &Resources, a: StartArgs) -> Result<u8> {
    let plan = kiln_core::pipeline::plan(res, &crate::principal::local(), &a.pipeline).await?;
    eprintln!(
        "pipeline {}: recipe {}, {}{}",
        plan.pipeline.name,
        plan.recipe.arn,
        plan.infrastructure.arn,
        plan.distribution
            .as_ref()
            .map(|d| format!(", {}", d.arn))
            .unwrap_or_default()
    );
    let provenance = crate::build::Provenance {
        origin: Some(plan.origin.clone()),
        logging: plan.logging(),
    };
    let (code, _) = crate::build::execute(
        &plan.build_recipe,
        Some(res.store().clone()),
        provenance,
        &a.flags,
    )
    .await?;
    Ok(code)
}
