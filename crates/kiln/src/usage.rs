//! `kiln usage`: what builds used, summed per account (instances' vCPU-seconds and
//! GiB-seconds, regions' bytes stored and sent).

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use clap::Args;
use kiln_core::record::Records;
use kiln_core::store::Home;
use kiln_core::usage::Total;
use kiln_store::{Filter, Kind};

use crate::build::{write_json, Output};
use crate::config;

/// `kiln usage`
#[derive(Args)]
pub struct UsageArgs {
    /// Only this account (its name or 12-digit id; the CLI's own is 000000000000).
    #[arg(long)]
    account: Option<String>,
    /// Only builds started on or after this day (YYYY-MM-DD) or time (RFC 3339).
    #[arg(long, value_name = "DATE")]
    since: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

fn since(text: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .with_context(|| format!("--since {text}: give a day (2026-12-01) or an RFC 3339 time"))?;
    Ok(day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
}

/// Runs `kiln usage`.
pub async fn run(a: UsageArgs) -> Result<u8> {
    let home = Home::new(config::kiln_home());
    let account = match &a.account {
        None => None,
        Some(id) if id.len() == 12 && id.chars().all(|c| c.is_ascii_digit()) => Some(id.clone()),
        Some(name) => {
            let accounts = kiln_core::accounts::Accounts::new(&home).list()?;
            match accounts.into_iter().find(|x| &x.name == name) {
                Some(x) => Some(x.account_id),
                None => bail!("--account {name}: no such account (`kiln account list` shows them)"),
            }
        }
    };
    let from = a.since.as_deref().map(since).transpose()?;
    let store = config::open_store(&home, &config::load()?).await?;
    let records = Records::new(store);
    let filter = Filter {
        kind: Some(Kind::Image),
        arn_prefix: account.as_ref().map(|id| {
            format!(
                "arn:kiln:imagebuilder:{}:{id}:",
                kiln_core::principal::LOCAL_REGION
            )
        }),
        ..Filter::default()
    };
    let mut totals: BTreeMap<String, Total> = BTreeMap::new();
    for s in records.summaries(&filter).await? {
        if from.is_some_and(|f| s.created < f) {
            continue;
        }
        let Some(rec) = records.get(&s.arn).await? else {
            continue;
        };
        let total = totals.entry(rec.account.clone()).or_default();
        match &rec.usage {
            Some(u) => total.add(u),
            // Builds of kilns before usage was recorded count, with nothing used.
            None => total.images += 1,
        }
    }
    let mut out = std::io::stdout().lock();
    if a.output == Output::Json {
        write_json(&mut out, &totals)?;
        return Ok(0);
    }
    if totals.is_empty() {
        writeln!(out, "no builds")?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<14} {:>7} {:>15} {:>15} {:>13} {:>13}",
        "ACCOUNT", "IMAGES", "BUILD vCPU-s", "BUILD GiB-s", "TEST vCPU-s", "TEST GiB-s"
    )?;
    for (account, t) in &totals {
        writeln!(
            out,
            "{account:<14} {:>7} {:>15.1} {:>15.1} {:>13.1} {:>13.1}",
            t.images,
            t.builder_vcpu_seconds,
            t.builder_gib_seconds,
            t.test_vcpu_seconds,
            t.test_gib_seconds
        )?;
        for r in &t.regions {
            writeln!(
                out,
                "  region {}: {} stored, {} sent",
                r.region,
                bytes(r.bytes_stored),
                bytes(r.bytes_sent)
            )?;
        }
    }
    Ok(0)
}

fn bytes(n: u64) -> String {
    let mib = n as f64 / f64::from(1u32 << 20);
    if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}
