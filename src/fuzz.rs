//! The body of the fuzz target, kept in the library so that regression
//! tests run exactly what the fuzzer ran.

use std::sync::Arc;

use crate::gguf::Gguf;
use crate::model::{Model, Session};

/// Parses `data` as a GGUF file and, if it is one, loads it as a model and
/// runs one token. Every outcome must be `Ok` or a clean `Err`: a panic,
/// hang or huge allocation is a bug.
pub fn gguf_and_model(data: &[u8]) {
    let Ok(g) = Gguf::from_bytes(data.to_vec()) else {
        return;
    };
    for t in g.tensors() {
        std::hint::black_box(g.tensor_data(t).len());
    }
    let Ok(model) = Model::from_gguf(Arc::new(g)) else {
        return;
    };
    let Ok(mut s) = Session::new(&model, 8, 2, 1) else {
        return;
    };
    let bos = model.tokenizer.bos.unwrap_or(0);
    let _ = s.forward(&[bos, bos]);
    let _ = model.tokenizer.encode("Hi <|eot_id|> there", true, true);
}
