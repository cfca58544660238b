// The app's own commands are listed so capabilities can allow them one by one
// (`capabilities/main.json`, and those `lib.rs` adds at runtime for the local
// daemon's and a lab daemon's exact origins).
fn main() {
    tauri_build::try_build(tauri_build::Attributes::new().app_manifest(
        tauri_build::AppManifest::new().commands(&[
            "pick_folder",
            "connection",
            "use_local",
            "test_lab",
            "connect_lab",
            "forget_lab",
            "set_close_to_tray",
            "set_autostart",
            "lend_gpus",
        ]),
    ))
    .expect("tauri build step");
}
