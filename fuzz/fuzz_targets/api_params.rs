//! Fuzz target `api_params`: see `deckhand::fuzzing::api_params`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| deckhand::fuzzing::api_params(data));
