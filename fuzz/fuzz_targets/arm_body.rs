//! `cargo +nightly fuzz run arm_body`: see kmsroute::fuzzing::arm_body for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kmsroute::fuzzing::arm_body(data);
});
