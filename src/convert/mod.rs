//! `bitnet convert`: a Hugging Face checkpoint directory to GGUF, in Rust.
pub mod vocab;
