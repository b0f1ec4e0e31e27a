//! Fuzz target `kubelet`: see `deckhand::fuzzing::kubelet`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| deckhand::fuzzing::kubelet(data));
