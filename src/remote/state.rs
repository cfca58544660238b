//! How each configured remote's versions of a dataset compare with the
//! local ones: [`SyncState`], computed here for every front end (the
//! daemon's API shows it to the UI). A remote that cannot be opened or read
//! is reported in its entry, never fatal to the others.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use super::{sync, Remote, Remotes, Result};
use crate::store::ObjectId;
use crate::Home;

/// How a remote's versions of a dataset compare with the local versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// The remote holds no version of the dataset.
    Empty,
    /// Every local version is on the remote and nothing else is.
    InSync,
    /// Some local versions are not pushed; none is only on the remote.
    Behind,
    /// Some versions are only on the remote; every local one is pushed.
    Ahead,
    /// Both: local versions not pushed and versions only on the remote.
    Diverged,
}

/// One remote's versions and tags of a dataset, compared with the local
/// versions. Its `Display` says how many local versions are pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSync {
    /// The versions on the remote, as it lists them.
    pub versions: Vec<ObjectId>,
    /// The remote's tags: name → version id.
    pub tags: BTreeMap<String, String>,
    /// How they compare.
    pub state: SyncState,
    /// Local versions.
    pub local: usize,
    /// Local versions on the remote.
    pub pushed: usize,
    /// Versions on the remote that are not local.
    pub only_remote: usize,
}

impl DatasetSync {
    /// Compare the remote's `versions` (and `tags`) with the `local` ones.
    pub fn compare(
        local: &HashSet<ObjectId>,
        versions: Vec<ObjectId>,
        tags: BTreeMap<String, String>,
    ) -> DatasetSync {
        let on_remote: HashSet<&ObjectId> = versions.iter().collect();
        let missing = local.iter().filter(|v| !on_remote.contains(v)).count();
        let only_remote = versions.iter().filter(|v| !local.contains(*v)).count();
        let state = match (missing, only_remote, versions.is_empty()) {
            (_, _, true) => SyncState::Empty,
            (0, 0, _) => SyncState::InSync,
            (_, 0, _) => SyncState::Behind,
            (0, _, _) => SyncState::Ahead,
            _ => SyncState::Diverged,
        };
        DatasetSync {
            versions,
            tags,
            state,
            local: local.len(),
            pushed: local.len() - missing,
            only_remote,
        }
    }
}

impl fmt::Display for DatasetSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {} local versions pushed", self.pushed, self.local)?;
        if self.only_remote > 0 {
            write!(f, "; {} only on the remote", self.only_remote)?;
        }
        Ok(())
    }
}

/// A configured remote and what it holds of a dataset, or why that could
/// not be read.
#[derive(Debug)]
pub struct RemoteSync {
    /// The remote's name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// The comparison, or the error that stopped it.
    pub sync: Result<DatasetSync>,
}

/// Each remote configured in `home`, by name, with its versions and tags of
/// `dataset` compared with the `local` version ids. Only a remotes file
/// that cannot be read is an error.
pub async fn dataset_on_remotes(
    home: &Home,
    dataset: &str,
    local: &HashSet<ObjectId>,
) -> Result<Vec<RemoteSync>> {
    let remotes = Remotes::load_home(home)?;
    let mut out = Vec::new();
    for (name, config) in remotes.list() {
        let sync = match Remote::open(name, config) {
            Ok(r) => sync::dataset_state(&r, home, dataset)
                .await
                .map(|(versions, tags)| DatasetSync::compare(local, versions, tags)),
            Err(e) => Err(e),
        };
        out.push(RemoteSync {
            name: name.clone(),
            url: config.url.clone(),
            sync,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::of_bytes(&[n])
    }

    #[test]
    fn states_and_the_detail_line() {
        let local: HashSet<ObjectId> = [id(1), id(2)].into_iter().collect();
        let cmp = |remote: &[u8]| {
            DatasetSync::compare(
                &local,
                remote.iter().map(|n| id(*n)).collect(),
                BTreeMap::new(),
            )
        };
        assert_eq!(cmp(&[]).state, SyncState::Empty);
        assert_eq!(cmp(&[]).to_string(), "0 of 2 local versions pushed");
        assert_eq!(cmp(&[2, 1]).state, SyncState::InSync);
        assert_eq!(cmp(&[1]).state, SyncState::Behind);
        assert_eq!(cmp(&[1, 2, 3]).state, SyncState::Ahead);
        assert_eq!(
            cmp(&[1, 2, 3]).to_string(),
            "2 of 2 local versions pushed; 1 only on the remote"
        );
        let d = cmp(&[1, 3, 4]);
        assert_eq!(d.state, SyncState::Diverged);
        assert_eq!((d.local, d.pushed, d.only_remote), (2, 1, 2));
        assert_eq!(
            d.to_string(),
            "1 of 2 local versions pushed; 2 only on the remote"
        );
    }
}
