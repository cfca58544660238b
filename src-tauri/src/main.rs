// No console window on Windows release builds.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

/// Whether the messages locale is the POSIX one (`C`, `C.UTF-8`, `POSIX`, or
/// nothing set), as on many servers and CI machines.
fn posix_locale() -> bool {
    for var in ["LC_ALL", "LC_MESSAGES", "LANG"] {
        if let Ok(v) = std::env::var(var) {
            if !v.is_empty() {
                return v == "C" || v == "POSIX" || v.starts_with("C.");
            }
        }
    }
    true
}

fn main() {
    // WebKitGTK turns a POSIX locale into the language tag "C", which the
    // JavaScript Intl APIs reject (RangeError), breaking any page that
    // formats a number or date. Give the webview a real language instead.
    if posix_locale() {
        std::env::remove_var("LC_ALL");
        std::env::set_var("LANG", "en_US.UTF-8");
    }
    trainyard_desktop::run()
}
