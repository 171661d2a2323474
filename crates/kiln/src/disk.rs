//! `kiln disk pull`: a disk back from a registry or bucket region.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use crate::config;

/// `kiln disk`
#[derive(Subcommand, Debug)]
pub enum DiskCommand {
    /// Rebuild a disk from a registry or bucket region (what `kiln image get` shows as its
    /// disk-chunks output), reusing a local earlier version's chunks, and check its digest.
    Pull(PullArgs),
}

/// `kiln disk pull`
#[derive(Args, Debug)]
pub struct PullArgs {
    /// `docker://HOST/REPO:TAG` (or `HOST/REPO:TAG`), or `s3://BUCKET/KEY:TAG`.
    pub reference: String,
    /// Where the disk goes. An existing raw file there is the earlier version whose chunks
    /// are reused (unless --base names another).
    pub file: PathBuf,
    /// The format to write (raw, qcow2, vmdk, vhd).
    #[arg(long, default_value = "raw")]
    pub format: String,
    /// An earlier version of the disk (raw) to take unchanged chunks from.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// The account to act as for an encrypted disk's KMS key (name or 12-digit id); the local
    /// account if unset.
    #[arg(long, env = "KILN_ACCOUNT")]
    pub account: Option<String>,
}

/// Runs `kiln disk ...`.
pub async fn run(cmd: DiskCommand) -> Result<u8> {
    match cmd {
        DiskCommand::Pull(a) => pull(a).await,
    }
}

/// Splits `LOCATION:TAG` (the tag after the last `/`) or `LOCATION@sha256:...`.
pub(crate) fn split_reference(reference: &str) -> Result<(String, String)> {
    if let Some((loc, digest)) = reference.rsplit_once('@') {
        return Ok((loc.to_string(), digest.to_string()));
    }
    let last = reference.rfind('/').unwrap_or(0);
    match reference[last..].rfind(':') {
        Some(i) => Ok((
            reference[..last + i].to_string(),
            reference[last + i + 1..].to_string(),
        )),
        None => bail!(
            "`{reference}` has no tag: write docker://HOST/REPO:TAG or s3://BUCKET/KEY:TAG, as \
             `kiln image get` shows the disk-chunks output"
        ),
    }
}

async fn pull(a: PullArgs) -> Result<u8> {
    let format = kiln_image::disk::DiskFormat::parse(&a.format)
        .with_context(|| format!("--format {}: give raw, qcow2, vmdk or vhd", a.format))?;
    let (location, tag) = split_reference(&a.reference)?;
    let cfg = config::load()?;
    let access = cfg.access();
    let repo = repo_at(&location, &access)?;
    let raw_out = if format == kiln_image::disk::DiskFormat::Raw {
        a.file.clone()
    } else {
        a.file.with_extension("raw.partial")
    };
    // The file itself is the earlier version when it is raw and no other base is named.
    let base = a.base.clone().or_else(|| {
        (format == kiln_image::disk::DiskFormat::Raw && a.file.is_file()).then(|| a.file.clone())
    });
    if let Some(b) = &base {
        if !b.is_file() {
            bail!("--base {}: no such file", b.display());
        }
    }
    eprintln!("pulling {} into {}", a.reference, a.file.display());
    let t0 = std::time::Instant::now();
    let (store, account) = (
        crate::key::key_store()?,
        crate::key::account_id(a.account.as_deref())?,
    );
    let unwrap = |w: &kiln_kms::WrappedDataKey| {
        store
            .open(&w.key_arn.to_string(), &account)
            .and_then(|k| k.unwrap_data_key(w))
            .map_err(|e| e.to_string())
    };
    let pulled =
        kiln_dist::chunked::pull_keyed(repo.as_ref(), &tag, &raw_out, base.as_deref(), &unwrap)
            .await
            .with_context(|| format!("pulling {}", a.reference))?;
    if format != kiln_image::disk::DiskFormat::Raw {
        convert(&raw_out, &a.file, format)?;
    }
    eprintln!(
        "{}: {} ({} bytes), {} fetched in {} requests, {} reused from {}, {:.1} s",
        a.file.display(),
        pulled.digest,
        pulled.size,
        crate::build::bytes(pulled.fetched),
        pulled.requests,
        crate::build::bytes(pulled.reused),
        base.as_deref()
            .map_or("nothing".to_string(), |b| b.display().to_string()),
        t0.elapsed().as_secs_f64()
    );
    println!("{}", pulled.digest);
    Ok(0)
}

/// The repository a `docker://` or `s3://` location names.
pub fn repo_at(
    location: &str,
    access: &kiln_dist::RegistryAccess,
) -> Result<std::sync::Arc<dyn kiln_dist::Repo>> {
    use kiln_dist::Place as _;
    if location.starts_with("s3://") {
        let (bucket, key) = kiln_s3::parse_url(location)?;
        Ok(kiln_dist::BucketPlace::new(access.s3_client(), &bucket, "").repo(&key)?)
    } else {
        let rest = location.strip_prefix("docker://").unwrap_or(location);
        let Some((host, path)) = rest.split_once('/') else {
            bail!("`{location}` is not a repository: write docker://HOST/REPO:TAG");
        };
        let place = kiln_dist::RegistryPlace::new(host, None, access.options_for(host));
        Ok(place.repo(path)?)
    }
}

fn convert(raw: &Path, out: &Path, format: kiln_image::disk::DiskFormat) -> Result<()> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "disk".into());
    let label = kiln_image::disk::DiskLabel {
        name,
        uuid: "00000000-0000-4000-8000-000000000000".into(),
        epoch: 0,
    };
    let result = kiln_image::disk::convert(
        raw,
        out,
        format,
        kiln_image::disk::DiskCompression::None,
        &label,
    );
    let _ = std::fs::remove_file(raw);
    result.with_context(|| format!("converting to {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_at_the_tag() {
        let s = |r: &str| split_reference(r).unwrap();
        assert_eq!(
            s("docker://127.0.0.1:5000/golden/web/disk:1.0.0"),
            (
                "docker://127.0.0.1:5000/golden/web/disk".into(),
                "1.0.0".into()
            )
        );
        assert_eq!(
            s("s3://b/prod/web/disk:1.0.0-2"),
            ("s3://b/prod/web/disk".into(), "1.0.0-2".into())
        );
        assert_eq!(
            s("h:5000/r@sha256:ab"),
            ("h:5000/r".into(), "sha256:ab".into())
        );
        assert!(split_reference("docker://h:5000/r").is_err());
    }
}
