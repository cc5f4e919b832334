//! `cargo +nightly fuzz run tus_headers`: see natter_server::fuzzing::tus_headers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| natter_server::fuzzing::tus_headers(data));
