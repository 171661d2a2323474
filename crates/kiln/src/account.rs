//! `kiln account ...`: accounts and access keys for the API server (`kiln serve`).

use std::io::Write;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use kiln_core::accounts::{Accounts, NewKey};
use kiln_core::store::Home;
use serde_json::json;

use crate::build::{write_json, Output};
use crate::config;

/// Where `kiln serve` listens unless told otherwise: what the hint after a new key names.
const SERVE_ENDPOINT: &str = "http://127.0.0.1:8479";

/// `kiln account ...`
#[derive(Subcommand)]
pub enum AccountCommand {
    /// Make an account and its first access key (the secret is shown this once).
    Create(CreateArgs),
    /// List accounts and their access key ids (never secrets).
    List(ListArgs),
    /// An account's access keys: create, delete.
    #[command(subcommand)]
    Key(KeyCommand),
}

/// `kiln account key ...`
#[derive(Subcommand)]
pub enum KeyCommand {
    /// Add an access key to an account (the secret is shown this once).
    Create(KeyCreateArgs),
    /// Remove an access key: requests signed with it are refused from then on.
    Delete(KeyDeleteArgs),
}

/// `kiln account create`
#[derive(Args)]
pub struct CreateArgs {
    /// The account's name: letters, digits, '.', '_', '-' (up to 64).
    name: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// `kiln account list`
#[derive(Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// `kiln account key create`
#[derive(Args)]
pub struct KeyCreateArgs {
    /// The account's name or 12-digit id.
    account: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// `kiln account key delete`
#[derive(Args)]
pub struct KeyDeleteArgs {
    /// The account's name or 12-digit id.
    account: String,
    /// The access key id to remove (AKIA...).
    access_key_id: String,
}

/// Runs a `kiln account` command.
pub async fn run(cmd: AccountCommand) -> Result<u8> {
    let accounts = Accounts::new(&Home::new(config::kiln_home()));
    // The file holds secrets and is root's alone (0600); saying so up front beats a bare
    // "permission denied", and stops a user from making a file of their own that root's server
    // would never read.
    if !kiln_instance::is_root() {
        bail!(
            "`kiln account` reads and writes access keys in {}, which only root may read: run \
             it as root (sudo kiln account ...)",
            accounts.path().display()
        );
    }
    let mut out = std::io::stdout().lock();
    match cmd {
        AccountCommand::Create(a) => {
            let key = accounts.create(&a.name)?;
            show_key(&mut out, &key, a.output, true)?;
        }
        AccountCommand::List(a) => {
            let list = accounts.list()?;
            if a.output == Output::Json {
                write_json(&mut out, &list)?;
            } else if list.is_empty() {
                writeln!(
                    out,
                    "No accounts. Make one with `kiln account create NAME`."
                )?;
            } else {
                let width = list.iter().map(|a| a.name.len()).max().unwrap_or(0).max(4);
                writeln!(
                    out,
                    "{:<width$}  {:<12}  {:<20}  KEYS",
                    "NAME", "ACCOUNT ID", "CREATED"
                )?;
                for acct in &list {
                    let keys: Vec<&str> =
                        acct.keys.iter().map(|k| k.access_key_id.as_str()).collect();
                    let keys = if keys.is_empty() {
                        "(none)".to_string()
                    } else {
                        keys.join(", ")
                    };
                    writeln!(
                        out,
                        "{:<width$}  {:<12}  {:<20}  {keys}",
                        acct.name,
                        acct.account_id,
                        acct.created.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    )?;
                }
            }
        }
        AccountCommand::Key(KeyCommand::Create(a)) => {
            let key = accounts.create_key(&a.account)?;
            show_key(&mut out, &key, a.output, false)?;
        }
        AccountCommand::Key(KeyCommand::Delete(a)) => {
            accounts.delete_key(&a.account, &a.access_key_id)?;
            writeln!(
                out,
                "Deleted access key {} of account {}.",
                a.access_key_id, a.account
            )?;
        }
    }
    Ok(0)
}

fn show_key(out: &mut impl Write, key: &NewKey, output: Output, new_account: bool) -> Result<()> {
    if output == Output::Json {
        return write_json(
            out,
            &json!({
                "name": key.name,
                "accountId": key.account_id,
                "accessKeyId": key.access_key_id,
                "secretAccessKey": key.secret_access_key.expose(),
            }),
        );
    }
    if new_account {
        writeln!(out, "Created account {} ({}).", key.name, key.account_id)?;
    } else {
        writeln!(
            out,
            "Created an access key for account {} ({}).",
            key.name, key.account_id
        )?;
    }
    writeln!(out, "Access key id:     {}", key.access_key_id)?;
    writeln!(out, "Secret access key: {}", key.secret_access_key.expose())?;
    writeln!(out, "The secret is shown only now: keep it somewhere safe.")?;
    writeln!(out)?;
    writeln!(out, "To use it with the AWS CLI:")?;
    writeln!(
        out,
        "  aws configure --profile {}   (the key id and secret above; region: local)",
        key.name
    )?;
    writeln!(
        out,
        "  aws imagebuilder list-components --endpoint-url {SERVE_ENDPOINT} --region local --profile {}",
        key.name
    )?;
    Ok(())
}
