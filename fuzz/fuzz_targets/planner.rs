//! `cargo +nightly fuzz run planner`: see kmsroute::fuzzing::planner for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kmsroute::fuzzing::planner(data);
});
