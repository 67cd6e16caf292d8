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

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::path::Path;

use crate::error::{Error, Result};

pub const MAGIC: u32 = 0x4655_4747; // "GGUF" little-endian
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;

/// Architectures whose files use the bitnet.cpp fork's type ids.
pub const BITNET_ARCHS: [&str; 3] = ["bitnet-25", "bitnet-b1.58", "bitnet"];

/// Tensor element types this crate knows the size of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
    TQ1_0,
    TQ2_0,
    /// bitnet.cpp fork: 2-bit ternary, 128-weight blocks, scale trailer.
    I2S,
    /// bitnet.cpp fork: int8 activations.
    I8S,
    /// bitnet.cpp fork: lookup-table formats (only valid with the build that made them).
    TL1,
    TL2,
}

impl GgmlType {
    /// The type for an id, given whether the file is a BitNet file.
    pub fn from_id(id: u32, bitnet: bool) -> Option<GgmlType> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            36 if bitnet => I2S,
            37 if bitnet => I8S,
            38 if bitnet => TL1,
            39 if bitnet => TL2,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2K => 10,
            Q3K => 11,
            Q4K => 12,
            Q5K => 13,
            Q6K => 14,
            Q8K => 15,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            BF16 => 30,
            TQ1_0 => 34,
            TQ2_0 => 35,
            I2S => 36,
            I8S => 37,
            TL1 => 38,
            TL2 => 39,
        }
    }

    /// (elements per block, bytes per block) for the regular types.
    fn block(self) -> Option<(u64, u64)> {
        use GgmlType::*;
        Some(match self {
            F32 | I32 => (1, 4),
            F16 | BF16 | I16 => (1, 2),
            I8 | I8S => (1, 1),
            I64 | F64 => (1, 8),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            Q2K => (256, 84),
            Q3K => (256, 110),
            Q4K => (256, 144),
            Q5K => (256, 176),
            Q6K => (256, 210),
            Q8K => (256, 292),
            TQ1_0 => (256, 54),
            TQ2_0 => (256, 66),
            I2S | TL1 | TL2 => return None,
        })
    }

    /// Bytes of a tensor of this type with these dims, or why not.
    pub fn tensor_bytes(self, dims: &[u64]) -> std::result::Result<u64, String> {
        let n = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or("element count overflows")?;
        match self {
            // bitnet.cpp: ne0*ne1/4 bytes of codes plus a 32-byte scale trailer.
            GgmlType::I2S => {
                if dims.first().is_none_or(|&d| d % 128 != 0) {
                    return Err(format!(
                        "I2_S row length {} is not a multiple of 128",
                        dims.first().copied().unwrap_or(0)
                    ));
                }
                Ok(n / 4 + 32)
            }
            GgmlType::TL1 | GgmlType::TL2 => Err(
                "TL1/TL2 tensors only work with the bitnet.cpp build that generated them".into(),
            ),
            t => {
                let (bs, ts) = t.block().expect("regular type");
                if dims.first().is_none_or(|&d| d % bs != 0) {
                    return Err(format!(
                        "row length is not a multiple of the {t} block size {bs}"
                    ));
                }
                (n / bs)
                    .checked_mul(ts)
                    .ok_or_else(|| "byte size overflows".into())
            }
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            GgmlType::I2S => "I2_S".to_string(),
            GgmlType::I8S => "I8_S".to_string(),
            GgmlType::Q2K => "Q2_K".into(),
            GgmlType::Q3K => "Q3_K".into(),
            GgmlType::Q4K => "Q4_K".into(),
            GgmlType::Q5K => "Q5_K".into(),
            GgmlType::Q6K => "Q6_K".into(),
            GgmlType::Q8K => "Q8_K".into(),
            t => format!("{t:?}"),
        };
        f.write_str(&s)
    }
}

/// GGUF metadata value type ids.
mod vt {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array, stored by element type.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Integer elements as i64 (None for non-integer arrays).
    pub fn as_i64s(&self) -> Option<Vec<i64>> {
        Some(match self {
            Array::U8(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I8(v) => v.iter().map(|&x| x as i64).collect(),
            Array::U16(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I16(v) => v.iter().map(|&x| x as i64).collect(),
            Array::U32(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I32(v) => v.iter().map(|&x| x as i64).collect(),
            Array::U64(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I64(v) => v.clone(),
            _ => return None,
        })
    }
}

impl Value {
    /// Any integer value as u64 (negative values give None).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// Any numeric value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64).or(match *self {
                Value::I8(v) => Some(v as f64),
                Value::I16(v) => Some(v as f64),
                Value::I32(v) => Some(v as f64),
                Value::I64(v) => Some(v as f64),
                _ => None,
            }),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's header entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

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
        let arch = index
            .get("general.architecture")
            .and_then(|&i| metadata[i].1.as_str());
        let bitnet = arch.is_some_and(|a| BITNET_ARCHS.contains(&a));
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
            let ty = GgmlType::from_id(id, bitnet).ok_or_else(|| {
                Error::format(if (36..=39).contains(&id) && !bitnet {
                    format!("tensor '{name}' has type {id}, which is only known in BitNet files (architecture {arch:?})")
                } else {
                    format!("tensor '{name}' has unknown type {id}")
                })
            })?;
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

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

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
        // Type 36 in a non-BitNet file.
        let mut b = sample();
        let a = b.windows(12).position(|w| w == b"bitnet-b1.58").unwrap();
        b[a..a + 12].copy_from_slice(b"llama-b1.58x");
        assert!(err(b).contains("only known in BitNet files"));
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
