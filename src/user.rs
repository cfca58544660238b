//! Who runs this process, as Trainyard records it: the author of a dataset
//! version, the submitter of a job, the committer to a data registry. One
//! answer everywhere, so `trainyard ps --user NAME` and `data log` agree.

/// Overrides the name (scripts, shared service accounts, tests).
pub const USER_ENV: &str = "TRAINYARD_USER";

/// The current user's name: `$TRAINYARD_USER`, `$USER`, `$LOGNAME`, then the
/// name of the process's real uid in the user database (`/etc/passwd`, or
/// LDAP and the like through NSS), else `uid<N>`.
pub fn current() -> String {
    [USER_ENV, "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(from_uid)
}

/// The user database's name for the real uid, else `uid<N>`.
fn from_uid() -> String {
    let uid = nix::unistd::Uid::current();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => u.name,
        _ => format!("uid{uid}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_uid_has_a_name_or_a_number() {
        let name = super::from_uid();
        assert!(!name.is_empty());
        // Where the user database knows the uid, its name; never a name
        // made up otherwise.
        let uid = nix::unistd::Uid::current();
        if nix::unistd::User::from_uid(uid).ok().flatten().is_none() {
            assert_eq!(name, format!("uid{uid}"));
        }
    }
}
