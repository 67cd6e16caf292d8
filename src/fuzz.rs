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

/// Writes `data` as the `model.safetensors` of a small fixed checkpoint
/// (the synthetic `micro` shape's, made once by
/// [`crate::synthetic::write_checkpoint`], whose weights file is the seed)
/// and converts it in memory. Every outcome must be `Ok` or a clean `Err`;
/// returns whether the file converted and loaded.
pub fn safetensors_checkpoint(data: &[u8]) -> bool {
    use std::sync::OnceLock;
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("bitnet-fuzz-ckpt-{}", std::process::id()));
        crate::synthetic::write_checkpoint(
            &dir,
            crate::synthetic::Shape::MICRO,
            None,
            false,
            1,
            &mut |_, _| {},
        )
        .expect("the fuzz target's checkpoint");
        dir
    });
    if std::fs::write(dir.join("model.safetensors"), data).is_err() {
        return false;
    }
    let Ok(plan) = crate::convert::Conversion::plan(dir, Default::default()) else {
        return false;
    };
    let Ok(g) = plan.to_gguf() else {
        return false;
    };
    Model::from_gguf(Arc::new(g)).is_ok()
}
