//! Fuzz target `frequency`: see `deckhand::fuzzing::frequency`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| deckhand::fuzzing::frequency(data));
