//! libFuzzer target over the safetensors reader and the checkpoint
//! converter (see the README's "Fuzzing").
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = bitnet_stfma::fuzz::safetensors_checkpoint(data);
});
