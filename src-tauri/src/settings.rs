//! The desktop app's own settings (`desktop.toml` in its config directory:
//! the remembered lab address, whether the window shows it, close to tray)
//! and its XDG autostart entry. Never a token: those are in `tokens`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tokens::write_private;

/// The settings file's name in the config directory.
pub const FILE_NAME: &str = "desktop.toml";

/// The desktop app's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The remembered lab daemon (`http://host:port`); its token is in the
    /// token store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lab: Option<String>,
    /// Whether the window shows the lab daemon (else the local one); the
    /// choice is kept across launches.
    #[serde(default)]
    pub show_lab: bool,
    /// Closing the window hides it in the tray; the local daemon and its
    /// jobs keep running until Quit.
    #[serde(default)]
    pub close_to_tray: bool,
    /// This computer's GPUs are lent to the remembered lab (its agent
    /// serves the lab daemon); lent again at launch.
    #[serde(default)]
    pub lend_gpus: bool,
}

/// The settings file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// IO.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not valid settings.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        source: toml::de::Error,
    },
}

impl Settings {
    /// Read `path`; a missing file is the defaults.
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|source| SettingsError::Parse {
                path: path.to_path_buf(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(source) => Err(SettingsError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Write `path` atomically (0600: it names the lab the user works with).
    pub fn save(&self, path: &Path) -> Result<(), SettingsError> {
        let text = toml::to_string(self).expect("the settings serialize");
        write_private(path, &text).map_err(|source| SettingsError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The XDG autostart entry: `$XDG_CONFIG_HOME/autostart/` (or
/// `~/.config/autostart/`) + `trainyard-desktop.desktop`.
pub fn autostart_path() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("autostart").join("trainyard-desktop.desktop"))
}

/// The argument the autostart entry passes: start with the window hidden
/// in the tray.
pub const HIDDEN_ARG: &str = "--hidden";

/// The autostart entry's text for the app at `exe`.
pub fn autostart_entry(exe: &Path) -> String {
    format!(
        "[Desktop Entry]\nType=Application\nName=Trainyard\nComment=Datasets, GPU jobs and experiment tracking\nExec={} {HIDDEN_ARG}\nIcon=trainyard\nTerminal=false\nX-GNOME-Autostart-enabled=true\n",
        exec_quote(&exe.to_string_lossy())
    )
}

/// Quote one `Exec=` argument as the Desktop Entry specification says:
/// in double quotes when it holds a reserved character, with `"`, `` ` ``,
/// `$` and `\` escaped by a backslash; and `%` doubled, as field codes
/// are expanded in quoted arguments too. (A backslash of the quoting is
/// itself escaped once more by the string escaping of the key's value.)
fn exec_quote(arg: &str) -> String {
    let arg = arg.replace('%', "%%");
    let reserved = |c: char| " \t\n\"'\\><~|&;$*?#()`".contains(c);
    if !arg.contains(reserved) {
        return arg;
    }
    let mut out = String::from("\"");
    for c in arg.chars() {
        if matches!(c, '"' | '`' | '$' | '\\') {
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Whether the autostart entry exists at `path`.
pub fn autostart_on(path: &Path) -> bool {
    path.is_file()
}

/// Write or remove the autostart entry at `path` for the app at `exe`.
pub fn set_autostart(path: &Path, exe: &Path, on: bool) -> std::io::Result<()> {
    if on {
        write_private(path, &autostart_entry(exe))
    } else {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_a_bad_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg").join(FILE_NAME);
        assert_eq!(Settings::load(&path).unwrap(), Settings::default());
        let s = Settings {
            lab: Some("http://lab:7171".into()),
            show_lab: true,
            close_to_tray: true,
            lend_gpus: true,
        };
        s.save(&path).unwrap();
        assert_eq!(Settings::load(&path).unwrap(), s);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("token"), "{text}");

        std::fs::write(&path, "lab = \"http://lab:7171\"\ntoken = \"x\"\n").unwrap();
        let e = Settings::load(&path).unwrap_err().to_string();
        assert!(e.contains(FILE_NAME) && e.contains("token"), "{e}");
    }

    #[test]
    fn the_autostart_entry_starts_the_app_hidden_and_toggles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join("autostart")
            .join("trainyard-desktop.desktop");
        let exe = Path::new("/opt/Train yard/trainyard-desktop");
        assert!(!autostart_on(&path));
        set_autostart(&path, exe, true).unwrap();
        assert!(autostart_on(&path));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("[Desktop Entry]\n"), "{text}");
        assert!(
            text.contains("Exec=\"/opt/Train yard/trainyard-desktop\" --hidden\n"),
            "{text}"
        );
        set_autostart(&path, exe, false).unwrap();
        assert!(!autostart_on(&path));
        set_autostart(&path, exe, false).unwrap();
    }

    #[test]
    fn exec_arguments_are_quoted_as_the_spec_says() {
        assert_eq!(
            exec_quote("/usr/bin/trainyard-desktop"),
            "/usr/bin/trainyard-desktop"
        );
        assert_eq!(exec_quote("/a b/x"), "\"/a b/x\"");
        assert_eq!(exec_quote("/a$b/x"), "\"/a\\\\$b/x\"");
        assert_eq!(exec_quote("/100%/x"), "/100%%/x");
    }
}
