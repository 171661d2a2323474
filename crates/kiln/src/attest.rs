//! `kiln signing-key public` and `kiln image verify`: the account signing keys kiln signs
//! registry images with, and the check of an image's signature, SBOMs and provenance.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kiln_core::signing::{KeyStore, PublicKey};
use kiln_core::store::Home;

use crate::config;

/// `kiln signing-key`
#[derive(Subcommand)]
pub enum SigningKeyCommand {
    /// Print an account's public signing key (PEM, SPKI): what `cosign verify --key` and
    /// skopeo's `sigstoreSigned` policy (`keyPath`) take. The key is made when it has none.
    Public(PublicArgs),
}

/// `kiln signing-key public`
#[derive(Args)]
pub struct PublicArgs {
    /// The account (12 digits); the local account by default.
    #[arg(long)]
    account: Option<String>,
}

/// `kiln image verify`
#[derive(Args)]
pub struct VerifyArgs {
    /// `docker://HOST/REPO:TAG` (or `@sha256:...`), or a build (NAME/VERSION/BUILD or its ARN),
    /// whose registry outputs are each checked.
    reference: String,
    /// Verify with this public key (a PEM file) instead of the account's.
    #[arg(long)]
    key: Option<std::path::PathBuf>,
    /// The account whose key signed it (the local account by default; a build's own account
    /// when a build is named).
    #[arg(long, conflicts_with = "key")]
    account: Option<String>,
}

fn keys() -> KeyStore {
    KeyStore::new(&Home::new(config::kiln_home()))
}

/// Runs `kiln signing-key ...`.
pub async fn signing_key(cmd: SigningKeyCommand) -> Result<u8> {
    match cmd {
        SigningKeyCommand::Public(a) => {
            let account = a
                .account
                .unwrap_or_else(|| crate::principal::local().account);
            let key = keys().key(&account)?;
            print!("{}", key.public_pem());
            Ok(0)
        }
    }
}

fn public_key(a: &VerifyArgs, account: &str) -> Result<PublicKey> {
    Ok(match &a.key {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("--key {}", path.display()))?;
            PublicKey::from_pem(&pem).with_context(|| format!("--key {}", path.display()))?
        }
        None => PublicKey::from_pem(&keys().key(account)?.public_pem())?,
    })
}

/// Runs `kiln image verify`: 0 when every check passes, 1 with the reason otherwise.
pub async fn verify(records: &kiln_core::record::Records, a: VerifyArgs) -> Result<u8> {
    let access = config::load()?.access();
    // (location, reference, account)
    let mut targets: Vec<(String, String, String)> = Vec::new();
    let r = &a.reference;
    if r.starts_with("docker://") || (!r.starts_with("arn:") && r.contains(':')) {
        let (location, reference) = crate::disk::split_reference(r)?;
        let account = a
            .account
            .clone()
            .unwrap_or_else(|| crate::principal::local().account);
        targets.push((location, reference, account));
    } else {
        let rec = crate::image::one(records, r).await?;
        let account = a.account.clone().unwrap_or(rec.account.clone());
        for o in &rec.outputs {
            if o.kind.is_image() && o.kind != kiln_core::record::OutputKind::OciRegistry {
                continue;
            }
            if !o.location.starts_with("docker://") || !o.tag.eq(&rec.version.to_string()) {
                continue;
            }
            targets.push((
                o.location.clone(),
                o.manifest_digest.clone(),
                account.clone(),
            ));
        }
        if targets.is_empty() {
            bail!(
                "{} was distributed to no registry region: only registry images are signed \
                 (its documents are in {})",
                rec.build_version(),
                rec.logs.join("supply-chain").display()
            );
        }
    }
    let mut failed = 0;
    for (location, reference, account) in targets {
        let key = public_key(&a, &account)?;
        let repo = crate::disk::repo_at(&location, &access)?;
        match kiln_core::attest::verify::verify(repo.as_ref(), &reference, &key).await {
            Ok(v) => {
                println!("{location}@{}: verified", v.digest);
                for c in &v.checks {
                    println!("  ok  {c}");
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// The supply-chain lines of `kiln image get`.
pub fn write_record(
    out: &mut impl std::io::Write,
    sc: &kiln_core::attest::SupplyChainRecord,
) -> std::io::Result<()> {
    for a in &sc.attached {
        writeln!(
            out,
            "  signed     {}:{} (key {}); {} referrers{}",
            a.location,
            a.signature_tag,
            sc.signing_key.as_deref().unwrap_or("?"),
            a.referrers.len(),
            if a.referrers_api {
                " (the registry's referrers API)".to_string()
            } else {
                format!(
                    " (index tag {})",
                    kiln_dist::attach::referrers_tag(&a.subject)
                )
            }
        )?;
    }
    let mut dirs: Vec<&std::path::Path> = Vec::new();
    for d in &sc.documents {
        if let Some(dir) = d.path.parent().filter(|p| !dirs.contains(p)) {
            dirs.push(dir);
        }
    }
    for dir in dirs {
        writeln!(out, "  sbom/slsa  {}", dir.display())?;
    }
    Ok(())
}
