//! libFuzzer target over the GGUF reader and the model loader (build with
//! `--features fuzz` and coverage flags; see the README's "Fuzzing").
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bitnet_stfma::fuzz::gguf_and_model(data);
});
