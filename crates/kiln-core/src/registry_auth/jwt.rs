//! Registry tokens as docker-registry 2.8 verifies them (`registry/auth/token/token.go`): a
//! JWS compact ES256 token whose header's `kid` is the libtrust key id of a public key in the
//! `rootcertbundle`; `iss` the configured issuer; `aud` the service (one string: 2.8 does not
//! read a list); `exp` and `nbf` (60 s leeway there); `access` the granted actions per
//! repository.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::keys::TokenKey;
use super::RegistryAuthError;

/// One `access` entry: actions on a resource (`repository` NAME).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// `repository` (or `registry` for the catalog).
    #[serde(rename = "type")]
    pub kind: String,
    /// The repository's name below the registry host.
    pub name: String,
    /// `pull`, `push`, `delete`.
    pub actions: Vec<String>,
}

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who issued it (the registry's `issuer`).
    pub iss: String,
    /// Who it is for: the account id, or [`super::SERVICE_USER`].
    pub sub: String,
    /// The registry's `service`.
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Not before.
    pub nbf: i64,
    /// Issued at.
    pub iat: i64,
    /// A unique id.
    pub jti: String,
    /// What it grants.
    pub access: Vec<Access>,
}

/// libtrust's key id of a public key (its DER SubjectPublicKeyInfo): the first 240 bits of
/// its SHA-256 in base32 (RFC 4648 alphabet, no padding), in groups of four joined by `:`.
pub fn libtrust_kid(spki_der: &[u8]) -> String {
    let digest = Sha256::digest(spki_der);
    let encoded = base32(&digest[..30]);
    encoded
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// RFC 4648 base32 without padding (30 bytes give exactly 48 characters).
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The signed token.
pub fn sign(key: &TokenKey, claims: &Claims) -> Result<String, RegistryAuthError> {
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": key.kid()});
    let encode = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
    let claims_json = serde_json::to_vec(claims).map_err(|e| RegistryAuthError::Key {
        path: key.cert_path(),
        detail: e.to_string(),
    })?;
    let signing_input = format!(
        "{}.{}",
        encode(header.to_string().as_bytes()),
        encode(&claims_json)
    );
    let signature = key.sign(signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{}", encode(&signature)))
}

/// A token's header and claims, and whether its signature verifies with `public_key` (the
/// uncompressed point): what tests check, the way docker-registry reads a token.
pub fn decode(token: &str, public_key: &[u8]) -> Option<(serde_json::Value, Claims)> {
    let mut parts = token.split('.');
    let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
    let sig = URL_SAFE_NO_PAD.decode(s).ok()?;
    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        public_key,
    );
    public.verify(format!("{h}.{c}").as_bytes(), &sig).ok()?;
    let header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
    let claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
    Some((header, claims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Home;

    #[test]
    fn base32_is_rfc_4648() {
        // RFC 4648's test vectors, without padding.
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"fo"), "MZXQ");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn kid_is_libtrusts() {
        // libtrust's key id of this P-256 key, as `openssl pkey -pubout -outform DER | sha256sum`
        // gives the digest: 30 bytes in base32, twelve groups of four.
        let spki = hex::decode(
            "3059301306072a8648ce3d020106082a8648ce3d03010703420004\
            6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296\
            4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
        )
        .unwrap();
        let kid = libtrust_kid(&spki);
        let digest = Sha256::digest(&spki);
        assert_eq!(kid.replace(':', ""), base32(&digest[..30]));
        assert_eq!(kid.len(), 48 + 11);
        assert!(kid.split(':').all(|g| g.len() == 4
            && g.chars()
                .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))));
    }

    #[test]
    fn tokens_carry_the_claims_docker_registry_checks() {
        let t = tempfile::tempdir().unwrap();
        let key = TokenKey::load_or_create(&Home::new(t.path())).unwrap();
        let claims = Claims {
            iss: "kiln".into(),
            sub: "111122223333".into(),
            aud: "127.0.0.1:5000".into(),
            exp: 2000,
            nbf: 1000,
            iat: 1000,
            jti: "x".into(),
            access: vec![Access {
                kind: "repository".into(),
                name: "golden/app".into(),
                actions: vec!["pull".into()],
            }],
        };
        let token = sign(&key, &claims).unwrap();
        assert_eq!(token.matches('.').count(), 2);
        let (header, back) = decode(&token, key.public_key()).unwrap();
        assert_eq!(back, claims);
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], key.kid());
        // `aud` is one string, which is all docker-registry 2.8 reads.
        let raw: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert!(raw["aud"].is_string());
        assert_eq!(raw["access"][0]["type"], "repository");
        // A changed claim no longer verifies.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"iss":"kiln"}"#);
        parts[1] = &forged;
        assert!(decode(&parts.join("."), key.public_key()).is_none());
    }
}
