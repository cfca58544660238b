//! Secrets and the random values Trainyard makes: [`Secret`] (a string
//! that never prints, compared in constant time) for the daemon token,
//! remote and W&B credentials; [`random_hex`] for tokens and ids. At the
//! bottom of the crate: it uses nothing else from trainyard.

use std::fmt;

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself, for sending it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Constant-time comparison (BLAKE3 hashes compare in constant time).
    pub fn matches(&self, offered: &str) -> bool {
        blake3::hash(self.0.as_bytes()) == blake3::hash(offered.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `bytes` random bytes from the OS, as lower-case hex (the daemon token,
/// attempt tokens, agent ids).
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    // The OS RNG failing is not recoverable in any useful way.
    getrandom::fill(&mut b).expect("the OS random number generator works");
    b.iter().map(|x| format!("{x:02x}")).collect()
}
