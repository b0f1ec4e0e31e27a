//! Fuzz target `signature`: see `deckhand::fuzzing::signature`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| deckhand::fuzzing::signature(data));
