//! `kiln registry ...`: kiln serve as the token service of docker-registry's `auth: token`
//! (docs/registry-auth.md): the configuration to give the registry, and the password an
//! account logs in with.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kiln_core::regions::RegionPlace;
use kiln_core::registry_auth::keys::TokenKey;
use kiln_core::registry_auth::password;
use kiln_core::store::Home;

use crate::config;

/// The issuer kiln's tokens name and docker-registry's `auth.token.issuer` must say.
pub const ISSUER: &str = "kiln";

/// `kiln registry ...`
#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Print a password for `skopeo login` / `podman login` / `docker login` (user name `AWS`
    /// or the account id), made from an account's access key; like `aws ecr
    /// get-login-password`. Nothing is sent anywhere.
    Login(LoginArgs),
    /// Print the `auth: token` section that makes a docker-registry ask kiln serve for tokens
    /// (makes the token-signing key and certificate in $KILN_HOME on first use; root only).
    TokenConfig(TokenConfigArgs),
}

/// `kiln registry login`
#[derive(Args)]
pub struct LoginArgs {
    /// The access key id (as the AWS CLI takes it).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", value_name = "ID")]
    access_key_id: String,
    /// Its secret access key.
    #[arg(
        long,
        env = "AWS_SECRET_ACCESS_KEY",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    secret_access_key: String,
    /// How long the password is good for, in hours (at most 168).
    #[arg(long, default_value_t = 12)]
    hours: u32,
}

/// `kiln registry token-config`
#[derive(Args)]
pub struct TokenConfigArgs {
    /// The registry region (of `regions:` in kiln's configuration) whose registry this is:
    /// its `HOST[:PORT]` is the `service`.
    #[arg(long, value_name = "REGION", conflicts_with = "service")]
    region: Option<String>,
    /// The `service` (`HOST[:PORT]` as kiln's `regions:` names the registry).
    #[arg(long, value_name = "HOST:PORT")]
    service: Option<String>,
    /// Where the registry's clients get tokens: kiln serve's URL and `/registry/token`
    /// (default: `serve.listen` over http).
    #[arg(long, value_name = "URL")]
    realm: Option<String>,
}

/// Runs `kiln registry ...`.
pub async fn run(cmd: RegistryCommand) -> Result<u8> {
    match cmd {
        RegistryCommand::Login(a) => login(a),
        RegistryCommand::TokenConfig(a) => token_config(a),
    }
}

fn login(a: LoginArgs) -> Result<u8> {
    let lifetime = i64::from(a.hours) * 3600;
    if lifetime <= 0 || lifetime > password::MAX_LIFETIME_SECONDS {
        bail!("--hours {}: give 1 to 168 hours", a.hours);
    }
    if a.access_key_id.is_empty() || a.secret_access_key.is_empty() {
        bail!("give the access key with --access-key-id and --secret-access-key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
    }
    let expiry = chrono::Utc::now().timestamp() + lifetime;
    println!(
        "{}",
        password::make(&a.access_key_id, &a.secret_access_key, expiry)
    );
    Ok(0)
}

fn token_config(a: TokenConfigArgs) -> Result<u8> {
    if !kiln_instance::is_root() {
        bail!(
            "kiln registry token-config makes and reads kiln's token-signing key: run it as root"
        );
    }
    let cfg = config::load()?;
    let service = match (a.region, a.service) {
        (_, Some(s)) => s,
        (Some(r), None) => match cfg.regions.get(&r) {
            Some(RegionPlace::Registry { host, .. }) => host.clone(),
            Some(_) => bail!("region `{r}` is a bucket, not a registry"),
            None => bail!(
                "region `{r}` is not in kiln's configuration (`regions:`): a registry region is `{r}: {{registry: HOST[:PORT], tokenService: true}}`"
            ),
        },
        (None, None) => bail!("say which registry: --region NAME or --service HOST:PORT"),
    };
    let realm = a
        .realm
        .unwrap_or_else(|| format!("http://{}/registry/token", cfg.serve.listen));
    let home = Home::new(config::kiln_home());
    let key = TokenKey::load_or_create(&home).context("the registry token key")?;
    println!(
        "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {ISSUER}\n    rootcertbundle: {}",
        key.cert_path().display()
    );
    Ok(0)
}
