//! `kiln topic ...`: where notifications go (a webhook endpoint per topic; an infrastructure
//! configuration's `snsTopicArn` names one). `kiln serve` delivers them.

use std::io::Write;

use anyhow::Result;
use clap::{Args, Subcommand};
use kiln_core::notify::{Topic, TopicView, Topics};
use kiln_core::resources::ResourceError;
use kiln_core::store::Home;
use serde_json::json;

use crate::build::{write_json, Output};
use crate::config;

/// `kiln topic ...`
#[derive(Subcommand)]
pub enum TopicCommand {
    /// Make a topic: its deliveries go to a webhook, signed (the secret is shown this once).
    Create(CreateArgs),
    /// List topics (never their secrets).
    List(OutputArgs),
    /// Show a topic (its secrets as hints only).
    Get(NameArgs),
    /// Delete a topic (refused while an infrastructure configuration names it).
    Delete(NameArgs),
    /// Add a new signing secret (shown this once); the old ones keep signing until removed.
    Rotate(RotateArgs),
    /// A topic's messages and how their delivery went: state, attempts, last error.
    Messages(MessagesArgs),
}

/// `kiln topic create`
#[derive(Args)]
pub struct CreateArgs {
    /// The topic's name: letters, digits, '-', '_', '.'.
    name: String,
    /// The http:// or https:// URL deliveries are POSTed to.
    #[arg(long, value_name = "URL")]
    webhook: String,
    /// A Standard Webhooks secret (`whsec_` + base64) to sign with; generated when not given.
    /// May be given several times.
    #[arg(long, value_name = "SECRET")]
    secret: Vec<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// An output format alone.
#[derive(Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// A topic by name or ARN.
#[derive(Args)]
pub struct NameArgs {
    /// The topic's name or ARN.
    name: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// `kiln topic rotate`
#[derive(Args)]
pub struct RotateArgs {
    /// The topic's name or ARN.
    name: String,
    /// The new secret (`whsec_` + base64); generated when not given.
    #[arg(long, value_name = "SECRET")]
    secret: Option<String>,
    /// Keep only the new secret (once every receiver has it).
    #[arg(long)]
    remove_old: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// `kiln topic messages`
#[derive(Args)]
pub struct MessagesArgs {
    /// The topic's name or ARN.
    name: String,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 25)]
    limit: u32,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// Runs a `kiln topic` command.
pub async fn run(cmd: TopicCommand) -> Result<u8> {
    let store = config::open_store(&Home::new(config::kiln_home()), &config::load()?).await?;
    let topics = Topics::new(store.clone());
    let me = crate::principal::local();
    let mut out = std::io::stdout().lock();
    let done = match cmd {
        TopicCommand::Create(a) => match topics.create(&me, &a.name, &a.webhook, &a.secret).await {
            Ok(t) => show_secrets(
                &mut out,
                &t,
                &t.secrets.iter().collect::<Vec<_>>(),
                a.output,
            ),
            Err(e) => return refused(e),
        },
        TopicCommand::List(a) => match topics.list(&me).await {
            Ok(list) if a.output == Output::Json => write_json(&mut out, &list),
            Ok(list) if list.is_empty() => Ok(writeln!(
                out,
                "No topics. Make one with `kiln topic create NAME --webhook URL`."
            )?),
            Ok(list) => {
                writeln!(out, "{:<24}  {:<6}  WEBHOOK", "NAME", "STATE")?;
                for t in &list {
                    writeln!(out, "{:<24}  {:<6}  {}", t.name, t.state, t.webhook_url)?;
                }
                Ok(())
            }
            Err(e) => return refused(e),
        },
        TopicCommand::Get(a) => match topics.get(&me, &a.name).await {
            Ok(t) => show(&mut out, &t.view(), a.output),
            Err(e) => return refused(e),
        },
        TopicCommand::Delete(a) => match topics.delete(&me, &a.name).await {
            Ok(t) => Ok(writeln!(out, "Deleted topic {}.", t.arn)?),
            Err(e) => return refused(e),
        },
        TopicCommand::Rotate(a) => {
            match topics
                .rotate(&me, &a.name, a.secret.as_deref(), a.remove_old)
                .await
            {
                Ok(t) => {
                    let newest: Vec<_> = t.secrets.last().into_iter().collect();
                    show_secrets(&mut out, &t, &newest, a.output)
                }
                Err(e) => return refused(e),
            }
        }
        TopicCommand::Messages(a) => {
            let t = match topics.get(&me, &a.name).await {
                Ok(t) => t,
                Err(e) => return refused(e),
            };
            let queued = store.db().messages(&t.arn, a.limit.clamp(1, 1000)).await?;
            messages(&mut out, &queued, a.output)
        }
    };
    done.map(|()| 0)
}

fn refused(e: ResourceError) -> Result<u8> {
    eprintln!("error: {e}");
    Ok(match e {
        ResourceError::Invalid(_) | ResourceError::BadReference(_) => crate::EXIT_INVALID,
        _ => 1,
    })
}

fn show(out: &mut impl Write, t: &TopicView, output: Output) -> Result<()> {
    if output == Output::Json {
        return write_json(out, t);
    }
    writeln!(out, "Topic:    {}", t.arn)?;
    writeln!(out, "Webhook:  {}", t.webhook_url)?;
    match &t.state_reason {
        Some(r) => writeln!(out, "State:    {} ({r})", t.state)?,
        None => writeln!(out, "State:    {}", t.state)?,
    }
    writeln!(out, "Secrets:  {}", t.secrets.join(", "))?;
    writeln!(
        out,
        "Created:  {} by {}",
        t.date_created.format("%Y-%m-%dT%H:%M:%SZ"),
        t.owner
    )?;
    Ok(())
}

/// The one place secrets are printed: right after they were made.
fn show_secrets(
    out: &mut impl Write,
    t: &Topic,
    secrets: &[&kiln_core::notify::Secret],
    output: Output,
) -> Result<()> {
    let texts: Vec<&str> = secrets.iter().map(|s| s.expose()).collect();
    if output == Output::Json {
        return write_json(out, &json!({"topic": t.view(), "secrets": texts}));
    }
    show(out, &t.view(), output)?;
    for s in &texts {
        writeln!(out, "Secret:   {s}")?;
    }
    writeln!(out, "The secret is shown only now: give it to the receiver, which verifies each delivery's webhook-signature with it (docs/notifications.md).")?;
    writeln!(
        out,
        "Name the topic in an infrastructure configuration: snsTopicArn: {}",
        t.arn
    )?;
    Ok(())
}

fn messages(out: &mut impl Write, queued: &[kiln_store::Queued], output: Output) -> Result<()> {
    let when = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default()
    };
    if output == Output::Json {
        let list: Vec<_> = queued
            .iter()
            .map(|q| {
                json!({
                    "messageId": q.message.id,
                    "event": q.message.event,
                    "state": q.state.as_str(),
                    "attempts": q.attempts,
                    "created": when(q.message.created_ms),
                    "next": when(q.next_ms),
                    "lastError": q.last_error,
                })
            })
            .collect();
        return write_json(out, &list);
    }
    if queued.is_empty() {
        writeln!(out, "No messages yet.")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<36}  {:<17}  {:<9}  {:>8}  {:<20}  LAST ERROR",
        "ID", "EVENT", "STATE", "ATTEMPTS", "NEXT/ENDED"
    )?;
    for q in queued {
        writeln!(
            out,
            "{:<36}  {:<17}  {:<9}  {:>8}  {:<20}  {}",
            q.message.id,
            q.message.event,
            q.state,
            q.attempts,
            when(q.next_ms),
            q.last_error.as_deref().unwrap_or("-")
        )?;
    }
    Ok(())
}
