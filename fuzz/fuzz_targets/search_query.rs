//! `cargo +nightly fuzz run search_query`: see natter_server::fuzzing::search_query.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| natter_server::fuzzing::search_query(data));
