//! The writer: GGUF v3, metadata first, tensor data streamed one tensor at a
//! time.

use std::io::{self, Write};

use super::types::{vt, Array, GgmlType, Value};
use super::MAGIC;
use crate::error::{Error, Result};

/// A tensor to write: its header and its byte size (data comes later).
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

/// Writes a GGUF v3 file: metadata, then tensor data produced one tensor at
/// a time by `fill(index, out)` (which must write exactly the tensor's size),
/// so a large model is streamed, never held in memory.
pub fn write(
    out: &mut dyn Write,
    metadata: &[(String, Value)],
    tensors: &[TensorSpec],
    alignment: u64,
    fill: &mut dyn FnMut(usize, &mut dyn Write) -> io::Result<()>,
) -> Result<()> {
    let mut head = Vec::new();
    head.extend_from_slice(&MAGIC.to_le_bytes());
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_string(&mut head, k);
        put_value(&mut head, v);
    }
    let mut offset = 0u64;
    let mut sizes = Vec::with_capacity(tensors.len());
    for t in tensors {
        let size =
            t.ty.tensor_bytes(&t.dims)
                .map_err(|e| Error::invalid(format!("tensor '{}': {e}", t.name)))?;
        put_string(&mut head, &t.name);
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&t.ty.id().to_le_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        sizes.push(size);
        offset = (offset + size).div_ceil(alignment) * alignment;
    }
    let pad = (head.len() as u64).div_ceil(alignment) * alignment - head.len() as u64;
    head.resize(head.len() + pad as usize, 0);
    out.write_all(&head)?;
    for (i, &size) in sizes.iter().enumerate() {
        let mut counter = CountingWriter {
            inner: &mut *out,
            n: 0,
        };
        fill(i, &mut counter)?;
        if counter.n != size {
            return Err(Error::invalid(format!(
                "tensor '{}': wrote {} bytes, its type and shape need {size}",
                tensors[i].name, counter.n
            )));
        }
        if i + 1 < sizes.len() {
            let pad = size.div_ceil(alignment) * alignment - size;
            out.write_all(&vec![0u8; pad as usize])?;
        }
    }
    Ok(())
}

struct CountingWriter<'a> {
    inner: &'a mut dyn Write,
    n: u64,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => vt::U8,
        Value::I8(_) => vt::I8,
        Value::U16(_) => vt::U16,
        Value::I16(_) => vt::I16,
        Value::U32(_) => vt::U32,
        Value::I32(_) => vt::I32,
        Value::F32(_) => vt::F32,
        Value::Bool(_) => vt::BOOL,
        Value::String(_) => vt::STRING,
        Value::Array(_) => vt::ARRAY,
        Value::U64(_) => vt::U64,
        Value::I64(_) => vt::I64,
        Value::F64(_) => vt::F64,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    out.extend_from_slice(&value_type(v).to_le_bytes());
    put_payload(out, v);
}

fn put_payload(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::Bool(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::String(s) => put_string(out, s),
        Value::Array(a) => put_array(out, a),
    }
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    macro_rules! prim {
        ($t:expr, $v:expr) => {{
            out.extend_from_slice(&$t.to_le_bytes());
            out.extend_from_slice(&($v.len() as u64).to_le_bytes());
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }};
    }
    match a {
        Array::U8(v) => prim!(vt::U8, v),
        Array::I8(v) => prim!(vt::I8, v),
        Array::Bool(v) => {
            out.extend_from_slice(&vt::BOOL.to_le_bytes());
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            out.extend(v.iter().map(|&b| b as u8));
        }
        Array::U16(v) => prim!(vt::U16, v),
        Array::I16(v) => prim!(vt::I16, v),
        Array::U32(v) => prim!(vt::U32, v),
        Array::I32(v) => prim!(vt::I32, v),
        Array::F32(v) => prim!(vt::F32, v),
        Array::U64(v) => prim!(vt::U64, v),
        Array::I64(v) => prim!(vt::I64, v),
        Array::F64(v) => prim!(vt::F64, v),
        Array::String(v) => {
            out.extend_from_slice(&vt::STRING.to_le_bytes());
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            for s in v {
                put_string(out, s);
            }
        }
        Array::Array(v) => {
            out.extend_from_slice(&vt::ARRAY.to_le_bytes());
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            for a in v {
                put_array(out, a);
            }
        }
    }
}
