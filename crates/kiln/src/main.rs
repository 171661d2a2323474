//! `kiln`: the command-line interface of the kiln image factory.

mod account;
mod attest;
mod build;
mod config;
mod config_regions;
mod config_scan;
mod disk;
mod image;
mod instance;
mod key;
mod lifecycle;
mod principal;
mod registry;
mod resource;
mod serve;
mod toe;
mod topic;
mod ui;
mod usage;
mod worker;
mod worker_run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// kiln: build, test and distribute golden images on your own machines.
#[derive(Parser)]
#[command(name = "kiln", version, about, long_about = None)]
struct Cli {
    /// Log kiln's own internals (debug level) to stderr.
    #[arg(long, short = 't', global = true)]
    trace: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build, test and distribute an image from a recipe file.
    Build(build::BuildArgs),
    /// Builds kiln has made: list, inspect, read logs.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// The step cache and layer store.
    #[command(subcommand)]
    Cache(image::CacheCommand),
    /// Disks in registry and bucket regions: pull one back.
    #[command(subcommand)]
    Disk(disk::DiskCommand),
    /// Component documents (AWSTOE-compatible): validate and run them.
    #[command(subcommand)]
    Toe(toe::ToeCommand),
    /// Instances kept after a failed build (terminateInstanceOnFailure: false).
    #[command(subcommand)]
    Instance(instance::InstanceCommand),
    /// Components (versioned, immutable): create, get, list, delete.
    #[command(subcommand)]
    Component(resource::VersionedCommand),
    /// Image and container recipes (versioned, immutable): create, get, list, delete.
    #[command(subcommand)]
    Recipe(resource::VersionedCommand),
    /// Infrastructure configurations: how builds run (builder, CPUs, memory, logs).
    #[command(subcommand)]
    Infrastructure(resource::ConfigCommand),
    /// Distribution configurations: where images go.
    #[command(subcommand)]
    Distribution(resource::ConfigCommand),
    /// Image pipelines: recipe + infrastructure + distribution + tests + schedule.
    #[command(subcommand)]
    Pipeline(resource::PipelineCommand),
    /// Lifecycle policies: deprecate, disable and delete old images; run now or as a dry run.
    #[command(subcommand)]
    Lifecycle(lifecycle::LifecycleCommand),
    /// Accounts and access keys for the API server (root only: the keys are secret).
    #[command(subcommand)]
    Account(account::AccountCommand),
    /// Image signing keys: the public key images in registries are signed with.
    #[command(subcommand)]
    SigningKey(attest::SigningKeyCommand),
    /// Topics: webhooks that hear of images AVAILABLE or FAILED (`snsTopicArn` names one).
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// KMS keys (a local KMS): create, list, disable, enable, grant, revoke, decryption-key.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Registries whose token service kiln serve is: the registry's configuration, logins.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Serve the EC2 Image Builder API (for the AWS CLI, boto3, Terraform) and run its builds.
    Serve(serve::ServeArgs),
    /// What builds used: instances' vCPU- and GiB-seconds, regions' bytes stored and sent.
    Usage(usage::UsageArgs),
    /// Build workers: their tokens (create, revoke) and what each is doing.
    #[command(subcommand)]
    Worker(worker::WorkerCommand),
}

/// Exit code for bad input (invalid documents, bad flags): nothing was run.
pub const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    // kiln re-runs itself as the sandbox helper and the VM keeper: handle that before anything starts
    // (no runtime, no threads: the helper forks).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(kiln_instance::sandbox::HELPER_ARG) {
        let spec = args.get(2).map(String::as_str).unwrap_or("");
        kiln_instance::sandbox::init::helper_main(spec);
    }
    if args.get(1).map(String::as_str) == Some(kiln_instance::vm::keeper::KEEPER_ARG) {
        let argv = args.get(2).map(String::as_str).unwrap_or("");
        kiln_instance::vm::keeper::keeper_main(argv);
    }
    let cli = Cli::parse();
    // The server says what it does (requests refused, builds started and ended) by default.
    let filter = match (&cli.command, cli.trace) {
        (_, true) => "debug",
        (Command::Serve(_), false) => "info,sqlx=warn",
        (Command::Worker(worker::WorkerCommand::Run(_)), false) => "info,sqlx=warn",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Build(args) => build::run(args).await,
            Command::Image(cmd) => image::run(cmd).await,
            Command::Cache(cmd) => image::cache(cmd).await,
            Command::Disk(cmd) => disk::run(cmd).await,
            Command::Toe(cmd) => toe::run(cmd).await,
            Command::Instance(cmd) => instance::run(cmd).await,
            Command::Component(c) => resource::run(resource::Which::Component(c)).await,
            Command::Recipe(c) => resource::run(resource::Which::Recipe(c)).await,
            Command::Infrastructure(c) => resource::run(resource::Which::Infrastructure(c)).await,
            Command::Distribution(c) => resource::run(resource::Which::Distribution(c)).await,
            Command::Pipeline(c) => resource::run(resource::Which::Pipeline(c)).await,
            Command::Lifecycle(c) => lifecycle::run(c).await,
            Command::Account(c) => account::run(c).await,
            Command::Key(c) => key::run(c),
            Command::SigningKey(c) => attest::signing_key(c).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Registry(c) => registry::run(c).await,
            Command::Topic(c) => topic::run(c).await,
            Command::Usage(args) => usage::run(args).await,
            Command::Worker(c) => worker::run(c).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}
