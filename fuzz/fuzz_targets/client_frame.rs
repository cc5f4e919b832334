//! `cargo +nightly fuzz run client_frame`: see natter_server::fuzzing::client_frame.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| natter_server::fuzzing::client_frame(data));
