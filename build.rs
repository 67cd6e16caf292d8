//! Build script: records the target triple for version and benchmark
//! reports. The kernels need no build-time configuration: they are chosen
//! at run time from the CPU's features, so a prebuilt library runs fast on
//! whatever machine it lands on.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=BITNET_STFMA_TARGET={target}");
}
