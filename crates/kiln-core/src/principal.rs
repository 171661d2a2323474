//! Who asks: an account and a user in it. The caller says who (the CLI passes the local
//! account and the login name; a service passes the account its request was signed for); the
//! core never guesses from the environment.

use serde::{Deserialize, Serialize};

/// The region kiln names its resources with.
pub const LOCAL_REGION: &str = "local";
/// The account the CLI acts as on its own machine.
pub const LOCAL_ACCOUNT: &str = "000000000000";

/// An account and a user in it: who creates, owns and reads resources and images.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    /// The 12-digit account id; it is part of every ARN the principal's resources get.
    pub account: String,
    /// The user name, recorded as the owner of what the principal makes.
    pub user: String,
}

impl Principal {
    /// A principal of an account.
    pub fn new(account: impl Into<String>, user: impl Into<String>) -> Self {
        Principal {
            account: account.into(),
            user: user.into(),
        }
    }

    /// A user of the local account (what the CLI acts as).
    pub fn local(user: impl Into<String>) -> Self {
        Principal::new(LOCAL_ACCOUNT, user)
    }

    /// The start of every ARN of this principal's account.
    pub fn arn_prefix(&self) -> String {
        format!("arn:kiln:imagebuilder:{LOCAL_REGION}:{}:", self.account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_principals_name_the_local_account() {
        let p = Principal::local("alice");
        assert_eq!(p.account, "000000000000");
        assert_eq!(p.arn_prefix(), "arn:kiln:imagebuilder:local:000000000000:");
    }
}
