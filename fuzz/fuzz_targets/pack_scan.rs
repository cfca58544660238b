//! Pack files arrive from remotes: scanning must never panic, and every
//! object it reports must lie inside the input and match its id.
#![no_main]
use libfuzzer_sys::fuzz_target;
use trainyard::store::scan_pack;

fuzz_target!(|data: &[u8]| {
    if let Ok(objects) = scan_pack(data) {
        for (id, offset, len) in objects {
            let bytes = &data[offset as usize..(offset + len) as usize];
            assert_eq!(blake3::hash(bytes).as_bytes(), &id.0);
        }
    }
});
