//! Authentication for kiln's own HTTP requests (the DELETE oci-client lacks, and the blob and
//! manifest requests of [`super::Repository`]): the
//! `WWW-Authenticate` challenges of a 401, the credentials that answer them, and bearer tokens
//! from a registry's token service.

use oci_client::errors::OciEnvelope;
use oci_client::secrets::RegistryAuth as ClientAuth;
use serde_json::Value;

use super::errors::{http_error, Action};
use super::remote::Remote;
use super::RegistryError;

/// What a registry asks for in the `WWW-Authenticate` of a 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// The challenge kiln answers from a `WWW-Authenticate` value: Bearer when offered (a registry
/// that offers both would rather have a token), else Basic; `None` for anything else.
pub(super) fn parse_challenge(header: &str) -> Option<Challenge> {
    let challenges = http_auth::parse_challenges(header).ok()?;
    let param = |c: &http_auth::ChallengeRef<'_>, name: &str| {
        c.params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.to_unescaped())
    };
    let bearer = challenges
        .iter()
        .filter(|c| c.scheme.eq_ignore_ascii_case("bearer"))
        .find_map(|c| {
            Some(Challenge::Bearer {
                realm: param(c, "realm")?,
                service: param(c, "service"),
                scope: param(c, "scope"),
            })
        });
    bearer.or_else(|| {
        challenges
            .iter()
            .any(|c| c.scheme.eq_ignore_ascii_case("basic"))
            .then_some(Challenge::Basic)
    })
}

/// Whether a `WWW-Authenticate` value says the token was good but grants too little
/// (`error="insufficient_scope"`, RFC 6750).
pub(super) fn is_insufficient_scope(header: &str) -> bool {
    http_auth::parse_challenges(header).is_ok_and(|challenges| {
        challenges.iter().any(|c| {
            c.scheme.eq_ignore_ascii_case("bearer")
                && c.params.iter().any(|(key, value)| {
                    key.eq_ignore_ascii_case("error")
                        && value.to_unescaped() == "insufficient_scope"
                })
        })
    })
}

/// What kiln's own requests authenticate with. No `Debug`: it holds the password or token.
#[derive(Clone)]
pub(super) enum Credential {
    Basic(String, String),
    Bearer(String),
}

impl Remote {
    /// Answers the auth challenge of a 401: basic auth with the credentials, or a bearer token
    /// from the token service the challenge names. `None` when there is nothing to answer with
    /// (no challenge kiln knows, or basic auth without credentials): the 401 then stands.
    pub(super) async fn answer(
        &self,
        http: &reqwest::Client,
        challenge: Option<Challenge>,
    ) -> Result<Option<Credential>, RegistryError> {
        let scope = format!("repository:{}:delete", self.reference.repository());
        self.answer_for(http, challenge, Action::DeleteToken, &scope)
            .await
    }

    /// [`Remote::answer`] for any request: `action` words a token service's failure, and
    /// `default_scope` is asked for when the challenge names none.
    pub(super) async fn answer_for(
        &self,
        http: &reqwest::Client,
        challenge: Option<Challenge>,
        action: Action<'_>,
        default_scope: &str,
    ) -> Result<Option<Credential>, RegistryError> {
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(match &self.auth {
                ClientAuth::Basic(user, password) => {
                    Some(Credential::Basic(user.clone(), password.clone()))
                }
                _ => None,
            }),
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scope = scope.as_deref().unwrap_or(default_scope);
                let token = self
                    .bearer_token(http, &realm, service.as_deref(), scope, action)
                    .await?;
                Ok(Some(Credential::Bearer(token)))
            }
        }
    }

    /// A token from the registry's token service (the Docker token protocol, which the CNCF
    /// registry, Harbor, GitLab and Docker Hub speak), with the credentials when there are
    /// any; anonymous tokens exist too, and a registry then refuses the delete itself.
    async fn bearer_token(
        &self,
        http: &reqwest::Client,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        action: Action<'_>,
    ) -> Result<String, RegistryError> {
        let mut url = reqwest::Url::parse(realm).map_err(|e| {
            self.protocol(
                &action.doing(),
                format!(
                    "its token service `{realm}` is not a URL ({e}); the registry's auth setup \
                     is broken"
                ),
            )
        })?;
        match url.scheme() {
            "https" => {}
            // Plain HTTP for the token only where the registry itself is spoken to that way.
            "http" if self.scheme == "http" => {}
            other => {
                return Err(self.protocol(
                    &action.doing(),
                    format!(
                        "its token service `{realm}` is not HTTPS ({other}); kiln sends \
                         credentials to it only over HTTPS: have the registry's token realm \
                         fixed"
                    ),
                ))
            }
        }
        // The challenge names the scope the request needs (`repository:NAME:delete` for a
        // DELETE on the CNCF registry); one that names none gets the caller's default.
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
        }
        let mut request = http.get(url.clone());
        if let ClientAuth::Basic(user, password) = &self.auth {
            request = request.basic_auth(user, Some(password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.error(e.into(), action))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.error(e.into(), action))?;
        if !status.is_success() {
            let envelope = serde_json::from_slice::<OciEnvelope>(&body).ok();
            return Err(self.error(http_error(status, &body, envelope, url.as_str()), action));
        }
        // `token` is the Docker protocol's name, `access_token` the OAuth 2 one; services send
        // either or both.
        let token = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
            ["token", "access_token"].iter().find_map(|key| {
                v.get(key)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
            })
        });
        token.ok_or_else(|| {
            self.protocol(
                &action.doing(),
                format!(
                    "its token service {} answered {status} without a token; the registry's \
                     auth setup is broken",
                    url.as_str().split('?').next().unwrap_or(realm)
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        // The CNCF registry's token challenge: the scope's comma is inside the quotes.
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:kiln/app:pull,delete""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
                scope: Some("repository:kiln/app:pull,delete".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="kiln-test""#),
            Some(Challenge::Basic)
        );
        // Both offered: the token wins; scheme names are case-insensitive.
        assert_eq!(
            parse_challenge(r#"Basic realm="x", bearer realm="https://a/t""#),
            Some(Challenge::Bearer {
                realm: "https://a/t".into(),
                service: None,
                scope: None,
            })
        );
        // A bearer challenge without a realm cannot be answered; nor can other schemes.
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_challenge(r#"Negotiate realm="x""#), None);
        assert_eq!(parse_challenge("\"garbage"), None);
        assert!(is_insufficient_scope(
            r#"Bearer realm="https://a/t",scope="repository:x:delete",error="insufficient_scope""#
        ));
        assert!(!is_insufficient_scope(
            r#"Bearer realm="https://a/t",error="invalid_token""#
        ));
        assert!(!is_insufficient_scope(r#"Basic realm="x""#));
    }
}
