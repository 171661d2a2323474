//! The password `kiln registry login` prints (as `aws ecr get-login-password` does), used with
//! the user name `AWS` (as ECR's) or the account id: `kiln1.ACCESS_KEY_ID.EXPIRY.MAC`, where
//! MAC is the HMAC-SHA256, by the secret access key, of the version, the key id and the
//! expiry. The server recomputes it from the key it already holds: nothing is stored, a
//! deleted key ends its passwords, and the secret is never sent.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::RegistryAuthError;

/// How long a password is good for by default (as ECR's: 12 hours).
pub const DEFAULT_LIFETIME_SECONDS: i64 = 12 * 3600;
/// The longest lifetime a password may claim; a longer one is refused, since the expiry is
/// the password's only limit.
pub const MAX_LIFETIME_SECONDS: i64 = 7 * 24 * 3600;

const PREFIX: &str = "kiln1";

/// The user name that stands for "the account of the password's key", as ECR's `AWS`.
pub const ANY_ACCOUNT_USER: &str = "AWS";

fn mac(secret: &str, key_id: &str, expiry: i64) -> Vec<u8> {
    // An HMAC takes keys of any length: this cannot fail.
    let mut m = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    m.update(format!("kiln-registry-login\n{PREFIX}\n{key_id}\n{expiry}").as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// A password for the key `key_id` (its secret `secret`) good until `expiry` (seconds since
/// the epoch).
pub fn make(key_id: &str, secret: &str, expiry: i64) -> String {
    let m = URL_SAFE_NO_PAD.encode(mac(secret, key_id, expiry));
    format!("{PREFIX}.{key_id}.{expiry}.{m}")
}

/// The access key id a password names, for looking its secret up; `None` when it is not one
/// of kiln's passwords.
pub fn key_id(password: &str) -> Option<&str> {
    let mut parts = password.split('.');
    (parts.next()? == PREFIX).then_some(())?;
    parts.next().filter(|k| !k.is_empty())
}

/// Checks a password given with user name `user` at `now`, with the account and secret of the
/// key it names: the reason when it is refused (told to the client, and never containing the
/// password).
pub fn verify(
    password: &str,
    user: &str,
    key_account: &str,
    secret: &str,
    now: i64,
) -> Result<(), RegistryAuthError> {
    let refuse = |why: &str| Err(RegistryAuthError::Password(why.to_string()));
    let parts: Vec<&str> = password.split('.').collect();
    let [prefix, key_id, expiry, given] = parts[..] else {
        return refuse("not a password of `kiln registry login`");
    };
    if prefix != PREFIX {
        return refuse("not a password of `kiln registry login`");
    }
    if user != key_account && user != ANY_ACCOUNT_USER {
        return refuse("the user name must be AWS or the account id of the password's key");
    }
    let Ok(expiry) = expiry.parse::<i64>() else {
        return refuse("not a password of `kiln registry login`");
    };
    let Ok(given) = URL_SAFE_NO_PAD.decode(given) else {
        return refuse("not a password of `kiln registry login`");
    };
    let expected = mac(secret, key_id, expiry);
    if !bool::from(expected.ct_eq(&given)) {
        return refuse("the password does not verify: run `kiln registry login` again");
    }
    if expiry <= now {
        return refuse("the password has expired: run `kiln registry login` again");
    }
    if expiry - now > MAX_LIFETIME_SECONDS {
        return refuse("the password claims a lifetime over 7 days");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AKIAKILN0000EXAMPLE1";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const ACCOUNT: &str = "111122223333";

    #[test]
    fn a_password_verifies_until_it_expires() {
        let p = make(KEY, SECRET, 5000);
        assert_eq!(key_id(&p), Some(KEY));
        assert!(!p.contains(SECRET));
        assert!(verify(&p, ACCOUNT, ACCOUNT, SECRET, 4999).is_ok());
        assert!(verify(&p, ANY_ACCOUNT_USER, ACCOUNT, SECRET, 4999).is_ok());
        let e = verify(&p, ACCOUNT, ACCOUNT, SECRET, 5000).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
    }

    #[test]
    fn wrong_secret_account_or_changed_expiry_is_refused() {
        let p = make(KEY, SECRET, 5000);
        assert!(verify(&p, ACCOUNT, ACCOUNT, "other-secret", 10).is_err());
        // Another account's user name with this key.
        let e = verify(&p, "444455556666", ACCOUNT, SECRET, 10).unwrap_err();
        assert!(e.to_string().contains("user name"), "{e}");
        // A later expiry written in by hand does not verify.
        let forged = p.replace(".5000.", ".9000.");
        let e = verify(&forged, ACCOUNT, ACCOUNT, SECRET, 10).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        // Not kiln's at all.
        assert!(key_id("hunter2").is_none());
        assert!(verify("hunter2", ACCOUNT, ACCOUNT, SECRET, 10).is_err());
        // Too long a lifetime.
        let long = make(KEY, SECRET, 10 + MAX_LIFETIME_SECONDS + 1);
        assert!(verify(&long, ACCOUNT, ACCOUNT, SECRET, 10).is_err());
    }
}
