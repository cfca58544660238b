//! The daemon's bearer token file: generated on first start, stored 0600
//! under the Trainyard home, refused when others may read it. The token is
//! required on every API call but `GET /api/v1/health` (see `guard`).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use crate::secret::Secret;

/// A token file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// IO on the token file.
    #[error("token file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is readable by others.
    #[error("token file {path} has mode {mode:o}; it must be 0600 (chmod 600 {path})")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// Empty file.
    #[error("token file {0} is empty")]
    Empty(PathBuf),
}

/// Read a token file, refusing one that others may read.
pub fn read_token(path: &Path) -> Result<Secret, TokenError> {
    let io = |source| TokenError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let t = text.trim();
    if t.is_empty() {
        return Err(TokenError::Empty(path.to_path_buf()));
    }
    Ok(Secret::new(t))
}

/// The daemon's token at `path`, created (random, 0600) if missing.
pub fn load_or_create(path: &Path) -> Result<Secret, TokenError> {
    match read_token(path) {
        Ok(t) => return Ok(t),
        Err(TokenError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = crate::secret::random_hex(32);
    let io = |source| TokenError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(format!("{token}\n").as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    tracing::info!(path = %path.display(), "generated the daemon token");
    Ok(Secret::new(token))
}

/// What `trainyard up` says when it listens beyond loopback: where the
/// token is and how agents and clients elsewhere pass it. `None` on
/// loopback, where the CLI and local agents read the home's token.
pub fn remote_access_notice(
    bind: std::net::IpAddr,
    port: u16,
    token_file: &std::path::Path,
) -> Option<String> {
    (!bind.is_loopback()).then(|| {
        format!(
            "agents and clients elsewhere need the token in {}: copy it (mode 0600) and pass \
             --token-file FILE or TRAINYARD_TOKEN, e.g. `trainyard agent --server \
             http://THIS-HOST:{port} --token-file FILE`",
            token_file.display()
        )
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn beyond_loopback_up_says_where_the_token_is_and_how_agents_pass_it() {
        let f = std::path::Path::new("/lab/home/daemon.token");
        for lo in ["127.0.0.1", "::1", "127.0.0.2"] {
            assert_eq!(
                super::remote_access_notice(lo.parse().unwrap(), 7171, f),
                None,
                "{lo}"
            );
        }
        for lan in ["0.0.0.0", "192.168.1.20", "::"] {
            let n = super::remote_access_notice(lan.parse().unwrap(), 7171, f).expect(lan);
            assert!(n.contains("/lab/home/daemon.token"), "{n}");
            assert!(n.contains("--token-file FILE or TRAINYARD_TOKEN"), "{n}");
            assert!(n.contains("--server http://THIS-HOST:7171"), "{n}");
        }
    }
    use super::*;

    #[test]
    fn token_is_created_0600_and_read_back_and_loose_modes_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("daemon.token");
        let t = load_or_create(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(load_or_create(&p).unwrap().matches(t.expose()));
        assert!(!t.matches("nope"));
        assert_eq!(format!("{t:?}"), "Secret(***)");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_token(&p),
            Err(TokenError::Permissions { .. })
        ));
    }
}
