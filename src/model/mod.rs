//! The BitNet b1.58 model (bitnet.cpp's `build_bitnet_158` graph, as used by
//! BitNet-b1.58-2B-4T), in the plain style of llama2.c: a [`Config`] read
//! from the GGUF, the [`Model`] weights (ternary matrices repacked once into
//! the kernels' layout, the embedding borrowed from the map), and a
//! [`Session`] whose every buffer, f16 KV cache included, is allocated once.
//!
//! One file per concept: [`config`] (hyperparameters), [`weights`] (the
//! [`Model`]), [`head`] (the LM head, chosen at load), `kv_cache`, `attention`, `ops` (norms, RoPE) and
//! [`session`] (the forward pass as short steps).
//!
//! The arithmetic follows bitnet.cpp where it matters for matching logits:
//! activations quantized to int8 per token before each ternary matmul,
//! rmsnorm sums in f64, NEOX RoPE with ggml's iterated angle, and f16
//! rounding of the KV cache, of q before q·k, of the softmax weights before
//! they weight V, and of the final hidden state before the LM head.

pub mod config;
pub mod head;
pub mod session;
pub mod weights;

mod attention;
mod kv_cache;
mod ops;
#[cfg(test)]
mod tests;

pub use config::{Config, Family, ARCHITECTURES};
pub use head::{HeadKind, LmHead};
pub use session::{Segment, Session, Timings};
pub use weights::{LoadOptions, Model};
