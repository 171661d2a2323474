//! `kiln worker run`: a host's build worker. It proves who it is with its token, then claims
//! the queued builds it can run from the store the servers share and runs them with the local
//! launcher, renewing each build's lease while it runs; it also reaps the leases of workers
//! that vanished. It stops on SIGTERM or Ctrl-C (its running builds are cancelled and
//! recorded), or when its token is revoked.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kiln_core::build::queued::{self, JobRunner};
use kiln_core::build::worker::{self, WorkerPool};
use kiln_core::remote_store::RemoteStore;
use kiln_core::state::Store;
use kiln_core::store::Home;
use kiln_core::workers;
use kiln_instance::LocalLauncher;

use crate::config::Config;

/// How often the worker checks that its token is still live.
const TOKEN_CHECK: Duration = Duration::from_secs(10);

/// What `kiln worker run` was told.
pub struct RunSettings {
    /// Where the token is (else $KILN_WORKER_TOKEN).
    pub token_file: Option<PathBuf>,
    /// Builds at once.
    pub concurrency: usize,
    /// The host's labels.
    pub labels: Vec<String>,
    /// The server to take builds from, instead of the configured store.
    pub server: Option<String>,
}

/// Where the worker's store is.
enum Via {
    /// The configured store itself (the database's credentials are on this host).
    Store,
    /// A kiln server, which answers for the store.
    Server(Arc<RemoteStore>),
}

impl Via {
    /// The token's worker, or `None` when it is refused (revoked).
    async fn whoami(&self, store: &Store, token: &str) -> Result<Option<String>> {
        Ok(match self {
            Via::Store => workers::authenticate(store, token).await?.map(|w| w.name),
            Via::Server(remote) => match remote.whoami().await {
                Ok(name) => Some(name),
                Err(kiln_store::StoreError::Unauthorized { .. }) => None,
                Err(e) => return Err(e.into()),
            },
        })
    }
}

fn read_token(file: Option<&PathBuf>) -> Result<String> {
    let token = match file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the worker's token from {}", f.display()))?,
        None => std::env::var("KILN_WORKER_TOKEN").unwrap_or_default(),
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        bail!(
            "no worker token: give --token-file FILE or set KILN_WORKER_TOKEN (make one on the server's side with `kiln worker token create NAME`)"
        );
    }
    Ok(token)
}

/// Runs the worker until it is stopped or its token is revoked.
pub async fn run(settings: RunSettings, cfg: Config, home: Home) -> Result<u8> {
    let token = read_token(settings.token_file.as_ref())?;
    let (store, via) = match &settings.server {
        Some(url) => {
            let remote = Arc::new(RemoteStore::new(url, &token)?);
            let store = Store::with_backend(&home, remote.clone());
            (store, Via::Server(remote))
        }
        None => (crate::config::open_store(&home, &cfg).await?, Via::Store),
    };
    let Some(name) = via.whoami(&store, &token).await? else {
        bail!(
            "the worker token is not one this store knows, or it was revoked: make a new one with `kiln worker token create NAME` (it is shown once)"
        );
    };
    if settings.concurrency == 0 {
        bail!("--concurrency 0 runs nothing: give 1 or more");
    }
    let launcher: Arc<dyn kiln_instance::Launcher> =
        Arc::new(LocalLauncher::current_exe(crate::build::agent_path()));
    let options = cfg.build_options();
    let notices: Arc<dyn kiln_core::notify::Notices> =
        Arc::new(kiln_api::notices::ImageNotices::new(store.clone()));
    let mut caps = queued::local_capabilities(launcher.as_ref());
    caps.labels.extend(settings.labels.iter().cloned());
    let runner = JobRunner {
        home,
        options: options.clone(),
        launcher,
        store: store.clone(),
        notices: Some(notices.clone()),
    };
    let pool = WorkerPool::new(runner, caps.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // A worker on the store reaps lapsed leases too; through a server, the server does.
    let mut tasks = Vec::new();
    if matches!(via, Via::Store) {
        tasks.push(tokio::spawn(worker::reap_until(
            store.clone(),
            options.access(),
            Some(notices),
            stop_rx,
        )));
    }
    tasks.extend(pool.spawn(&name, settings.concurrency));
    let builders: Vec<&str> = caps.builders.iter().map(String::as_str).collect();
    let from = match &settings.server {
        Some(url) => format!("the server {url}"),
        None => "the store".to_owned(),
    };
    eprintln!(
        "kiln worker {}: taking builds ({} builder{}, {}{}) from {from}; {} at once",
        name,
        builders.join(", "),
        if builders.len() == 1 { "" } else { "s" },
        caps.arch,
        if caps.kvm { ", KVM" } else { ", no KVM" },
        settings.concurrency
    );
    use std::io::Write;
    println!("worker {} ready", name);
    let _ = std::io::stdout().flush();

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let revoked = async {
        loop {
            tokio::time::sleep(TOKEN_CHECK).await;
            match via.whoami(&store, &token).await {
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(e) => tracing::warn!(error = %e, "cannot check the worker's token"),
            }
        }
    };
    let code = tokio::select! {
        _ = term.recv() => 0,
        _ = tokio::signal::ctrl_c() => 0,
        _ = revoked => {
            eprintln!("kiln worker {}: its token was revoked: stopping", name);
            1
        }
    };
    eprintln!(
        "kiln worker {}: stopping: running builds are cancelled and recorded",
        name
    );
    pool.stop().await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    eprintln!("kiln worker {}: stopped", name);
    Ok(code)
}
