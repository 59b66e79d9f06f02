//! whisper.cpp GGML model files (the legacy `ggml` container `models/convert-pt-to-ggml.py`
//! writes and `whisper_model_load` reads): reader and writer.
//!
//! Layout, little-endian, no padding: u32 magic `0x67676d6c`; eleven i32 hyper-parameters
//! (`n_vocab`, `n_audio_ctx`, `n_audio_state`, `n_audio_head`, `n_audio_layer`, `n_text_ctx`,
//! `n_text_state`, `n_text_head`, `n_text_layer`, `n_mels`, `ftype` = type + 1000 × quantisation
//! version); the mel filters (i32 `n_mel`, i32 `n_fft`, f32 values); the vocabulary (i32 count,
//! then per token u32 length and raw bytes: text tokens only, the special tokens are implied by
//! `n_vocab`); then tensors until the end of the file: i32 `n_dims`, i32 name length, i32 ggml
//! type, `n_dims` i32 extents innermost first, the name, the data. Names are openai's
//! (`encoder.blocks.0.attn.query.weight`). whisper.cpp's test files
//! (`for-tests-ggml-tiny.en.bin`) stop after the vocabulary: [`GgmlFile::open`] reads them too.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use half::f16;
use memmap2::Mmap;

use super::bytes::{Cursor, corrupt, f16s, f32s, io_error};
use super::source::{NamedTensor, OpenaiTensors};
use super::{Dims, Tokenizer};
use crate::error::ModelError;

pub const MAGIC: u32 = 0x6767_6d6c;
/// `GGML_QNT_VERSION`, multiplied by 1000 into the header's `ftype` of quantised files.
const QNT_VERSION: i32 = 2;
/// Values per quantisation block (all the block types read here).
const QK: usize = 32;

/// Whether `path` is a file starting with the GGML magic.
pub fn is_ggml(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| u32::from_le_bytes(magic) == MAGIC)
}

/// Element types of ggml tensors that Whisper files use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl GgmlType {
    fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            _ => return None,
        })
    }
    fn code(self) -> i32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
        }
    }
    /// The header's `ftype` (ggml's `GGML_FTYPE_*`) of a file whose big tensors are this type.
    fn ftype(self) -> i32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 7,
            Self::Q5_0 => 8,
            Self::Q5_1 => 9,
        }
    }
    /// (values per block, bytes per block).
    fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 => (1, 2),
            Self::Q4_0 => (QK, 18),
            Self::Q4_1 => (QK, 20),
            Self::Q5_0 => (QK, 22),
            Self::Q5_1 => (QK, 24),
            Self::Q8_0 => (QK, 34),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q8_0 => "q8_0",
        }
    }
}

impl std::str::FromStr for GgmlType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "f32" => Self::F32,
            "f16" => Self::F16,
            "q8_0" => Self::Q8_0,
            "q5_0" => Self::Q5_0,
            "q5_1" => Self::Q5_1,
            "q4_0" => Self::Q4_0,
            "q4_1" => Self::Q4_1,
            _ => {
                return Err(format!(
                    "unknown GGML type `{s}` (known: f32, f16, q8_0, q5_0, q5_1, q4_0, q4_1)"
                ));
            }
        })
    }
}

/// What precedes the tensors: hyper-parameters, mel filters, vocabulary.
#[derive(Debug, Clone)]
pub struct GgmlHeader {
    pub dims: Dims,
    /// The header's `ftype` without the quantisation version.
    pub ftype: i32,
    /// Quantisation version (`ftype / 1000`).
    pub qnt_version: i32,
    /// `[n_mel][n_fft]` filters as stored (the engine computes its own, the same ones).
    pub mel_filters: Vec<f32>,
    pub n_fft: usize,
    /// Text tokens, raw bytes, in id order.
    pub vocab: Vec<Vec<u8>>,
}

#[derive(Debug, Clone)]
struct Tensor {
    shape: Vec<usize>,
    ty: GgmlType,
    offset: usize,
    len: usize,
}

/// A parsed, memory-mapped GGML file.
pub struct GgmlFile {
    path: PathBuf,
    map: Mmap,
    pub header: GgmlHeader,
    tensors: HashMap<String, Tensor>,
    /// Tensor names in file order.
    pub names: Vec<String>,
}

fn read_header(cur: &mut Cursor) -> Result<GgmlHeader, ModelError> {
    let path = cur.path;
    let magic = cur.take(4, "magic")?;
    let magic = u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]);
    if magic != MAGIC {
        return Err(corrupt(
            path,
            format!(
                "bad magic {magic:#010x}, a whisper.cpp GGML file starts with {MAGIC:#010x} (\"lmgg\")"
            ),
        ));
    }
    let mut hp = [0usize; 10];
    let names = [
        "n_vocab",
        "n_audio_ctx",
        "n_audio_state",
        "n_audio_head",
        "n_audio_layer",
        "n_text_ctx",
        "n_text_state",
        "n_text_head",
        "n_text_layer",
        "n_mels",
    ];
    for (v, name) in hp.iter_mut().zip(names) {
        *v = cur.count(name, 1 << 20)?;
        if *v == 0 {
            return Err(corrupt(path, format!("hyper-parameter {name} is 0")));
        }
    }
    let [
        n_vocab,
        n_audio_ctx,
        n_audio_state,
        n_audio_head,
        n_audio_layer,
        n_text_ctx,
        n_text_state,
        n_text_head,
        n_text_layer,
        n_mels,
    ] = hp;
    for (state, head, what) in [
        (n_audio_state, n_audio_head, "n_audio_state"),
        (n_text_state, n_text_head, "n_text_state"),
    ] {
        if !state.is_multiple_of(head) {
            return Err(corrupt(
                path,
                format!("{what} {state} is not a multiple of its {head} heads"),
            ));
        }
    }
    let ftype_raw = cur.i32("ftype")?;
    let dims = Dims {
        n_mels,
        n_audio_ctx,
        n_audio_state,
        n_audio_head,
        n_audio_layer,
        n_vocab,
        n_text_ctx,
        n_text_state,
        n_text_head,
        n_text_layer,
    };
    let n_mel = cur.count("mel filter count", 1024)?;
    let n_fft = cur.count("mel filter length", 1 << 16)?;
    let filters = cur.take(n_mel * n_fft * 4, "mel filters")?;
    let mel_filters = f32s(filters);
    let n_tokens = cur.count("vocabulary size", 1 << 20)?;
    // Each token takes at least its 4-byte length: the file bounds the count.
    let mut vocab = Vec::with_capacity(n_tokens.min(cur.remaining() / 4));
    for i in 0..n_tokens {
        let len = cur.count("token length", 1 << 16)?;
        vocab.push(cur.take(len, &format!("token {i} of {n_tokens}"))?.to_vec());
    }
    Ok(GgmlHeader {
        dims,
        ftype: ftype_raw % 1000,
        qnt_version: ftype_raw / 1000,
        mel_filters,
        n_fft,
        vocab,
    })
}

impl GgmlFile {
    /// Reads a GGML file: header, mel filters, vocabulary and the index of its tensors (none in
    /// whisper.cpp's test files). Every extent is checked against the file size.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        // SAFETY: read-only map; all reads are bounds-checked (see ct2.rs).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io_error(path, e))?;
        let mut cur = Cursor::new(&map, path);
        let header = read_header(&mut cur)?;
        let mut tensors = HashMap::new();
        let mut names = Vec::new();
        while cur.pos < map.len() {
            let n_dims = cur.count("tensor rank", 4)?;
            let name_len = cur.count("tensor name length", 4096)?;
            let code = cur.i32("tensor type")?;
            let mut ne = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                ne.push(cur.count("tensor extent", 1 << 30)?);
            }
            let name_bytes = cur.take(name_len, "tensor name")?;
            let name = String::from_utf8(name_bytes.to_vec()).map_err(|_| {
                corrupt(
                    path,
                    format!("tensor name at offset {} is not UTF-8", cur.pos - name_len),
                )
            })?;
            let ty = GgmlType::from_code(code).ok_or_else(|| ModelError::Unsupported {
                path: path.to_path_buf(),
                what: format!("ggml type {code} of tensor `{name}` (supported: f32, f16, q4_0, q4_1, q5_0, q5_1, q8_0)"),
            })?;
            let shape: Vec<usize> = ne.iter().rev().copied().collect();
            let numel = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| corrupt(path, format!("tensor `{name}` is too large")))?;
            let (per_block, block_bytes) = ty.block();
            let row = ne.first().copied().unwrap_or(1);
            if !row.is_multiple_of(per_block) {
                return Err(corrupt(
                    path,
                    format!(
                        "tensor `{name}` of type {} has rows of {row} values, not a multiple of {per_block}",
                        ty.name()
                    ),
                ));
            }
            let len = (numel / per_block)
                .checked_mul(block_bytes)
                .ok_or_else(|| corrupt(path, format!("tensor `{name}` is too large")))?;
            let offset = cur.pos;
            cur.take(
                len,
                &format!("data of tensor `{name}` ({shape:?}, {})", ty.name()),
            )?;
            if tensors
                .insert(
                    name.clone(),
                    Tensor {
                        shape,
                        ty,
                        offset,
                        len,
                    },
                )
                .is_some()
            {
                return Err(corrupt(path, format!("tensor `{name}` appears twice")));
            }
            names.push(name);
        }
        Ok(Self {
            path: path.to_path_buf(),
            map,
            header,
            tensors,
            names,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored type of a tensor.
    pub fn tensor_type(&self, name: &str) -> Option<GgmlType> {
        self.tensors.get(name).map(|t| t.ty)
    }

    /// The embedded vocabulary as a [`Tokenizer`] for this model's `n_vocab`.
    pub fn tokenizer(&self) -> Result<Tokenizer, ModelError> {
        Tokenizer::from_token_bytes(&self.path, &self.header.vocab, self.header.dims.n_vocab)
    }
}

impl OpenaiTensors for GgmlFile {
    fn path(&self) -> &Path {
        &self.path
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.shape.clone())
    }
    fn read(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingWeight {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        let out = dequantize(t.ty, &self.map[t.offset..t.offset + t.len]);
        super::bytes::release(&self.map, t.offset, t.len);
        Ok(out)
    }
}

/// `bytes` of type `ty` as f32 values.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    let (_, block) = ty.block();
    match ty {
        GgmlType::F32 => f32s(bytes),
        GgmlType::F16 => f16s(bytes),
        GgmlType::Q8_0 => bytes
            .chunks_exact(block)
            .flat_map(|b| {
                let d = half(b);
                b[2..].iter().map(move |&q| f32::from(q as i8) * d)
            })
            .collect(),
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let mut out = Vec::with_capacity(bytes.len() / block * QK);
            for b in bytes.chunks_exact(block) {
                let d = half(b);
                // Q4_1/Q5_1 store a minimum and unsigned codes; Q4_0/Q5_0 centre the codes.
                let (min, offset, rest) = match ty {
                    GgmlType::Q4_1 | GgmlType::Q5_1 => (half(&b[2..]), 0i32, &b[4..]),
                    GgmlType::Q5_0 => (0.0, 16, &b[2..]),
                    _ => (0.0, 8, &b[2..]),
                };
                let five_bits = matches!(ty, GgmlType::Q5_0 | GgmlType::Q5_1);
                let (qh, qs) = if five_bits {
                    (
                        u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]),
                        &rest[4..],
                    )
                } else {
                    (0, rest)
                };
                let mut values = [0f32; QK];
                for j in 0..QK / 2 {
                    let hi0 = ((qh >> j) & 1) << 4;
                    let hi1 = ((qh >> (j + QK / 2)) & 1) << 4;
                    let q0 = (u32::from(qs[j] & 0x0f) | hi0) as i32 - offset;
                    let q1 = (u32::from(qs[j] >> 4) | hi1) as i32 - offset;
                    values[j] = q0 as f32 * d + min;
                    values[j + QK / 2] = q1 as f32 * d + min;
                }
                out.extend_from_slice(&values);
            }
            out
        }
    }
}

/// `values` (a multiple of 32 for the block types) encoded as `ty`, as ggml's reference
/// quantisers do.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    let put_half =
        |out: &mut Vec<u8>, v: f32| out.extend_from_slice(&f16::from_f32(v).to_le_bytes());
    match ty {
        GgmlType::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => values.iter().for_each(|&v| put_half(&mut out, v)),
        GgmlType::Q8_0 => {
            for x in values.chunks_exact(QK) {
                let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                put_half(&mut out, d);
                out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let five_bits = matches!(ty, GgmlType::Q5_0 | GgmlType::Q5_1);
            let levels = if five_bits { 32 } else { 16 };
            let with_min = matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1);
            for x in values.chunks_exact(QK) {
                let (d, min, bias) = if with_min {
                    let lo = x.iter().fold(f32::MAX, |a, &v| a.min(v));
                    let hi = x.iter().fold(f32::MIN, |a, &v| a.max(v));
                    ((hi - lo) / (levels - 1) as f32, lo, 0.5)
                } else {
                    // The value of largest magnitude maps to code 0, keeping its sign.
                    let max = x
                        .iter()
                        .fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                    (max / -(levels as f32 / 2.0), 0.0, levels as f32 / 2.0 + 0.5)
                };
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let code = |v: f32| (((v - min) * id + bias) as i8).clamp(0, levels - 1) as u32;
                put_half(&mut out, d);
                if with_min {
                    put_half(&mut out, min);
                }
                let mut qh = 0u32;
                let mut qs = [0u8; QK / 2];
                for j in 0..QK / 2 {
                    let (c0, c1) = (code(x[j]), code(x[j + QK / 2]));
                    qs[j] = (c0 & 0x0f) as u8 | (((c1 & 0x0f) as u8) << 4);
                    qh |= ((c0 >> 4) & 1) << j;
                    qh |= ((c1 >> 4) & 1) << (j + QK / 2);
                }
                if five_bits {
                    out.extend_from_slice(&qh.to_le_bytes());
                }
                out.extend_from_slice(&qs);
            }
        }
    }
    out
}

/// The type whisper.cpp gives `name` in a file of big-tensor type `wtype`: 1-D tensors, the
/// conv biases and the positional embeddings f32; the 3-D conv weights f16 (f32 in an f32
/// file); other 2-D tensors `wtype` when their rows fit its blocks, else f16.
fn tensor_type(name: &str, shape: &[usize], wtype: GgmlType) -> GgmlType {
    if wtype == GgmlType::F32
        || shape.len() < 2
        || name.ends_with("conv1.bias")
        || name.ends_with("conv2.bias")
        || name.ends_with("positional_embedding")
    {
        return GgmlType::F32;
    }
    let row = shape.last().copied().unwrap_or(1);
    if shape.len() == 2 && row.is_multiple_of(wtype.block().0) {
        wtype
    } else {
        GgmlType::F16
    }
}

/// Writes a GGML file as whisper.cpp's converter (and, for quantised types, its `quantize`
/// tool) would: `tensors` by openai name, `vocab` the text tokens' bytes.
pub fn write(
    path: &Path,
    dims: &Dims,
    vocab: &[Vec<u8>],
    tensors: &[NamedTensor],
    wtype: GgmlType,
) -> Result<(), ModelError> {
    let io = |e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut out = std::io::BufWriter::new(File::create(path).map_err(io)?);
    let mut buf = Vec::new();
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    let ftype = match wtype {
        GgmlType::F32 | GgmlType::F16 => wtype.ftype(),
        _ => wtype.ftype() + 1000 * QNT_VERSION,
    };
    for v in [
        dims.n_vocab,
        dims.n_audio_ctx,
        dims.n_audio_state,
        dims.n_audio_head,
        dims.n_audio_layer,
        dims.n_text_ctx,
        dims.n_text_state,
        dims.n_text_head,
        dims.n_text_layer,
        dims.n_mels,
    ] {
        buf.extend_from_slice(&(v as i32).to_le_bytes());
    }
    buf.extend_from_slice(&ftype.to_le_bytes());
    let filters = crate::audio::mel::mel_filterbank(dims.n_mels);
    let n_fft = filters.first().map_or(0, Vec::len);
    buf.extend_from_slice(&(dims.n_mels as i32).to_le_bytes());
    buf.extend_from_slice(&(n_fft as i32).to_le_bytes());
    for v in filters.iter().flatten() {
        buf.extend_from_slice(&(*v as f32).to_le_bytes());
    }
    buf.extend_from_slice(&(vocab.len() as i32).to_le_bytes());
    for token in vocab {
        buf.extend_from_slice(&(token.len() as u32).to_le_bytes());
        buf.extend_from_slice(token);
    }
    out.write_all(&buf).map_err(io)?;
    for (name, shape, data) in tensors {
        // whisper.cpp keeps the conv biases as [d, 1].
        let shape: Vec<usize> = if name.ends_with("conv1.bias") || name.ends_with("conv2.bias") {
            vec![shape[0], 1]
        } else {
            shape.clone()
        };
        let ty = tensor_type(name, &shape, wtype);
        let mut head = Vec::new();
        head.extend_from_slice(&(shape.len() as i32).to_le_bytes());
        head.extend_from_slice(&(name.len() as i32).to_le_bytes());
        head.extend_from_slice(&ty.code().to_le_bytes());
        for &d in shape.iter().rev() {
            head.extend_from_slice(&(d as i32).to_le_bytes());
        }
        head.extend_from_slice(name.as_bytes());
        out.write_all(&head).map_err(io)?;
        out.write_all(&quantize(ty, data)).map_err(io)?;
    }
    out.flush().map_err(io)
}
