//! `kiln toe`: validate and run component documents, as `awstoe` does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kiln_instance::host::HostInstance;
use kiln_toe::document::PHASE_NAMES;
use kiln_toe::events::{ConsoleLog, Fanout, Observer};
use kiln_toe::loader::{DocumentLoader, LoadError};
use kiln_toe::report::RunStatus;
use kiln_toe::{DocumentRun, Engine, RunSpec};

use crate::{config, ui, EXIT_INVALID};

/// `kiln toe ...`
#[derive(Subcommand)]
pub enum ToeCommand {
    /// Check documents against every AWSTOE rule; errors name the file, line and column.
    Validate(ValidateArgs),
    /// Run documents on this machine (the host instance), as `awstoe run` does.
    Run(RunArgs),
}

/// The documents a command works on (`--documents a,b` is accepted, as awstoe spells it).
#[derive(Args)]
pub struct Documents {
    /// A document: a path or an s3:// URL (repeat, or separate with commas); in the order given.
    #[arg(
        long = "document",
        alias = "documents",
        short = 'd',
        value_delimiter = ',',
        required = true
    )]
    documents: Vec<String>,
}

/// `kiln toe validate`
#[derive(Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    documents: Documents,
}

/// `kiln toe run`
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    documents: Documents,

    /// Phases to run, comma-separated (each document runs them in its own order).
    #[arg(long, short = 'p', value_delimiter = ',')]
    phases: Vec<String>,

    /// Parameter values: NAME=VALUE,NAME2=VALUE2 (a part without `=` continues the previous value).
    #[arg(long)]
    parameters: Vec<String>,

    /// Where detailedoutput.json, console.log and document.yaml are written.
    #[arg(long, short = 'o', alias = "log-directory")]
    output_dir: PathBuf,

    /// Id of this execution (a new UUID by default).
    #[arg(long, short = 'i')]
    execution_id: Option<String>,

    /// Do not show step output on the terminal (it is still in console.log).
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// Runs a `kiln toe` command; returns the process exit code.
pub async fn run(cmd: ToeCommand) -> Result<u8> {
    match cmd {
        ToeCommand::Validate(args) => validate(args).await,
        ToeCommand::Run(args) => run_documents(args).await,
    }
}

fn loader() -> Result<(DocumentLoader, Option<Arc<kiln_s3::S3Client>>)> {
    let config = config::load()?;
    let s3 = config.s3.map(|c| Arc::new(kiln_s3::S3Client::new(c)));
    let mut loader = DocumentLoader::new();
    if let Some(s3) = &s3 {
        loader = loader.with_s3(s3.clone());
    }
    Ok((loader, s3))
}

async fn validate(args: ValidateArgs) -> Result<u8> {
    let (loader, _) = loader()?;
    let mut failed = 0;
    for doc in &args.documents.documents {
        match loader.load(doc, None, None).await {
            Ok(r) => {
                eprint!("{}", r.loaded.warnings);
                println!("{doc}: valid");
            }
            Err(LoadError::Invalid(d)) => {
                eprint!("{d}");
                eprintln!(
                    "{doc}: {} error{}",
                    d.error_count(),
                    if d.error_count() == 1 { "" } else { "s" }
                );
                failed += 1;
            }
            Err(LoadError::Unavailable(msg)) => {
                eprintln!("{doc}: error: {msg}");
                failed += 1;
            }
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// Splits `--parameters` values: `A=1,B=x,y` gives A=1 and B=x,y.
pub fn parse_parameters(values: &[String]) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for value in values {
        for part in value.split(',') {
            match part.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() && !k.contains(' ') => {
                    out.push((k.trim().to_string(), v.to_string()));
                }
                _ => match out.last_mut() {
                    Some((_, v)) => {
                        v.push(',');
                        v.push_str(part);
                    }
                    _ => bail!(
                        "--parameters expects NAME=VALUE pairs separated by commas, got `{value}`"
                    ),
                },
            }
        }
    }
    for (k, v) in &out {
        if v.is_empty() {
            bail!("--parameters: `{k}=` has no value (the name and the value are both required)");
        }
    }
    Ok(out)
}

fn interrupted(terminal: &ui::Terminal, log: &Path, what: &str, code: u8) -> u8 {
    terminal.finish();
    eprintln!(
        "{what}: the running step and every process it started were stopped; see {}",
        log.display()
    );
    code
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

async fn run_documents(args: RunArgs) -> Result<u8> {
    for p in &args.phases {
        if !PHASE_NAMES.contains(&p.as_str()) {
            bail!(
                "--phases: unknown phase `{p}` (phases are {})",
                PHASE_NAMES.join(", ")
            );
        }
    }
    let parameters = parse_parameters(&args.parameters)?;
    let (loader, s3) = loader()?;
    let mut documents = Vec::new();
    let mut invalid = false;
    for doc in &args.documents.documents {
        match loader.load(doc, None, None).await {
            Ok(resolved) => {
                eprint!("{}", resolved.loaded.warnings);
                documents.push(DocumentRun {
                    resolved,
                    parameters: parameters.clone(),
                });
            }
            Err(LoadError::Invalid(d)) => {
                eprint!("{d}");
                invalid = true;
            }
            Err(LoadError::Unavailable(msg)) => {
                eprintln!("{doc}: error: {msg}");
                invalid = true;
            }
        }
    }
    if invalid {
        eprintln!("nothing was run: fix the documents above (`kiln toe validate` checks them)");
        return Ok(EXIT_INVALID);
    }
    if !args.phases.is_empty() {
        for p in &args.phases {
            let present = documents
                .iter()
                .any(|d| d.resolved.loaded.document.phase(p).is_some());
            if !present {
                eprintln!("warning: no document has a `{p}` phase");
            }
        }
    }

    let out_dir = &args.output_dir;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("creating the output directory {}", out_dir.display()))?;
    let mut doc_yaml = String::new();
    for (i, d) in documents.iter().enumerate() {
        let src = &d.resolved.loaded.document.source;
        if documents.len() > 1 {
            if i > 0 {
                doc_yaml.push_str("---\n");
            }
            doc_yaml.push_str(&format!("# {}\n", src.name));
        }
        doc_yaml.push_str(&src.text);
        if !src.text.ends_with('\n') {
            doc_yaml.push('\n');
        }
    }
    write_atomic(&out_dir.join("document.yaml"), doc_yaml.as_bytes())?;
    let console_path = out_dir.join("console.log");
    let console = std::fs::File::create(&console_path)
        .with_context(|| format!("creating {}", console_path.display()))?;

    let terminal = Arc::new(ui::Terminal::new(args.quiet));
    let observer: Arc<dyn Observer> = Arc::new(Fanout(vec![
        terminal.clone(),
        Arc::new(ConsoleLog::new(std::io::BufWriter::new(console))),
    ]));
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let mut engine = Engine::new(Arc::new(HostInstance::new(cwd)))
        .with_loader(loader)
        .with_observer(observer);
    if let Some(s3) = s3 {
        engine = engine.with_s3(s3);
    }
    let execution_id = args
        .execution_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let spec = RunSpec {
        documents,
        phases: (!args.phases.is_empty()).then_some(args.phases),
        execution_id,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // Dropping the run on a signal kills the running step's whole process tree.
    let report = tokio::select! {
        r = engine.run(spec) => r,
        _ = tokio::signal::ctrl_c() => return Ok(interrupted(&terminal, &console_path, "interrupted", 130)),
        _ = term.recv() => return Ok(interrupted(&terminal, &console_path, "terminated", 143)),
    };
    terminal.finish();
    let mut report = report;
    report.log_url = out_dir
        .canonicalize()
        .unwrap_or(out_dir.clone())
        .display()
        .to_string();
    let json = serde_json::to_vec_pretty(&report)?;
    write_atomic(&out_dir.join("detailedoutput.json"), &json)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "{}: {} step(s) run, {} failed, {} failure(s) ignored; details in {}",
        report.status.word(),
        report.executed_step_count,
        report.failed_step_count,
        report.ignored_failed_step_count,
        out_dir.join("detailedoutput.json").display()
    )?;
    if report.status == RunStatus::Failed {
        writeln!(stdout, "failed: {}", report.failure_message)?;
        writeln!(stdout, "full output: {}", console_path.display())?;
    }
    Ok(if report.status.ok() { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let p =
            parse_parameters(&["A=1,Hosts=127.0.0.1,amazon.com".into(), "B=x=y".into()]).unwrap();
        assert_eq!(
            p,
            vec![
                ("A".into(), "1".into()),
                ("Hosts".into(), "127.0.0.1,amazon.com".into()),
                ("B".into(), "x=y".into())
            ]
        );
        assert!(parse_parameters(&["ntp-server=".into()]).is_err());
        assert!(parse_parameters(&["novalue".into()]).is_err());
    }
}
