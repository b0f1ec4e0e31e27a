//! Fuzz target `frame`: see `deckhand::fuzzing::frame`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| deckhand::fuzzing::frame(data));
