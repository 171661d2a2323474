//! The [`Remote`] client: one registry repository, and the oci-client and plain HTTP clients
//! kiln speaks to it with.

use std::net::IpAddr;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth as ClientAuth;
use oci_client::Client;

use super::errors::error_chain;
use super::{Reference, RegistryError, RegistryOptions};

const USER_AGENT: &str = concat!("kiln/", env!("CARGO_PKG_VERSION"));
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// `REPOSITORY:TAG` or `REPOSITORY@DIGEST`, as errors and logs name an image.
fn image_name(reference: &Reference) -> String {
    match (reference.tag(), reference.digest()) {
        (_, Some(digest)) => format!("{}@{digest}", reference.repository()),
        (Some(tag), None) => format!("{}:{tag}", reference.repository()),
        (None, None) => format!("{}:latest", reference.repository()),
    }
}

/// One registry repository, with a client set up for it.
pub(super) struct Remote {
    pub(super) client: Client,
    pub(super) auth: ClientAuth,
    pub(super) reference: Reference,
    /// `HOST[:PORT]` as given.
    pub(super) registry: String,
    /// `REPOSITORY:TAG` or `REPOSITORY@DIGEST`.
    pub(super) image: String,
    pub(super) username: Option<String>,
    /// `http` or `https`.
    pub(super) scheme: &'static str,
    /// Whether plain HTTP was asked for (as opposed to chosen for loopback).
    pub(super) insecure_http: bool,
}

impl Remote {
    pub(super) fn new(
        reference: Reference,
        opts: &RegistryOptions,
    ) -> Result<Remote, RegistryError> {
        let registry = reference.registry().to_string();
        let image = image_name(&reference);
        let plain = opts.insecure_http || is_loopback(reference.resolve_registry());
        if plain && opts.auth.is_some() && !is_loopback(reference.resolve_registry()) {
            tracing::warn!(
                registry = %registry,
                "sending credentials over plain HTTP: anyone on the network path can read them"
            );
        }
        let config = ClientConfig {
            protocol: if plain {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            // Pushes go through Repository's own requests (mounts, resumable pieces); this
            // client uploads nothing, so its push mode does not matter.
            use_monolithic_push: true,
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(|e| RegistryError::Protocol {
            registry: registry.clone(),
            image: image.clone(),
            doing: "setting up the HTTP client".into(),
            message: error_chain(&e),
        })?;
        let auth = match &opts.auth {
            Some(a) => ClientAuth::Basic(a.username.clone(), a.password.clone()),
            None => ClientAuth::Anonymous,
        };
        Ok(Remote {
            client,
            auth,
            registry,
            image,
            username: opts.auth.as_ref().map(|a| a.username.clone()),
            scheme: if plain { "http" } else { "https" },
            insecure_http: opts.insecure_http,
            reference,
        })
    }

    /// The same registry, client (and so its tokens) and credentials, for another reference
    /// in the repository.
    pub(super) fn with_reference(&self, reference: Reference) -> Remote {
        Remote {
            client: self.client.clone(),
            auth: self.auth.clone(),
            image: image_name(&reference),
            reference,
            registry: self.registry.clone(),
            username: self.username.clone(),
            scheme: self.scheme,
            insecure_http: self.insecure_http,
        }
    }

    /// A plain HTTP client set up as oci-client's is (timeouts, user agent, TLS).
    pub(super) fn http_client(&self) -> Result<reqwest::Client, RegistryError> {
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| self.protocol("setting up the HTTP client", error_chain(&e)))
    }
}

/// True for `localhost` and loopback addresses, with or without a port.
fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.split(':').next().unwrap_or(registry)
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback() {
        for yes in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:80",
        ] {
            assert!(is_loopback(yes), "{yes}");
        }
        for no in [
            "registry.example.com",
            "10.0.0.1:5000",
            "[::2]:5000",
            "localhostx",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
    }
}
