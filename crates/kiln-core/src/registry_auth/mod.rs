//! kiln as the token service of the registries it distributes to (the Docker registry token
//! authentication specification, as docker-registry's `auth: token` verifies it).
//!
//! - [`keys`]: the token-signing key (ES256) and its self-signed certificate in
//!   `$KILN_HOME/registry-auth`, made on first use; the registry's `rootcertbundle`.
//! - [`jwt`]: the tokens: libtrust key ids, claims, `access`.
//! - [`password`]: what `kiln registry login` prints: a time-limited password made from an
//!   account's secret key, verified without being stored.
//! - [`grants`]: which repositories an account may pull (its own images, and those whose
//!   distribution names it now); only kiln's own service credential pushes.
//! - [`guard`]: a distribution may not write into a repository holding another account's
//!   images.
//! - [`targets`]: `targetAccountIds`, copies in other accounts' repositories by mounts.
//!
//! docs/registry-auth.md is the specification for operators and users.

pub mod grants;
pub mod guard;
pub mod jwt;
pub mod keys;
pub mod password;
pub mod stage;
pub mod targets;
#[cfg(test)]
mod tests;

/// The user name of kiln's own credential, the one that pushes: not an account id (those are
/// 12 digits), so no account can take it.
pub const SERVICE_USER: &str = "kiln";

/// What can go wrong with the token service's key, a password or a grant.
#[derive(Debug, thiserror::Error)]
pub enum RegistryAuthError {
    /// The key folder could not be read or written.
    #[error("{path}: {detail}")]
    Io {
        /// The file or folder.
        path: std::path::PathBuf,
        /// What failed.
        detail: String,
    },
    /// The key or certificate is damaged or could not be made.
    #[error("the registry token key in {path}: {detail}; remove the folder to make a new key (then give docker-registry the new certificate)")]
    Key {
        /// The key folder.
        path: std::path::PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A password that is not kiln's, is expired or does not verify.
    #[error("{0}")]
    Password(String),
}
