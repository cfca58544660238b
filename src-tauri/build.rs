// The app's own commands are listed so capabilities can allow them one by one.
fn main() {
    tauri_build::try_build(
        tauri_build::Attributes::new()
            .app_manifest(tauri_build::AppManifest::new().commands(&["pick_folder"])),
    )
    .expect("tauri build step");
}
