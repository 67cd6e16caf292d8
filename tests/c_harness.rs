//! Drives the C side from `cargo test`: checks that the committed header is
//! what cbindgen generates from `src/ffi/mod.rs`, compiles it as C11 and C++17,
//! and builds and runs the C test programs against the static library that
//! this same `cargo test` built.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn generate_header() -> String {
    let config = cbindgen::Config::from_file(root().join("include/cbindgen.toml"))
        .expect("read include/cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root().join("src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen failed on src/ffi/mod.rs");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("header is UTF-8")
}

#[test]
fn header_is_current() {
    let path = root().join("include/ggml-bitnet-stfma.h");
    let fresh = generate_header();
    if std::env::var_os("BITNET_STFMA_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write header");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/ggml-bitnet-stfma.h is stale: regenerate it with \
         `BITNET_STFMA_BLESS=1 cargo test --test c_harness header_is_current` and commit it"
    );
}

/// The directory of this profile's build outputs (`target/<profile>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

fn out_dir() -> PathBuf {
    let d = profile_dir().join("c_tests");
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn header_compiles_as_c11_and_cxx17() {
    let inc = root().join("include");
    let src = out_dir().join("header_only.c");
    std::fs::write(&src, "#include \"ggml-bitnet-stfma.h\"\nint main(void) { return GGML_BITNET_STFMA_THRESHOLD == 1024 ? 0 : 1; }\n").unwrap();
    run(Command::new(cc())
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-fsyntax-only",
            "-I",
        ])
        .arg(&inc)
        .arg(&src));
    run(Command::new(cxx())
        .args([
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-fsyntax-only",
            "-I",
        ])
        .arg(&inc)
        .arg(root().join("c_tests/test_header.cpp")));
    // The threshold can be overridden before inclusion.
    run(Command::new(cc())
        .args([
            "-std=c11",
            "-fsyntax-only",
            "-DGGML_BITNET_STFMA_THRESHOLD=4096",
            "-I",
        ])
        .arg(&inc)
        .arg(&src));
}

/// Builds the static library with the same cargo and profile as this test,
/// in a target directory of its own (`cargo test` builds only the rlib),
/// once per test process.
fn static_lib() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let target_dir = profile_dir()
            .parent()
            .expect("target dir")
            .join("c-harness");
        let release = !cfg!(debug_assertions);
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--lib", "--manifest-path"])
            .arg(root().join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target_dir);
        if release {
            cmd.arg("--release");
        }
        run(&mut cmd);
        let lib = target_dir
            .join(if release { "release" } else { "debug" })
            .join("libbitnet_stfma.a");
        assert!(lib.exists(), "{} was not built", lib.display());
        lib
    })
    .clone()
}

fn build_and_run(name: &str) {
    build_and_run_args(name, &[]);
}

fn build_and_run_args(name: &str, args: &[&str]) {
    let lib = static_lib();
    let exe = out_dir().join(name);
    run(Command::new(cc())
        .args([
            "-std=c11",
            "-O1",
            "-g",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-I",
        ])
        .arg(root().join("include"))
        .arg(root().join(format!("c_tests/{name}.c")))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe));
    let text = run(Command::new(&exe)
        .args(args)
        .env_remove("BITNET_STFMA_KERNEL"));
    println!("{text}");
    assert!(text.contains(", 0 failed"), "{name}: {text}");
}

#[test]
fn c_abi_tests() {
    build_and_run("test_abi");
}

#[test]
fn c_thread_tests() {
    build_and_run("test_threads");
}

#[test]
fn c_stress_8_threads_100k_ops() {
    build_and_run_args("test_stress", &["100000"]);
}
