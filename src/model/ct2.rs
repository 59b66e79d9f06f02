//! CTranslate2 model directory reader: `model.bin` (binary versions 1–6), `config.json`.
//!
//! `model.bin` is memory-mapped and parsed with bounds checks on every read; each weight is
//! converted once to f32 when the engine's weights are built.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use super::Dims;
use super::bytes::{Cursor, bf16s, corrupt, f16s, f32s, io_error};
use crate::error::ModelError;

/// Element type of a stored variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl DType {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => DType::F32,
            1 => DType::I8,
            2 => DType::I16,
            3 => DType::I32,
            4 => DType::F16,
            5 => DType::BF16,
            _ => return None,
        })
    }
    fn size(self) -> usize {
        match self {
            DType::I8 => 1,
            DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
        }
    }
    fn from_item_size(size: u8) -> Option<Self> {
        // Binary versions < 4 store only an item size: 4 = f32, 2 = f16, 1 = i8.
        Some(match size {
            4 => DType::F32,
            2 => DType::F16,
            1 => DType::I8,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
struct Variable {
    shape: Vec<usize>,
    dtype: DType,
    offset: usize,
    len: usize,
}

/// A parsed, memory-mapped `model.bin`.
pub struct Ct2File {
    path: PathBuf,
    map: Mmap,
    vars: HashMap<String, Variable>,
    pub spec_name: String,
    pub binary_version: u32,
}

impl Ct2File {
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        // SAFETY: the map is read-only; a file truncated underneath us would be a user error
        // outside our control (as with any mmap reader), and all reads are bounds-checked.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io_error(path, e))?;
        let mut cur = Cursor::new(&map, path);
        let binary_version = cur.u32("binary version")?;
        if binary_version == 0 || binary_version > 6 {
            return Err(ModelError::Unsupported {
                path: path.to_path_buf(),
                what: format!("CTranslate2 binary version {binary_version} (supported: 1–6)"),
            });
        }
        let mut spec_name = String::new();
        if binary_version >= 2 {
            spec_name = cur.string("spec name")?;
            let _spec_revision = cur.u32("spec revision")?;
        }
        let count = cur.u32("variable count")? as usize;
        if count > 100_000 {
            return Err(corrupt(path, format!("implausible variable count {count}")));
        }
        // Each variable's record takes at least 12 bytes: the file bounds the count.
        let mut vars = HashMap::with_capacity(count.min(cur.remaining() / 12));
        for index in 0..count {
            let name = cur.string("variable name")?;
            let rank = cur.u8("rank")? as usize;
            if rank > 8 {
                return Err(corrupt(path, format!("variable `{name}` has rank {rank}")));
            }
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(cur.u32("dimension")? as usize);
            }
            let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let (dtype, len) = if binary_version >= 4 {
                let code = cur.u8("dtype")?;
                let dtype = DType::from_code(code).ok_or_else(|| {
                    corrupt(
                        path,
                        format!("variable `{name}` has unknown dtype code {code}"),
                    )
                })?;
                (dtype, cur.u32("byte count")? as usize)
            } else {
                let item = cur.u8("item size")?;
                let dtype = DType::from_item_size(item).ok_or_else(|| {
                    corrupt(path, format!("variable `{name}` has item size {item}"))
                })?;
                let count = cur.u32("element count")? as usize;
                (dtype, count.saturating_mul(item as usize))
            };
            let expected = numel.and_then(|n| n.checked_mul(dtype.size()));
            if expected != Some(len) {
                return Err(corrupt(
                    path,
                    format!(
                        "variable #{index} `{name}` of shape {shape:?} and type {dtype:?} stores {len} bytes"
                    ),
                ));
            }
            let offset = cur.pos;
            cur.take(len, &format!("data of `{name}`"))?;
            vars.insert(
                name,
                Variable {
                    shape,
                    dtype,
                    offset,
                    len,
                },
            );
        }
        if binary_version >= 3 {
            let aliases = cur.u32("alias count")? as usize;
            if aliases > 100_000 {
                return Err(corrupt(path, format!("implausible alias count {aliases}")));
            }
            for _ in 0..aliases {
                let alias = cur.string("alias name")?;
                let target = cur.string("alias target")?;
                let var = vars.get(&target).cloned().ok_or_else(|| {
                    corrupt(
                        path,
                        format!("alias `{alias}` points to missing `{target}`"),
                    )
                })?;
                vars.insert(alias, var);
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            map,
            vars,
            spec_name,
            binary_version,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn contains(&self, name: &str) -> bool {
        self.vars.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.vars.get(name).map(|v| v.shape.as_slice())
    }

    /// Names of all variables (aliases included).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    /// A scalar integer (e.g. `encoder/num_heads`), if present.
    pub fn scalar_int(&self, name: &str) -> Option<i64> {
        let v = self.vars.get(name)?;
        if !v.shape.is_empty() {
            return None;
        }
        let b = &self.map[v.offset..v.offset + v.len];
        Some(match v.dtype {
            DType::I8 => b[0] as i8 as i64,
            DType::I16 => i16::from_le_bytes([b[0], b[1]]) as i64,
            DType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            DType::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32() as i64,
            DType::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f32() as i64,
        })
    }

    /// A weight as f32, checked against the expected shape ([`check`](Self::check)). int8
    /// weights are dequantised with their per-row `<name>_scale` (w = q / scale).
    pub fn tensor(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, ModelError> {
        self.check(name, expected)?;
        let Some(v) = self.vars.get(name) else {
            unreachable!("`check` found `{name}`")
        };
        let bytes = &self.map[v.offset..v.offset + v.len];
        let out: Vec<f32> = match v.dtype {
            DType::F32 => f32s(bytes),
            DType::F16 => f16s(bytes),
            DType::BF16 => bf16s(bytes),
            DType::I8 => {
                let rows = expected.first().copied().unwrap_or(1).max(1);
                let row_len = v.len / rows;
                let scales = self.tensor(&format!("{name}_scale"), &[rows])?;
                bytes
                    .chunks_exact(row_len.max(1))
                    .zip(&scales)
                    .flat_map(|(row, &scale)| row.iter().map(move |&q| q as i8 as f32 / scale))
                    .collect()
            }
            // `check` refuses them.
            DType::I16 | DType::I32 => unreachable!("`check` refuses integer weights"),
        };
        super::bytes::release(&self.map, v.offset, v.len);
        if let Some(at) = super::bytes::first_non_finite(&out) {
            let count = out.iter().filter(|x| !x.is_finite()).count();
            return Err(corrupt(
                &self.path,
                format!(
                    "weight `{name}` holds {count} non-finite value{} (NaN or infinity; the first, {}, at index {at})",
                    if count == 1 { "" } else { "s" },
                    out[at]
                ),
            ));
        }
        Ok(out)
    }

    /// What [`tensor`](Self::tensor) checks (presence, shape, a convertible type, the scale of
    /// an int8 weight), without converting the data.
    pub fn check(&self, name: &str, expected: &[usize]) -> Result<(), ModelError> {
        let v = self
            .vars
            .get(name)
            .ok_or_else(|| ModelError::MissingWeight {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        if v.shape != expected {
            return Err(ModelError::BadShape {
                path: self.path.clone(),
                name: name.to_string(),
                found: v.shape.clone(),
                expected: expected.to_vec(),
            });
        }
        match v.dtype {
            DType::F32 | DType::F16 | DType::BF16 => Ok(()),
            DType::I8 => {
                let rows = expected.first().copied().unwrap_or(1).max(1);
                let scale_name = format!("{name}_scale");
                self.check(&scale_name, &[rows]).map_err(|e| match e {
                    ModelError::MissingWeight { .. } => corrupt(
                        &self.path,
                        format!("int8 weight `{name}` has no per-row scale `{scale_name}`"),
                    ),
                    other => other,
                })
            }
            DType::I16 | DType::I32 => Err(ModelError::Unsupported {
                path: self.path.clone(),
                what: format!("integer type {:?} for weight `{name}`", v.dtype),
            }),
        }
    }
}

/// The parts of `config.json` the engine uses.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct Config {
    #[serde(default)]
    pub alignment_heads: Vec<(usize, usize)>,
    #[serde(default)]
    pub suppress_ids: Vec<u32>,
    #[serde(default)]
    pub suppress_ids_begin: Vec<u32>,
}

pub(crate) fn read_config(dir: &Path) -> Result<Config, ModelError> {
    let path = dir.join("config.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| corrupt(&path, format!("invalid JSON: {e}")))
        }
        // Older conversions have no config.json: fall back to the tokenizer's defaults.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        Err(e) => Err(io_error(&path, e)),
    }
}

/// Count of `prefix/layer_N/` blocks present.
fn count_layers(file: &Ct2File, prefix: &str) -> usize {
    (0..)
        .take_while(|i| file.contains(&format!("{prefix}/layer_{i}/ffn/linear_0/weight")))
        .count()
}

/// Model dimensions from the variables of a `model.bin` (no weight is converted).
pub fn dims_of(file: &Ct2File) -> Result<Dims, ModelError> {
    let path = file.path();
    let need = |name: &str| {
        file.shape(name)
            .map(<[usize]>::to_vec)
            .ok_or_else(|| ModelError::MissingWeight {
                path: path.to_path_buf(),
                name: name.to_string(),
            })
    };
    let conv1 = need("encoder/conv1/weight")?;
    let enc_pos = need("encoder/position_encodings/encodings")?;
    let emb = need("decoder/embeddings/weight")?;
    let dec_pos = need("decoder/position_encodings/encodings")?;
    if conv1.len() != 3 || enc_pos.len() != 2 || emb.len() != 2 || dec_pos.len() != 2 {
        return Err(corrupt(
            path,
            "unexpected rank of encoder/decoder embeddings".into(),
        ));
    }
    let n_audio_state = conv1[0];
    let n_text_state = emb[1];
    let heads = |prefix: &str, state: usize| -> Result<usize, ModelError> {
        let h = file
            .scalar_int(&format!("{prefix}/num_heads"))
            .map(|h| h as usize)
            .unwrap_or(state / 64);
        if h == 0 || !state.is_multiple_of(h) {
            return Err(corrupt(
                path,
                format!("{prefix}: {h} heads do not divide width {state}"),
            ));
        }
        Ok(h)
    };
    let dims = Dims {
        n_mels: conv1[1],
        n_audio_ctx: enc_pos[0],
        n_audio_state,
        n_audio_head: heads("encoder", n_audio_state)?,
        n_audio_layer: count_layers(file, "encoder"),
        n_vocab: emb[0],
        n_text_ctx: dec_pos[0],
        n_text_state,
        n_text_head: heads("decoder", n_text_state)?,
        n_text_layer: count_layers(file, "decoder"),
    };
    if dims.n_audio_layer == 0 || dims.n_text_layer == 0 {
        return Err(corrupt(path, "no encoder or decoder layers found".into()));
    }
    if file.spec_name != "WhisperSpec" && !file.spec_name.is_empty() {
        return Err(ModelError::Unsupported {
            path: path.to_path_buf(),
            what: format!("model type `{}` (expected WhisperSpec)", file.spec_name),
        });
    }
    Ok(dims)
}
