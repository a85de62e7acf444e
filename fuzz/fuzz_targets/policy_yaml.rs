//! `cargo +nightly fuzz run policy_yaml`: see kmsroute::fuzzing::policy_yaml for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kmsroute::fuzzing::policy_yaml(data);
});
