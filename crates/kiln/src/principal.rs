//! Who the CLI acts as: the local account, and the login name of whoever runs kiln.

use kiln_core::principal::Principal;

/// The login name of whoever runs kiln (`SUDO_USER` first: sudo runs kiln as root for them).
pub fn login_name() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| "root".into())
        })
}

/// The principal every CLI command acts as.
pub fn local() -> Principal {
    Principal::local(login_name())
}

/// An owner as lists filter by it: `self` is whoever runs kiln.
pub fn owner_filter(owner: &str) -> String {
    if owner.eq_ignore_ascii_case("self") {
        login_name()
    } else {
        owner.to_string()
    }
}
