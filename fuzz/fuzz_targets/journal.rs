//! Fuzz target `journal`: see `deckhand::fuzzing::journal`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| deckhand::fuzzing::journal(data));
