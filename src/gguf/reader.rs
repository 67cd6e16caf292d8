//! The reader: a GGUF file memory-mapped (or held in memory), its header
//! parsed and every claim checked against the bytes before use.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use super::types::{vt, Array, GgmlType, TensorInfo, Value};
use super::{DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};
use crate::error::{Error, Result};

enum Storage {
    Map(memmap2::Mmap),
    Bytes(Vec<u8>),
}

/// An open GGUF file.
pub struct Gguf {
    storage: Storage,
    pub version: u32,
    pub alignment: u64,
    /// Byte offset of the data section.
    pub data_offset: u64,
    metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for Gguf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked little-endian cursor.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            return Err(Error::format(format!(
                "{} at offset {} needs {n} bytes but the file has {left} left",
                what(),
                self.pos
            )));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn left(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
}

fn elem_size(ty: u32) -> Option<u64> {
    Some(match ty {
        vt::U8 | vt::I8 | vt::BOOL => 1,
        vt::U16 | vt::I16 => 2,
        vt::U32 | vt::I32 | vt::F32 => 4,
        vt::U64 | vt::I64 | vt::F64 => 8,
        vt::STRING => 8, // at least its length
        vt::ARRAY => 12, // at least its type and count
        _ => return None,
    })
}

fn read_array(c: &mut Cursor, key: &str, depth: u32) -> Result<Array> {
    let what = || format!("array of key '{key}'");
    if depth > 8 {
        return Err(Error::format(format!(
            "key '{key}': arrays nested deeper than 8"
        )));
    }
    let ty = c.u32(&what)?;
    let n = c.u64(&what)?;
    let es = elem_size(ty)
        .ok_or_else(|| Error::format(format!("key '{key}': unknown array element type {ty}")))?;
    // Never allocate by a lie: every element takes at least `es` bytes.
    if n.checked_mul(es).is_none_or(|b| b > c.left()) {
        return Err(Error::format(format!(
            "key '{key}': array claims {n} elements but only {} bytes are left",
            c.left()
        )));
    }
    let n = n as usize;
    macro_rules! prim {
        ($v:ident, $t:ty, $k:expr) => {{
            let raw = c.take((n * $k) as u64, &what)?;
            Array::$v(
                raw.chunks_exact($k)
                    .map(|b| <$t>::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            )
        }};
    }
    Ok(match ty {
        vt::U8 => Array::U8(c.take(n as u64, &what)?.to_vec()),
        vt::I8 => Array::I8(c.take(n as u64, &what)?.iter().map(|&b| b as i8).collect()),
        vt::BOOL => Array::Bool(c.take(n as u64, &what)?.iter().map(|&b| b != 0).collect()),
        vt::U16 => prim!(U16, u16, 2),
        vt::I16 => prim!(I16, i16, 2),
        vt::U32 => prim!(U32, u32, 4),
        vt::I32 => prim!(I32, i32, 4),
        vt::F32 => prim!(F32, f32, 4),
        vt::U64 => prim!(U64, u64, 8),
        vt::I64 => prim!(I64, i64, 8),
        vt::F64 => prim!(F64, f64, 8),
        vt::STRING => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(c.string(&|| format!("string {i} of key '{key}'"))?);
            }
            Array::String(v)
        }
        vt::ARRAY => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(c, key, depth + 1)?);
            }
            Array::Array(v)
        }
        _ => unreachable!("checked by elem_size"),
    })
}

fn read_value(c: &mut Cursor, key: &str, ty: u32) -> Result<Value> {
    let what = || format!("value of key '{key}'");
    Ok(match ty {
        vt::U8 => Value::U8(c.take(1, &what)?[0]),
        vt::I8 => Value::I8(c.take(1, &what)?[0] as i8),
        vt::BOOL => Value::Bool(c.take(1, &what)?[0] != 0),
        vt::U16 => Value::U16(u16::from_le_bytes(c.take(2, &what)?.try_into().unwrap())),
        vt::I16 => Value::I16(i16::from_le_bytes(c.take(2, &what)?.try_into().unwrap())),
        vt::U32 => Value::U32(c.u32(&what)?),
        vt::I32 => Value::I32(c.u32(&what)? as i32),
        vt::F32 => Value::F32(f32::from_bits(c.u32(&what)?)),
        vt::U64 => Value::U64(c.u64(&what)?),
        vt::I64 => Value::I64(c.u64(&what)? as i64),
        vt::F64 => Value::F64(f64::from_bits(c.u64(&what)?)),
        vt::STRING => Value::String(c.string(&what)?),
        vt::ARRAY => Value::Array(read_array(c, key, 0)?),
        _ => {
            return Err(Error::format(format!(
                "key '{key}': unknown value type {ty}"
            )))
        }
    })
}

impl Gguf {
    /// Memory-maps and parses a GGUF file.
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf> {
        let path = path.as_ref();
        let file = std::fs::File::open(path)
            .map_err(|e| Error::new(crate::ErrorKind::Io, format!("{}: {e}", path.display())))?;
        let len = file.metadata()?.len();
        if len == 0 {
            return Err(Error::format(format!(
                "{}: empty file, not a GGUF",
                path.display()
            )));
        }
        // SAFETY: the map is read-only; like every mmap reader we rely on the
        // file not being truncated while it is open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| {
            Error::new(
                crate::ErrorKind::Io,
                format!("{}: mmap: {e}", path.display()),
            )
        })?;
        Self::parse(Storage::Map(map))
            .map_err(|e| Error::new(e.kind, format!("{}: {}", path.display(), e.message)))
    }

    /// Parses a GGUF image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Gguf> {
        Self::parse(Storage::Bytes(bytes))
    }

    fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Map(m) => m,
            Storage::Bytes(b) => b,
        }
    }

    fn parse(storage: Storage) -> Result<Gguf> {
        let buf: &[u8] = match &storage {
            Storage::Map(m) => m,
            Storage::Bytes(b) => b,
        };
        let mut c = Cursor { buf, pos: 0 };
        let magic = c
            .u32(&|| "magic".into())
            .map_err(|_| Error::format("not a GGUF file (too short)"))?;
        if magic != MAGIC {
            return Err(Error::format(format!(
                "not a GGUF file (magic {magic:#010x})"
            )));
        }
        let version = c.u32(&|| "version".into())?;
        if !(2..=3).contains(&version) {
            return Err(Error::format(format!(
                "unsupported GGUF version {version} (2 and 3 are supported)"
            )));
        }
        let n_tensors = c.u64(&|| "tensor count".into())?;
        let n_kv = c.u64(&|| "metadata count".into())?;
        // Each KV takes at least 8+0+4+1 bytes, each tensor info at least 8+4+8+4+8.
        if n_kv > c.left() / 13 {
            return Err(Error::format(format!(
                "metadata count {n_kv} cannot fit in the file"
            )));
        }
        if n_tensors > c.left() / 32 {
            return Err(Error::format(format!(
                "tensor count {n_tensors} cannot fit in the file"
            )));
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut index = HashMap::new();
        for i in 0..n_kv {
            let key = c.string(&|| format!("key of metadata entry {i}"))?;
            let ty = c.u32(&|| format!("type of key '{key}'"))?;
            let v = read_value(&mut c, &key, ty)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err(Error::format(format!("duplicate metadata key '{key}'")));
            }
            metadata.push((key, v));
        }
        let alignment = match index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => metadata[i]
                .1
                .as_u64()
                .filter(|a| a.is_power_of_two() && *a <= 1 << 20)
                .ok_or_else(|| {
                    Error::format(format!(
                        "general.alignment {:?} is not a power of two",
                        metadata[i].1
                    ))
                })?,
        };
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::new();
        for i in 0..n_tensors {
            let name = c.string(&|| format!("name of tensor {i}"))?;
            let what = || format!("header of tensor '{name}'");
            let nd = c.u32(&what)? as usize;
            if nd == 0 || nd > MAX_DIMS {
                return Err(Error::format(format!(
                    "tensor '{name}' has {nd} dimensions (1..={MAX_DIMS} allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(nd);
            for _ in 0..nd {
                let d = c.u64(&what)?;
                if d == 0 || d > i64::MAX as u64 {
                    return Err(Error::format(format!("tensor '{name}' has dimension {d}")));
                }
                dims.push(d);
            }
            let id = c.u32(&what)?;
            let ty = GgmlType::from_id(id)
                .ok_or_else(|| Error::format(format!("tensor '{name}' has unknown type {id}")))?;
            let offset = c.u64(&what)?;
            let size = ty.tensor_bytes(&dims).map_err(|e| {
                Error::format(format!("tensor '{name}' ({ty}, dims {dims:?}): {e}"))
            })?;
            if offset % alignment != 0 {
                return Err(Error::format(format!(
                    "tensor '{name}' offset {offset} is not aligned to {alignment}"
                )));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(Error::format(format!("duplicate tensor name '{name}'")));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                size,
            });
        }
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let data_len = (buf.len() as u64).saturating_sub(data_offset);
        let mut spans: Vec<(u64, u64, usize)> = Vec::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            let end = t.offset.checked_add(t.size).filter(|&e| e <= data_len).ok_or_else(|| {
                Error::format(format!(
                    "tensor '{}' data [{}, +{}) runs past the end of the file (data section has {data_len} bytes)",
                    t.name, t.offset, t.size
                ))
            })?;
            spans.push((t.offset, end, i));
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(Error::format(format!(
                    "tensors '{}' and '{}' overlap in the file",
                    tensors[w[0].2].name, tensors[w[1].2].name
                )));
            }
        }
        Ok(Gguf {
            storage,
            version,
            alignment,
            data_offset,
            metadata,
            index,
            tensors,
            tensor_index,
        })
    }

    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
    /// A tensor's bytes, borrowed from the map (zero copy).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + t.offset) as usize;
        &self.bytes()[start..start + t.size as usize]
    }
    /// Looks a tensor up by name and returns its info and bytes.
    pub fn tensor(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let t = self
            .tensor_info(name)
            .ok_or_else(|| Error::format(format!("tensor '{name}' is missing")))?;
        Ok((t, self.tensor_data(t)))
    }
}
