//! `cargo +nightly fuzz run mls_framing`: see natter_server::fuzzing::mls_framing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| natter_server::fuzzing::mls_framing(data));
