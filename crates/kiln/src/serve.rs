//! `kiln serve`: the EC2 Image Builder API over this machine's kiln home.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context, Result};
use clap::Args;
use kiln_api::auth::{Key, KeyStore, SigV4};
use kiln_api::{App, BuildSettings, Builds};
use kiln_core::accounts::{Accounts, Snapshot};
use kiln_core::record::{LocalRuns, Records};
use kiln_core::resources::Resources;
use kiln_core::store::Home;
use kiln_instance::LocalLauncher;

use crate::config;

/// `kiln serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (`serve.listen` in the configuration; 127.0.0.1:8479 by default).
    /// Port 0 picks a free port; the line `listening on http://ADDR` says which.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Builds this server runs at once; the rest wait PENDING in the queue (`serve.concurrency`,
    /// default 2; 0 leaves every build to `kiln worker` processes).
    #[arg(long)]
    concurrency: Option<u32>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// How long the registry tokens of `/registry/token` live, in seconds: a grant or revoke
    /// takes effect within it (docs/registry-auth.md).
    #[arg(long, value_name = "SECONDS", default_value_t = kiln_api::registry_token::DEFAULT_LIFETIME_SECONDS)]
    registry_token_seconds: u64,
}

/// The accounts file, read again whenever it changes (one `stat` per request otherwise).
struct AccountKeys {
    accounts: Accounts,
    snapshot: RwLock<Snapshot>,
}

impl KeyStore for AccountKeys {
    fn key(&self, access_key_id: &str) -> Option<Key> {
        let fresh = {
            let current = self.snapshot.read().ok()?;
            match self.accounts.reload_if_changed(&current) {
                Ok(fresh) => fresh,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the accounts file; using the keys read before");
                    None
                }
            }
        };
        if let Some(s) = fresh {
            if let Ok(mut w) = self.snapshot.write() {
                *w = s;
            }
        }
        let snap = self.snapshot.read().ok()?;
        let owner = snap.lookup(access_key_id)?;
        Some(Key {
            account: owner.account_id.clone(),
            user: owner.name.clone(),
            secret: owner.secret_access_key.expose().to_string(),
        })
    }
}

/// Runs the server until SIGTERM or Ctrl-C.
pub async fn run(args: ServeArgs) -> Result<u8> {
    if !kiln_instance::is_root() {
        bail!("kiln serve runs builds and reads the accounts' secrets: run it as root");
    }
    let cfg = config::load()?;
    let home = Home::new(config::kiln_home());
    let listen = args.listen.unwrap_or(cfg.serve.listen.clone());
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen}: give an address such as 127.0.0.1:8479"))?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "kiln serve: listening on {addr}, which is not a loopback address: every request is still signed, but put TLS in front of it"
        );
    }
    let store = config::open_store(&home, &cfg).await?;
    let records = Records::new(store.clone());
    let access = cfg.access();
    let notices = kiln_api::notices::ImageNotices::new(store.clone());
    for b in records
        .recover_interrupted_telling(&LocalRuns, &access, Some(&notices))
        .await?
    {
        eprintln!("kiln serve: {b} was interrupted earlier; it is now FAILED");
    }
    let accounts = Accounts::new(&home);
    let snapshot = accounts.snapshot()?;
    if snapshot.is_empty() {
        eprintln!(
            "kiln serve: there are no accounts yet, so every request is refused: create one with `kiln account create NAME`"
        );
    }
    let keys = Arc::new(AccountKeys {
        accounts,
        snapshot: RwLock::new(snapshot),
    });
    let token_key = kiln_core::registry_auth::keys::TokenKey::load_or_create(&home)
        .context("the registry token service's key")?;
    let registry_tokens = Arc::new(kiln_api::registry_token::TokenService::new(
        token_key,
        crate::registry::ISSUER,
        args.registry_token_seconds,
        keys.clone(),
        store.clone(),
    ));
    let options = cfg.build_options();
    let launcher: Arc<dyn kiln_instance::Launcher> =
        Arc::new(LocalLauncher::current_exe(crate::build::agent_path()));
    let checks = Arc::new(kiln_core::scheduler::LocalChecks {
        home: home.clone(),
        options: options.clone(),
        launcher: launcher.clone(),
    });
    let settings = BuildSettings {
        home: home.clone(),
        options,
        launcher,
        concurrency: args.concurrency.unwrap_or(cfg.serve.concurrency) as usize,
    };
    let console_key = kiln_api::console::SessionKey::load_or_create(&home.root)
        .context("the console's session key")?;
    let console = kiln_api::console::Console {
        sessions: kiln_api::console::Sessions::new(console_key, keys.clone()),
        tls: args.tls_cert.is_some(),
    };
    let app = Arc::new(App {
        resources: Resources::new(store.clone()).with_trust(cfg.trust.clone()),
        records,
        builds: Builds::new(settings, store),
        auth: Arc::new(SigV4::new(keys, &cfg.serve.region)),
        limiter: kiln_api::ratelimit::Limiter::new(cfg.serve.requests_per_second, cfg.serve.burst),
        tokens: kiln_api::tokens::Tokens::default(),
        kms_master_key: cfg.kms_master_key.clone(),
        registry_tokens: Some(registry_tokens),
        console: Some(console),
    });
    // Read before anything listens: a bad certificate is told at once.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(kiln_api::tls::config(cert, key)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let bound = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    // One line on stdout, once requests are taken: scripts and tests wait for it.
    println!("listening on {scheme}://{bound}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    eprintln!(
        "kiln serve: the EC2 Image Builder API for region {} on {scheme}://{bound} (aws imagebuilder ... --endpoint-url {scheme}://{bound} --region {})",
        cfg.serve.region, cfg.serve.region
    );
    eprintln!(
        "kiln serve: the console on {scheme}://{bound}/console/ (sign in with an access key from `kiln account create`)"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        eprintln!("kiln serve: stopping: running builds are cancelled and recorded");
    };
    let scheduler = Arc::new(
        kiln_core::scheduler::Scheduler::new(
            app.resources.clone(),
            app.records.clone(),
            Arc::new(kiln_schedule::SystemClock),
            Arc::new(kiln_api::builds::ServerStarter(app.clone())),
        )
        .with_catch_up(chrono::Duration::hours(i64::from(cfg.serve.catch_up_hours)))
        .with_checks(checks)
        .with_lifecycle(access.clone()),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let every = std::time::Duration::from_secs(u64::from(cfg.serve.schedule_every_seconds.max(1)));
    let scheduling = tokio::spawn(scheduler.run(every, stop_rx));
    // The scheduler stops (finishing a tick under way) before the builds are cancelled, so
    // that it never claims a run that a stopping server then refuses to build.
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
        let _ = scheduling.await;
    };
    match tls {
        Some(config) => {
            let listener = kiln_api::tls::TlsListener::new(listener, config)?;
            kiln_api::serve(listener, app, shutdown).await?
        }
        None => kiln_api::serve(listener, app, shutdown).await?,
    }
    eprintln!("kiln serve: stopped");
    Ok(0)
}
