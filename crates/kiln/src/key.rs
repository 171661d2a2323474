//! `kiln key ...`: the local KMS's keys (kiln-kms). The CLI acts as the local account unless
//! `--account` names another (root runs kiln for every account of its server).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kiln_kms::{KeyInfo, KeyState, KeyStore};

use crate::build::{write_json, Output};
use crate::config;

/// `kiln key ...`
#[derive(Subcommand)]
pub enum KeyCommand {
    /// Make a key (a 256-bit symmetric key and a P-256 key pair, sealed under the master key).
    Create(CreateArgs),
    /// The keys the account may use: its own and those granted to it.
    List(ListArgs),
    /// One key: its ARN, state, description and grants.
    Describe(KeyArgs),
    /// Disable a key: it encrypts nothing new and decrypts nothing until enabled.
    Disable(KeyArgs),
    /// Enable a disabled key.
    Enable(KeyArgs),
    /// Let another account use the key (encrypt with it, pull what it encrypted).
    Grant(GrantArgs),
    /// Take a grant back.
    Revoke(GrantArgs),
    /// The private key (PKCS#8 PEM) that `skopeo copy --decryption-key` takes to read images
    /// encrypted with the key; written 0600.
    DecryptionKey(DecryptionKeyArgs),
}

/// Who the command acts as.
#[derive(Args)]
pub struct AccountArg {
    /// The account to act as (name or 12-digit id); the local account if unset.
    #[arg(long, env = "KILN_ACCOUNT")]
    account: Option<String>,
}

/// `kiln key create`
#[derive(Args)]
pub struct CreateArgs {
    /// What the key is for.
    #[arg(long, default_value = "")]
    description: String,
    #[command(flatten)]
    who: AccountArg,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// `kiln key list`
#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    who: AccountArg,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// A command on one key.
#[derive(Args)]
pub struct KeyArgs {
    /// `arn:kiln:kms:REGION:ACCOUNT:key/ID` or the key's ID.
    key: String,
    #[command(flatten)]
    who: AccountArg,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// `kiln key grant|revoke`
#[derive(Args)]
pub struct GrantArgs {
    /// `arn:kiln:kms:REGION:ACCOUNT:key/ID` or the key's ID.
    key: String,
    /// The account to grant or revoke (name or 12-digit id).
    grantee: String,
    #[command(flatten)]
    who: AccountArg,
}

/// `kiln key decryption-key`
#[derive(Args)]
pub struct DecryptionKeyArgs {
    /// `arn:kiln:kms:REGION:ACCOUNT:key/ID` or the key's ID.
    key: String,
    /// Write it to this file (made 0600) instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    who: AccountArg,
}

/// The key store of this kiln, with the configured master key.
pub fn key_store() -> Result<KeyStore> {
    let cfg = config::load()?;
    Ok(KeyStore::new(&config::kiln_home(), cfg.kms_master_key))
}

/// `kms: {masterKey: PATH}` of config.yaml (a relative path is below `$KILN_HOME`).
pub fn master_key_config(node: &kiln_yaml::Node, file: &str, src: &str) -> Result<Option<PathBuf>> {
    let mut r = kiln_yaml::Reader::new();
    let mut path = None;
    if let Some(m) = r.map(node, "`kms`") {
        r.known_keys(m, &["masterKey"], "`kms`");
        path = r
            .string(m, "masterKey")
            .map(|p| config::kiln_home().join(p));
    }
    crate::config::fail_on_errors(&r, file, src)?;
    Ok(path)
}

/// An account name or id as its id.
pub fn account_id(name: Option<&str>) -> Result<String> {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Ok(kiln_core::principal::LOCAL_ACCOUNT.to_string());
    };
    if name.len() == 12 && name.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(name.to_string());
    }
    let home = kiln_core::store::Home::new(config::kiln_home());
    let accounts = kiln_core::accounts::Accounts::new(&home)
        .list()
        .context("reading the accounts to find an account by name")?;
    match accounts.into_iter().find(|a| a.name == name) {
        Some(a) => Ok(a.account_id),
        None => bail!("no account `{name}` (`kiln account list` shows them)"),
    }
}

/// Runs a `kiln key` command.
pub fn run(cmd: KeyCommand) -> Result<u8> {
    let store = key_store()?;
    let mut out = std::io::stdout().lock();
    match cmd {
        KeyCommand::Create(a) => {
            let account = account_id(a.who.account.as_deref())?;
            let info = store.create(&account, &a.description)?;
            show(&mut out, &info, a.output)?;
        }
        KeyCommand::List(a) => {
            let account = account_id(a.who.account.as_deref())?;
            let keys = store.list(&account)?;
            if a.output == Output::Json {
                write_json(&mut out, &keys)?;
            } else if keys.is_empty() {
                writeln!(out, "No keys. Make one with `kiln key create`.")?;
            } else {
                writeln!(
                    out,
                    "{:<36}  {:<12}  {:<8}  DESCRIPTION",
                    "KEY ID", "OWNER", "STATE"
                )?;
                for k in &keys {
                    writeln!(
                        out,
                        "{:<36}  {:<12}  {:<8}  {}",
                        k.arn.key_id, k.arn.account, k.state, k.description
                    )?;
                }
            }
        }
        KeyCommand::Describe(a) => {
            let account = account_id(a.who.account.as_deref())?;
            show(&mut out, &store.describe(&a.key, &account)?, a.output)?;
        }
        KeyCommand::Disable(a) => {
            let account = account_id(a.who.account.as_deref())?;
            show(
                &mut out,
                &store.set_state(&a.key, &account, KeyState::Disabled)?,
                a.output,
            )?;
        }
        KeyCommand::Enable(a) => {
            let account = account_id(a.who.account.as_deref())?;
            show(
                &mut out,
                &store.set_state(&a.key, &account, KeyState::Enabled)?,
                a.output,
            )?;
        }
        KeyCommand::Grant(a) => {
            let account = account_id(a.who.account.as_deref())?;
            let grantee = account_id(Some(&a.grantee))?;
            let info = store.grant(&a.key, &account, &grantee)?;
            writeln!(out, "Account {grantee} may now use {}.", info.arn)?;
        }
        KeyCommand::Revoke(a) => {
            let account = account_id(a.who.account.as_deref())?;
            let grantee = account_id(Some(&a.grantee))?;
            let info = store.revoke(&a.key, &account, &grantee)?;
            writeln!(out, "Account {grantee} may no longer use {}.", info.arn)?;
        }
        KeyCommand::DecryptionKey(a) => {
            let account = account_id(a.who.account.as_deref())?;
            let pem = store.open(&a.key, &account)?.decryption_key_pem()?;
            match &a.out {
                Some(path) => {
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(path)
                        .with_context(|| format!("writing {}", path.display()))?;
                    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                    f.write_all(pem.as_bytes())?;
                }
                None => {
                    // `> key.pem` made the file with the shell's umask: make it 0600 before
                    // the key is in it.
                    let stdout = std::io::stdout();
                    let fd = std::os::fd::AsFd::as_fd(&stdout);
                    if let Ok(st) = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd)) {
                        if st.st_mode & libc_s_ifmt() == libc_s_ifreg() {
                            nix::sys::stat::fchmod(
                                std::os::fd::AsRawFd::as_raw_fd(&fd),
                                nix::sys::stat::Mode::from_bits_truncate(0o600),
                            )?;
                        }
                    }
                    out.write_all(pem.as_bytes())?;
                }
            }
        }
    }
    Ok(0)
}

fn libc_s_ifmt() -> u32 {
    nix::sys::stat::SFlag::S_IFMT.bits()
}

fn libc_s_ifreg() -> u32 {
    nix::sys::stat::SFlag::S_IFREG.bits()
}

fn show(out: &mut impl Write, info: &KeyInfo, output: Output) -> Result<()> {
    if output == Output::Json {
        return write_json(out, info);
    }
    writeln!(out, "KeyArn:      {}", info.arn)?;
    writeln!(out, "KeyId:       {}", info.arn.key_id)?;
    writeln!(out, "State:       {}", info.state)?;
    writeln!(out, "Description: {}", info.description)?;
    writeln!(
        out,
        "Created:     {}",
        info.created.format("%Y-%m-%dT%H:%M:%SZ")
    )?;
    let grants = if info.grants.is_empty() {
        "(none)".to_string()
    } else {
        info.grants.join(", ")
    };
    writeln!(out, "Grants:      {grants}")?;
    Ok(())
}
