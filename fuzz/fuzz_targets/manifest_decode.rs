//! Manifests arrive from remotes and other machines: decoding must never
//! panic, and whatever it accepts must re-encode to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use trainyard::store::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(Manifest::encode(&m.entries), data);
    }
});
