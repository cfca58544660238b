//! Names and references: `NAME`, `NAME@REF` where REF is a tag, `latest`, or
//! a version id prefix of at least 4 hex digits. `NAME@` (an empty REF) is
//! refused.

use std::fmt;
use std::str::FromStr;

use super::{Error, Result};

/// A dataset name with an optional reference (`NAME` means `NAME@latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRef {
    /// The dataset's name.
    pub dataset: String,
    /// A tag, `latest`, or a version id prefix; `None` means latest.
    pub reference: Option<String>,
}

impl DatasetRef {
    /// The environment variable a job finds this input's directory in:
    /// `TRAINYARD_INPUT_` and the dataset's name upper-cased, anything but
    /// letters and digits as `_` (on an agent and on a SLURM node alike).
    pub fn env_var(&self) -> String {
        let name: String = self
            .dataset
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("TRAINYARD_INPUT_{name}")
    }
}

impl fmt::Display for DatasetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Some(r) => write!(f, "{}@{}", self.dataset, r),
            None => f.write_str(&self.dataset),
        }
    }
}

impl FromStr for DatasetRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (name, reference) = match s.split_once('@') {
            Some((n, r)) if !r.is_empty() => (n, Some(r.to_string())),
            // `ds@` is a typo or a shell variable that expanded to nothing
            // (`ds@$TAG`): refuse it rather than silently take the latest.
            Some(_) => return Err(Error::EmptyRef(s.to_string())),
            None => (s, None),
        };
        validate_dataset_name(name)?;
        Ok(DatasetRef {
            dataset: name.to_string(),
            reference,
        })
    }
}

fn check_name(what: &'static str, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 128 {
        Some("it is longer than 128 characters")
    } else if name.starts_with(['.', '-']) {
        Some("it may not start with '.' or '-'")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("use letters, digits, '.', '_' and '-' only")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            what,
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Check a dataset name: 1–128 of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn validate_dataset_name(name: &str) -> Result<()> {
    check_name("dataset", name)
}

/// Check a tag name: as dataset names, not `latest` (which always means
/// the newest version), and not 64 hex digits (which always mean that
/// version: a tag so named would shadow it, e.g. one copied from a remote).
pub fn validate_tag_name(name: &str) -> Result<()> {
    check_name("tag", name)?;
    if name == "latest" {
        return Err(Error::InvalidName {
            what: "tag",
            name: name.into(),
            reason: "'latest' always means the newest version",
        });
    }
    if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidName {
            what: "tag",
            name: name.into(),
            reason: "64 hex digits always mean the version with that id",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let r: DatasetRef = "imagenet@v1".parse().unwrap();
        assert_eq!(r.dataset, "imagenet");
        assert_eq!(r.reference.as_deref(), Some("v1"));
        assert_eq!("x".parse::<DatasetRef>().unwrap().reference, None);
        assert!("../x".parse::<DatasetRef>().is_err());
        assert!("a b".parse::<DatasetRef>().is_err());
        assert!(validate_tag_name("latest").is_err());
        assert!(validate_tag_name(&"Ab".repeat(32)).is_err());
        assert!(validate_tag_name("2024").is_ok());
    }

    #[test]
    fn an_empty_ref_is_refused_not_taken_as_latest() {
        let e = "ds@".parse::<DatasetRef>().unwrap_err();
        assert!(matches!(&e, Error::EmptyRef(s) if s == "ds@"), "{e:?}");
        assert_eq!(
            e.to_string(),
            "empty ref after '@' in ds@: use NAME or NAME@REF"
        );
        assert!("@".parse::<DatasetRef>().is_err());
    }
}
