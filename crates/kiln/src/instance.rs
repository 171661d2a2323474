//! `kiln instance ...`: instances kept after a failure (`terminateInstanceOnFailure: false`).

use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kiln_core::instances::{Instances, KeptInstance};
use kiln_core::store::Home;
use kiln_instance::vm::qmp::Qga;
use kiln_instance::BuilderKind;

use crate::build::{write_json, Output};
use crate::config;

/// `kiln instance ...`
#[derive(Subcommand)]
pub enum InstanceCommand {
    /// List kept instances.
    List(ListArgs),
    /// Stop a kept instance and remove everything it had.
    Stop(IdArgs),
    /// A shell in a kept instance (a sandbox: an interactive shell; a VM: commands run through
    /// its guest agent, one line at a time).
    Shell(ShellArgs),
}

/// `kiln instance list`
#[derive(Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// `kiln instance stop`
#[derive(Args)]
pub struct IdArgs {
    /// The instance id (`kiln instance list`).
    id: String,
}

/// `kiln instance shell`
#[derive(Args)]
pub struct ShellArgs {
    /// The instance id (`kiln instance list`).
    id: String,
    /// Run this command instead of an interactive shell, and exit with its status.
    #[arg(long, short = 'c')]
    command: Option<String>,
}

/// Runs `kiln instance ...`.
pub async fn run(cmd: InstanceCommand) -> Result<u8> {
    let instances = Instances::new(&Home::new(config::kiln_home()));
    match cmd {
        InstanceCommand::List(a) => list(&instances, a.output),
        InstanceCommand::Stop(a) => {
            instances.stop(&a.id)?;
            println!("stopped and removed {}", a.id);
            Ok(0)
        }
        InstanceCommand::Shell(a) => {
            let k = instances.get(&a.id)?;
            if !k.alive() {
                bail!(
                    "instance {} is no longer running (the host restarted, or it was killed): `kiln instance stop {}` removes what is left",
                    k.id,
                    k.id
                );
            }
            match k.kind {
                BuilderKind::Sandbox => sandbox_shell(&k, a.command.as_deref()),
                BuilderKind::Vm => vm_shell(&k, a.command.as_deref()).await,
            }
        }
    }
}

fn list(instances: &Instances, output: Output) -> Result<u8> {
    let all = instances.list();
    let mut out = std::io::stdout().lock();
    if output == Output::Json {
        write_json(&mut out, &all)?;
        return Ok(0);
    }
    if all.is_empty() {
        writeln!(out, "no kept instances")?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<16} {:<8} {:<9} {:<8} {:<25} BUILD",
        "ID", "KIND", "STAGE", "STATE", "KEPT AT"
    )?;
    for k in &all {
        writeln!(
            out,
            "{:<16} {:<8} {:<9} {:<8} {:<25} {}",
            k.id,
            k.kind,
            k.stage,
            if k.alive() { "running" } else { "gone" },
            k.kept_at.format("%Y-%m-%d %H:%M:%S UTC"),
            k.build
        )?;
    }
    Ok(0)
}

fn sandbox_shell(k: &KeptInstance, command: Option<&str>) -> Result<u8> {
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg("--target")
        .arg(k.pid.to_string())
        .args(["--mount", "--uts", "--ipc", "--pid", "--root", "--wd"])
        .args(["/usr/bin/env", "-i", "TERM=xterm", "HOME=/root"])
        .arg("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    match command {
        Some(c) => cmd.args(["/bin/sh", "-c", c]),
        None => cmd.args(["/bin/sh", "-l"]),
    };
    let status = cmd
        .status()
        .context("running nsenter (util-linux) to enter the sandbox")?;
    Ok(status.code().unwrap_or(1) as u8)
}

async fn vm_shell(k: &KeptInstance, command: Option<&str>) -> Result<u8> {
    let sock = k
        .qga_socket
        .as_deref()
        .context("the instance record has no guest agent socket")?;
    let mut qga = Qga::connect_within(sock, Duration::from_secs(30))
        .await
        .with_context(|| format!("connecting to the guest agent at {}", sock.display()))?;
    if let Some(c) = command {
        let code = run_line(&mut qga, c).await?;
        return Ok(code.clamp(0, 255) as u8);
    }
    eprintln!(
        "VM {} ({}): each line runs with /bin/sh in the guest, through its guest agent; end with Ctrl-D.",
        k.id, k.build
    );
    if let Some(c) = &k.console {
        eprintln!("serial console log: {}", c.display());
    }
    let stdin = std::io::stdin();
    loop {
        eprint!("{}# ", k.id);
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(0);
        }
        let line = line.trim().to_string();
        if line.is_empty() {
            continue;
        }
        match run_line(&mut qga, &line).await {
            Ok(0) => {}
            Ok(code) => eprintln!("(exit code {code})"),
            Err(e) => eprintln!("error: {e}"),
        }
    }
}

async fn run_line(qga: &mut Qga, line: &str) -> Result<i64, kiln_instance::vm::qmp::ProtocolError> {
    let (code, out, err) = qga
        .run("/bin/sh", &["-c", line], Duration::from_secs(600))
        .await?;
    print!("{out}");
    eprint!("{err}");
    let _ = std::io::stdout().flush();
    Ok(code)
}
