//! `kiln lifecycle ...`: lifecycle policies (created from CreateLifecyclePolicy request files
//! like the other resources), run now or as a dry run, and their executions.

use std::io::Write;

use anyhow::Result;
use clap::{Args, Subcommand};
use kiln_core::lifecycle::{Execution, Lifecycle, ResourceStatus};
use kiln_core::store::Home;

use crate::build::{write_json, Output};
use crate::config;
use crate::resource::ConfigCommand;

/// Lifecycle policies.
#[derive(Subcommand)]
pub enum LifecycleCommand {
    #[command(flatten)]
    Resource(ConfigCommand),
    /// Run a policy now (whatever its status) and print what it did to each image.
    Run(RunArgs),
    /// A policy's executions, newest first, with what each did.
    Executions(ExecutionsArgs),
}

/// `kiln lifecycle run`
#[derive(Args)]
pub struct RunArgs {
    /// The policy: its name or ARN.
    policy: String,
    /// Only say what would happen; change nothing and record nothing.
    #[arg(long)]
    dry_run: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// `kiln lifecycle executions`
#[derive(Args)]
pub struct ExecutionsArgs {
    /// The policy: its name or ARN.
    policy: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

async fn lifecycle() -> Result<Lifecycle> {
    let home = Home::new(config::kiln_home());
    let cfg = config::load()?;
    let store = config::open_store(&home, &cfg).await?;
    Ok(Lifecycle::new(store, cfg.access()))
}

/// Runs a lifecycle command.
pub async fn run(c: LifecycleCommand) -> Result<u8> {
    match c {
        LifecycleCommand::Resource(c) => {
            crate::resource::run(crate::resource::Which::Lifecycle(c)).await
        }
        LifecycleCommand::Run(a) => {
            let l = lifecycle().await?;
            let p = l.policy(&crate::principal::local(), &a.policy).await?;
            let e = l.run(&p, chrono::Utc::now(), a.dry_run).await?;
            let mut out = std::io::stdout().lock();
            if a.output == Output::Json {
                write_json(&mut out, &e)?;
            } else {
                print_execution(&mut out, &e)?;
            }
            Ok(u8::from(
                e.status != kiln_core::lifecycle::ExecutionStatus::Success,
            ))
        }
        LifecycleCommand::Executions(a) => {
            let l = lifecycle().await?;
            let who = crate::principal::local();
            let p = l.policy(&who, &a.policy).await?;
            let all = l.executions().of_policy(&who, &p.arn).await?;
            let mut out = std::io::stdout().lock();
            if a.output == Output::Json {
                write_json(&mut out, &all)?;
                return Ok(0);
            }
            if all.is_empty() {
                writeln!(
                    out,
                    "{} has not run yet (`kiln lifecycle run {}`)",
                    p.name, p.name
                )?;
            }
            for e in &all {
                print_execution(&mut out, e)?;
            }
            Ok(0)
        }
    }
}

fn print_execution(out: &mut impl Write, e: &Execution) -> std::io::Result<()> {
    writeln!(
        out,
        "{} {} {}{}",
        e.id,
        e.start_time.format("%Y-%m-%d %H:%M:%S"),
        e.status.as_str(),
        if e.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    )?;
    if e.resources.is_empty() {
        writeln!(out, "  no image to act on")?;
    }
    for r in &e.resources {
        let image = r
            .image_arn
            .split_once(":image/")
            .map(|(_, rest)| rest)
            .unwrap_or(&r.image_arn);
        let status = match (e.dry_run, r.status) {
            (true, ResourceStatus::Success) => "WOULD",
            (_, s) => s.as_str(),
        };
        writeln!(
            out,
            "  {:<10} {:<28} {:<8} {}",
            r.action.verb(),
            image,
            status,
            r.reason.as_deref().unwrap_or(&r.action_reason)
        )?;
        for what in &r.removed {
            writeln!(out, "      removed {what}")?;
        }
    }
    Ok(())
}
