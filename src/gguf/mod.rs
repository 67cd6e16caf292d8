//! A pure-Rust GGUF (v2, v3) reader over a memory map, and a writer.
//!
//! Everything the header claims is checked against the file before it is
//! used: string and array lengths against the bytes left, counts against the
//! smallest size their entries could have, tensor shapes for overflow, tensor
//! data for alignment, bounds and overlap. A bad file gives an error naming
//! the key, tensor or offset at fault, never a panic, an out-of-bounds read or
//! an allocation sized by a lie.
//!
//! GGML type ids 36..=39 mean I2_S, I8_S, TL1 and TL2 only in the bitnet.cpp
//! fork; upstream reuses some of them. The reader trusts them only when
//! `general.architecture` names a BitNet architecture.

mod reader;
mod types;
mod writer;

pub use reader::Gguf;
pub use types::{Array, GgmlType, TensorInfo, Value};
pub use writer::{write, TensorSpec};

impl Gguf {
    /// A GGUF in memory holding only `metadata` (no tensors), read back as
    /// a file would be: a vocabulary for the tokenizer, for instance.
    pub fn from_metadata(metadata: &[(String, Value)]) -> crate::error::Result<Gguf> {
        let mut bytes = Vec::new();
        write(&mut bytes, metadata, &[], DEFAULT_ALIGNMENT, &mut |_, _| {
            Ok(())
        })?;
        Gguf::from_bytes(bytes)
    }
}

pub const MAGIC: u32 = 0x4655_4747; // "GGUF" little-endian
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let md = vec![
            (
                "general.architecture".to_string(),
                Value::String("bitnet-b1.58".into()),
            ),
            ("general.alignment".to_string(), Value::U32(64)),
            ("a.u8".into(), Value::U8(7)),
            ("a.i64".into(), Value::I64(-5)),
            ("a.f64".into(), Value::F64(0.25)),
            ("a.bool".into(), Value::Bool(true)),
            (
                "a.strs".into(),
                Value::Array(Array::String(vec!["x".into(), "".into(), "ü".into()])),
            ),
            (
                "a.nested".into(),
                Value::Array(Array::Array(vec![
                    Array::I32(vec![1, -2]),
                    Array::F32(vec![0.5]),
                    Array::String(vec![]),
                ])),
            ),
        ];
        let tensors = vec![
            TensorSpec {
                name: "w".into(),
                dims: vec![256, 2],
                ty: GgmlType::I2S,
            },
            TensorSpec {
                name: "n".into(),
                dims: vec![3],
                ty: GgmlType::F32,
            },
            TensorSpec {
                name: "e".into(),
                dims: vec![4, 2],
                ty: GgmlType::F16,
            },
        ];
        let mut out = Vec::new();
        write(&mut out, &md, &tensors, 64, &mut |i, w| {
            let size = tensors[i].ty.tensor_bytes(&tensors[i].dims).unwrap();
            w.write_all(&vec![i as u8 + 1; size as usize])
        })
        .unwrap();
        out
    }

    #[test]
    fn round_trip() {
        let g = Gguf::from_bytes(sample()).unwrap();
        assert_eq!((g.version, g.alignment), (3, 64));
        assert_eq!(g.architecture(), Some("bitnet-b1.58"));
        assert_eq!(g.get("a.u8").and_then(Value::as_u64), Some(7));
        assert_eq!(g.get("a.i64"), Some(&Value::I64(-5)));
        assert_eq!(g.get("a.f64").and_then(Value::as_f64), Some(0.25));
        assert_eq!(g.get("a.bool"), Some(&Value::Bool(true)));
        let strs = g.get("a.strs").and_then(Value::as_array).unwrap();
        assert_eq!(
            strs,
            &Array::String(vec!["x".into(), "".into(), "ü".into()])
        );
        let nested = g.get("a.nested").and_then(Value::as_array).unwrap();
        assert_eq!(nested.len(), 3);
        let (w, data) = g.tensor("w").unwrap();
        assert_eq!((w.ty, w.size, data.len()), (GgmlType::I2S, 128 + 32, 160));
        assert!(data.iter().all(|&b| b == 1));
        let (n, data) = g.tensor("n").unwrap();
        assert_eq!((n.offset % 64, data.len()), (0, 12));
        assert!(data.iter().all(|&b| b == 2));
        assert_eq!(g.tensor("e").unwrap().1, &[3u8; 16][..]);
        assert!(g.tensor("missing").is_err());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = sample();
        for len in 0..full.len() {
            let r = Gguf::from_bytes(full[..len].to_vec());
            assert!(r.is_err(), "truncated to {len} bytes parsed");
        }
    }

    fn err(bytes: Vec<u8>) -> String {
        Gguf::from_bytes(bytes).unwrap_err().message
    }

    #[test]
    fn lies_are_rejected_without_allocating() {
        let mut b = sample();
        b[0] = b'X';
        assert!(err(b).contains("not a GGUF"));
        let mut b = sample();
        b[4] = 1;
        assert!(err(b).contains("version 1"));
        let mut b = sample();
        b[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(err(b).contains("tensor count"));
        let mut b = sample();
        b[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(err(b).contains("metadata count"));
        // An array count of 2^60 strings.
        let mut b = sample();
        let key = b"a.strs";
        let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4 + 4;
        b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(err(b).contains("a.strs"), "{}", err(sample()));
    }

    #[test]
    fn bad_tensors_are_named() {
        // Unknown type id on tensor 'n'.
        let mut b = sample();
        let at = b
            .windows(9)
            .rposition(|w| w == [1, 0, 0, 0, 0, 0, 0, 0, b'n'])
            .unwrap()
            + 9; // after the name
        b[at + 4 + 8..at + 4 + 8 + 4].copy_from_slice(&99u32.to_le_bytes());
        assert!(err(b).contains("'n' has unknown type 99"));
        // Offset past the end.
        let mut b = sample();
        b[at + 4 + 8 + 4..at + 4 + 8 + 4 + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(err(b).contains("'n'"));
        // Misaligned offset.
        let mut b = sample();
        b[at + 4 + 8 + 4..at + 4 + 8 + 4 + 8].copy_from_slice(&3u64.to_le_bytes());
        assert!(err(b).contains("not aligned"));
        // Overlap: 'n' at the offset of 'w'.
        let mut b = sample();
        b[at + 4 + 8 + 4..at + 4 + 8 + 4 + 8].copy_from_slice(&0u64.to_le_bytes());
        assert!(err(b).contains("overlap"));
        // Type 39 (TL2 in bitnet.cpp files, MXFP4 upstream): refused, naming I2_S.
        let mut b = sample();
        b[at + 4 + 8..at + 4 + 8 + 4].copy_from_slice(&39u32.to_le_bytes());
        let e = err(b);
        assert!(e.contains("TL2") && e.contains("I2_S"), "{e}");
    }

    #[test]
    fn fixtures_parse_when_present() {
        let dir = crate::testdata_dir();
        let Some(dir) = dir else {
            eprintln!("SKIPPED fixtures_parse_when_present: ../shared/testdata not found");
            return;
        };
        let g = Gguf::open(dir.join("bitnet-tiny.gguf")).unwrap();
        assert_eq!(g.architecture(), Some("bitnet-b1.58"));
        assert!(g.tensors().iter().any(|t| t.ty == GgmlType::I2S));
        let v = Gguf::open(dir.join("llama3-vocab.gguf")).unwrap();
        assert_eq!(
            v.get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
                .map(Array::len),
            Some(128256)
        );
    }
}
