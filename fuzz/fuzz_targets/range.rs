//! `cargo +nightly fuzz run range`: see natter_server::fuzzing::range.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| natter_server::fuzzing::range(data));
