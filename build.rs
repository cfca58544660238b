// Rebuild when the embedded web UI changes (include_dir! alone does not
// tell cargo about files added to the directory).
fn main() {
    println!("cargo:rerun-if-changed=ui");
}
