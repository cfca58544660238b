//! Who an agent is: its name (unique in the lab, chosen by the user) and an
//! id created once and kept in its home (`agent/<name>/id`, 0600), so a
//! restarted agent is recognised as the same one while a second machine
//! that happens to use the same name (cloned servers share host names) is
//! not. One agent per name per home at a time: the identity holds a lock
//! on `agent/<name>/agent.lock` for the agent's lifetime.

use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::Home;

/// An agent's identity, held for as long as the agent runs.
#[derive(Debug)]
pub struct Identity {
    /// The name it registers under.
    pub name: String,
    /// 128 random bits as hex, created on the first start in this home.
    pub id: String,
    _lock: std::fs::File,
}

/// Why an identity could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Another agent of this home runs under the name.
    #[error(
        "another agent named {name:?} already runs from the Trainyard home {home} (pid {pid}): \
         give this one another name with --agent-name NAME"
    )]
    Running {
        /// The name.
        name: String,
        /// The home.
        home: PathBuf,
        /// The running agent's pid, as its lock file says.
        pid: String,
    },
    /// IO on the identity files.
    #[error("agent identity file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl Identity {
    /// Take the identity of agent `name` in `home`: lock it, and read its
    /// id (creating it on the first start).
    pub fn take(home: &Home, name: &str) -> Result<Identity, IdentityError> {
        let dir = home.agent_dir(name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let lock_path = dir.join("agent.lock");
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                let mut pid = String::new();
                let _ = lock.read_to_string(&mut pid);
                return Err(IdentityError::Running {
                    name: name.to_string(),
                    home: home.root().to_path_buf(),
                    pid: pid.trim().to_string(),
                });
            }
            Err(e) => return Err(io(&lock_path)(e.into())),
        }
        // The holder's pid, for the message above.
        lock.set_len(0).map_err(io(&lock_path))?;
        lock.rewind().map_err(io(&lock_path))?;
        write!(lock, "{}", std::process::id()).map_err(io(&lock_path))?;
        let id = read_or_create_id(&dir.join("id"))?;
        Ok(Identity {
            name: name.to_string(),
            id,
            _lock: lock,
        })
    }

    /// What fake GPU UUIDs are derived from: unique per agent, not per name.
    pub fn gpu_seed(&self) -> String {
        format!("{}-{}", self.name, &self.id[..8.min(self.id.len())])
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_or_create_id(path: &Path) -> Result<String, IdentityError> {
    match std::fs::read_to_string(path) {
        Ok(t) if valid_id(t.trim()) => return Ok(t.trim().to_string()),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "agent id file is damaged; making a new id");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path)(e)),
    }
    let id = crate::secret::random_hex(16);
    // Written whole, then renamed: a crash leaves the old file or the new one.
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(format!("{id}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(id)
}

fn valid_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_kept_and_held_by_one_agent_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::at(d.path());
        let a = Identity::take(&home, "ws").unwrap();
        assert!(valid_id(&a.id));
        let again = Identity::take(&home, "ws").unwrap_err();
        assert!(again.to_string().contains("--agent-name"), "{again}");
        assert!(
            again
                .to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{again}"
        );
        let other = Identity::take(&home, "ws2").unwrap();
        assert_ne!(other.id, a.id);
        let id = a.id.clone();
        drop(a);
        assert_eq!(Identity::take(&home, "ws").unwrap().id, id);
    }
}
