//! The LM head: `logits = E h` for the final hidden states, chosen once at
//! load ([`LmHead::load`]) from the file's matrix and the [`LoadOptions`],
//! and computed in one place ([`LmHead::logits`]) for one or several
//! columns, so decoding one sequence is the batched path with one column.
//!
//! - [`HeadKind::File`]: the file's own matrix (`output.weight`, or
//!   `token_embd` when tied) read in place, F32/F16/Q8_0/Q6_K, its input
//!   converted as ggml converts it (the logits bitnet.cpp computes).
//! - [`HeadKind::Q6K`]: an F16/F32/Q8_0 head requantized to Q6_K at load as
//!   `llama-quantize --token-embedding-type q6_k` does; a tied one serves the
//!   embedding lookups too, so the model is that file.
//! - [`HeadKind::Q8`]: an 8-bit copy with a scale per row (not a ggml type;
//!   logits differ slightly from bitnet.cpp's).

use half::f16;

use super::LoadOptions;
use crate::embedding::{quantize_q6k_matrix, Activations, Matrix, Q8Head};
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, Gguf, TensorInfo};
use crate::threadpool::ThreadPool;

/// The LM head of a loaded model.
pub struct LmHead {
    /// The file's head tensor (`output.weight`, or `token_embd.weight`).
    file: TensorInfo,
    /// Whether that tensor is the token embedding.
    tied: bool,
    rows: usize,
    dim: usize,
    kind: HeadKind,
}

/// Which matrix the head computes with.
pub enum HeadKind {
    /// The file's matrix, read in place.
    File,
    /// A Q6_K copy made at load.
    Q6K(Vec<u8>),
    /// An 8-bit copy made at load.
    Q8(Q8Head),
}

/// The head's scratch, grown on first use and then reused.
pub struct HeadScratch {
    /// The hidden states converted for the matrix's type.
    acts: Activations,
    /// The 8-bit head's quantized hidden states.
    xq: Vec<i8>,
    /// Row-major products of several columns before they are transposed.
    products: Vec<f32>,
}

impl HeadScratch {
    pub fn new(dim: usize) -> HeadScratch {
        HeadScratch {
            acts: Activations::new(dim),
            xq: vec![0; dim],
            products: Vec::new(),
        }
    }
}

impl LmHead {
    /// The head over `file` (a `rows × dim` tensor of `g`, already checked
    /// by the loader), in the form `opts` asks for.
    pub(super) fn load(
        g: &Gguf,
        file: TensorInfo,
        tied: bool,
        rows: usize,
        dim: usize,
        opts: LoadOptions,
    ) -> Result<LmHead> {
        if opts.q8_head && opts.q6k_head {
            return Err(Error::invalid("choose one of the 8-bit and the Q6_K head"));
        }
        let mut head = LmHead {
            file,
            tied,
            rows,
            dim,
            kind: HeadKind::File,
        };
        if opts.q8_head {
            let q = Q8Head::from_matrix(&head.matrix(g), &ThreadPool::new(0))?;
            head.kind = HeadKind::Q8(q);
        } else if opts.q6k_head && head.file.ty != GgmlType::Q6K {
            let q = quantize_q6k_matrix(&head.matrix(g), &ThreadPool::new(0))?;
            head.kind = HeadKind::Q6K(q);
        }
        Ok(head)
    }

    pub fn kind(&self) -> &HeadKind {
        &self.kind
    }

    /// Whether the head is the token embedding.
    pub fn is_tied(&self) -> bool {
        self.tied
    }

    /// The type of the head tensor in the file.
    pub fn file_type(&self) -> GgmlType {
        self.file.ty
    }

    /// The matrix the head reads, in the file or a Q6_K copy (the 8-bit
    /// head's source matrix for [`HeadKind::Q8`]). For a tied head this is
    /// the embedding table too.
    pub fn matrix<'a>(&'a self, g: &'a Gguf) -> Matrix<'a> {
        let (ty, data) = match &self.kind {
            HeadKind::Q6K(q) => (GgmlType::Q6K, &q[..]),
            _ => (self.file.ty, g.tensor_data(&self.file)),
        };
        Matrix {
            ty,
            rows: self.rows,
            dim: self.dim,
            data,
        }
    }

    /// Bytes the head reads per decoded token.
    pub fn bytes(&self, g: &Gguf) -> usize {
        match &self.kind {
            HeadKind::Q8(h) => h.bytes(),
            _ => self.matrix(g).data.len(),
        }
    }

    /// Logits of the `n` hidden states in `hidden` (`n × dim`, back to
    /// back) into `out` (`n × rows`), each row of the head read once for all
    /// columns; every column's result is the one it gets alone. `hidden` is
    /// converted in place where the head's arithmetic wants it (f16
    /// rounding before the 8-bit head, as before an F16 one).
    pub fn logits(
        &self,
        g: &Gguf,
        hidden: &mut [f32],
        n: usize,
        scratch: &mut HeadScratch,
        out: &mut [f32],
        pool: &ThreadPool,
    ) {
        match &self.kind {
            HeadKind::Q8(h) => {
                for v in hidden.iter_mut() {
                    *v = f16::from_f32(*v).to_f32();
                }
                h.matmul(hidden, n, &mut scratch.xq, &mut scratch.products, out, pool)
            }
            _ => self.matrix(g).matmul(
                hidden,
                n,
                &mut scratch.acts,
                &mut scratch.products,
                out,
                pool,
            ),
        }
    }
}
