//! `.wandb` run files come from other machines and killed runs: reading
//! must never panic on any bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = trainyard::wandb::read_bytes(data, 0);
});
