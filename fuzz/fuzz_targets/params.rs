//! Fuzz target `params`: see `deckhand::fuzzing::params`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| deckhand::fuzzing::params(data));
