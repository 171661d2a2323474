//! `kiln worker ...`: build workers' tokens and what the workers are doing.

use std::io::Write;

use anyhow::{bail, Result};
use chrono::{TimeZone, Utc};
use clap::{Args, Subcommand};
use kiln_core::store::Home;
use kiln_core::workers;
use serde_json::json;

use crate::build::{write_json, Output};
use crate::config;

/// `kiln worker ...`
#[derive(Subcommand)]
pub enum WorkerCommand {
    /// A worker's token: create (shown this once), revoke.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The workers, with their last heartbeat and current job.
    List(ListArgs),
    /// Run builds: claim the queued builds this host can run and run them, until SIGTERM.
    Run(RunArgs),
}

/// `kiln worker token ...`
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a worker and its token (the token is shown this once).
    Create(CreateArgs),
    /// Revoke a worker's token: the worker is refused from its next request on.
    Revoke(RevokeArgs),
}

/// `kiln worker token create`
#[derive(Args)]
pub struct CreateArgs {
    /// The worker's name: letters, digits, '.', '_', '-' (up to 64); its host's name is a
    /// good one.
    name: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// `kiln worker token revoke`
#[derive(Args)]
pub struct RevokeArgs {
    /// The worker's name.
    name: String,
}

/// `kiln worker list`
#[derive(Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// `kiln worker run`
#[derive(Args)]
pub struct RunArgs {
    /// A file holding the worker's token (from `kiln worker token create NAME`); without it
    /// the token is read from $KILN_WORKER_TOKEN. Never on the command line, where every
    /// user of the host could read it.
    #[arg(long, value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Builds this worker runs at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// A label of this host (repeatable); a build runs only on workers that have every label
    /// it asks for.
    #[arg(long = "label", value_name = "LABEL")]
    labels: Vec<String>,
    /// Take builds from this kiln server (`https://HOST:PORT`) instead of the configured store:
    /// the worker's host then needs no database password, only its token.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Refused with the reason: a token on the command line is readable by every user of the
    /// host (in /proc). Kept so that `--token` gets that answer rather than "unexpected
    /// argument".
    #[arg(long, hide = true, value_name = "TOKEN")]
    token: Option<String>,
}

/// Runs a `kiln worker` command.
pub async fn run(cmd: WorkerCommand) -> Result<u8> {
    if !kiln_instance::is_root() {
        bail!("`kiln worker` reads and writes the server's store, which only root may read: run it as root (sudo kiln worker ...)");
    }
    let cfg = config::load()?;
    let home = Home::new(config::kiln_home());
    if let WorkerCommand::Run(a) = cmd {
        if a.token.is_some() {
            bail!(
                "--token is not taken: on the command line the token is readable by every user of this host; put it in a file only root reads and give --token-file FILE, or set KILN_WORKER_TOKEN"
            );
        }
        return crate::worker_run::run(a.into(), cfg, home).await;
    }
    let store = config::open_store(&home, &cfg).await?;
    let mut out = std::io::stdout().lock();
    match cmd {
        WorkerCommand::Token(TokenCommand::Create(a)) => {
            let made = workers::create(&store, &a.name).await?;
            if a.output == Output::Json {
                write_json(
                    &mut out,
                    &json!({ "name": made.worker.name, "token": made.token }),
                )?;
            } else {
                writeln!(out, "worker  {}", made.worker.name)?;
                writeln!(out, "token   {}", made.token)?;
                writeln!(
                    out,
                    "\nThe token is shown this once; kiln keeps only its digest. Give it to the worker's host (a file only root reads) and revoke it with `kiln worker token revoke {}`.",
                    made.worker.name
                )?;
            }
        }
        WorkerCommand::Token(TokenCommand::Revoke(a)) => {
            workers::revoke(&store, &a.name).await?;
            writeln!(out, "revoked the token of worker {}", a.name)?;
        }
        WorkerCommand::Run(_) => {}
        WorkerCommand::List(a) => {
            let list = store.jobs().workers().await?;
            let now = store.jobs().clock_ms().await?;
            if a.output == Output::Json {
                let items: Vec<_> = list
                    .iter()
                    .map(|w| {
                        json!({
                            "name": w.name,
                            "created": time(w.created_ms),
                            "revoked": w.revoked_ms.map(time),
                            "lastHeartbeat": w.last_seen_ms.map(time),
                            "currentJob": w.current_job,
                            "capabilities": w.capabilities,
                        })
                    })
                    .collect();
                write_json(&mut out, &items)?;
            } else if list.is_empty() {
                writeln!(
                    out,
                    "No workers. Make one with `kiln worker token create NAME`."
                )?;
            } else {
                let width = list.iter().map(|w| w.name.len()).max().unwrap_or(0).max(4);
                writeln!(
                    out,
                    "{:<width$}  {:<8}  {:<16}  CURRENT JOB",
                    "NAME", "TOKEN", "LAST HEARTBEAT"
                )?;
                for w in &list {
                    let token = if w.revoked_ms.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    let seen = w
                        .last_seen_ms
                        .map_or_else(|| "never".to_string(), |t| ago(now - t));
                    let job = w.current_job.as_deref().unwrap_or("-");
                    writeln!(out, "{:<width$}  {token:<8}  {seen:<16}  {job}", w.name)?;
                }
            }
        }
    }
    Ok(0)
}

impl From<RunArgs> for crate::worker_run::RunSettings {
    fn from(a: RunArgs) -> Self {
        crate::worker_run::RunSettings {
            token_file: a.token_file,
            concurrency: a.concurrency,
            labels: a.labels,
            server: a.server,
        }
    }
}

fn time(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86399 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86400),
    }
}
