//! Hugging Face checkpoints: `*.safetensors` weights named as transformers'
//! `WhisperForConditionalGeneration` (`model.encoder.layers.0.self_attn.q_proj.weight`), with
//! `config.json` (dimensions, suppressed tokens), optionally `generation_config.json`
//! (alignment heads, suppressed tokens) and `tokenizer.json`.
//!
//! A safetensors file is a little-endian u64 header length, a JSON header mapping each name to
//! `{dtype, shape, data_offsets: [begin, end]}` (offsets into the data after the header), and the
//! data. The reader memory-maps every shard of the checkpoint and renames Hugging Face's names
//! to openai's, which [`super::source::OpenaiLayout`] maps onto the engine's.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use half::f16;
use memmap2::Mmap;

use super::Dims;
use super::bytes::{bf16s, corrupt, f16s, f32s, io_error};
use super::source::{NamedTensor, OpenaiTensors};
use crate::error::ModelError;

/// Hugging Face name suffixes inside a layer → openai's.
const LAYER_NAMES: [(&str, &str); 13] = [
    ("self_attn.q_proj", "attn.query"),
    ("self_attn.k_proj", "attn.key"),
    ("self_attn.v_proj", "attn.value"),
    ("self_attn.out_proj", "attn.out"),
    ("self_attn_layer_norm", "attn_ln"),
    ("encoder_attn.q_proj", "cross_attn.query"),
    ("encoder_attn.k_proj", "cross_attn.key"),
    ("encoder_attn.v_proj", "cross_attn.value"),
    ("encoder_attn.out_proj", "cross_attn.out"),
    ("encoder_attn_layer_norm", "cross_attn_ln"),
    ("fc1", "mlp.0"),
    ("fc2", "mlp.2"),
    ("final_layer_norm", "mlp_ln"),
];

/// openai's name of a Hugging Face tensor; `None` for names the engine does not use
/// (`proj_out.weight`, tied to the token embedding).
pub fn hf_to_openai(name: &str) -> Option<String> {
    let name = name.strip_prefix("model.").unwrap_or(name);
    let (side, rest) = name.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    if let Some(rest) = rest.strip_prefix("layers.") {
        let (n, rest) = rest.split_once('.')?;
        let n: usize = n.parse().ok()?;
        let (module, param) = rest.rsplit_once('.')?;
        let (_, openai) = LAYER_NAMES.iter().find(|(hf, _)| *hf == module)?;
        return Some(format!("{side}.blocks.{n}.{openai}.{param}"));
    }
    if rest == "embed_positions.weight" {
        return Some(format!("{side}.positional_embedding"));
    }
    let (module, param) = rest.rsplit_once('.')?;
    let openai = match module {
        "conv1" | "conv2" if side == "encoder" => module,
        "embed_tokens" if side == "decoder" => "token_embedding",
        "layer_norm" if side == "encoder" => "ln_post",
        "layer_norm" => "ln",
        _ => return None,
    };
    Some(format!("{side}.{openai}.{param}"))
}

/// Hugging Face's name (with the `model.` prefix) of an openai tensor.
pub fn openai_to_hf(name: &str) -> Option<String> {
    let (side, rest) = name.split_once('.')?;
    if let Some(rest) = rest.strip_prefix("blocks.") {
        let (n, rest) = rest.split_once('.')?;
        let (module, param) = rest.rsplit_once('.')?;
        let (hf, _) = LAYER_NAMES.iter().find(|(_, o)| *o == module)?;
        return Some(format!("model.{side}.layers.{n}.{hf}.{param}"));
    }
    if rest == "positional_embedding" {
        return Some(format!("model.{side}.embed_positions.weight"));
    }
    let (module, param) = rest.rsplit_once('.')?;
    let hf = match module {
        "conv1" | "conv2" => module,
        "token_embedding" => "embed_tokens",
        "ln_post" | "ln" => "layer_norm",
        _ => return None,
    };
    Some(format!("model.{side}.{hf}.{param}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    F16,
    Bf16,
}

#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    begin: usize,
    end: usize,
}

/// The tensors of one checkpoint (one or more `.safetensors` shards), by openai name.
pub struct SafetensorsCheckpoint {
    /// The directory, or the file when given one.
    path: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    tensors: HashMap<String, Entry>,
}

/// The `.safetensors` files of `path`: itself when a file, else those in the directory, sorted.
pub fn shard_paths(path: &Path) -> Result<Vec<PathBuf>, ModelError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut shards: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| io_error(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    shards.sort();
    Ok(shards)
}

impl SafetensorsCheckpoint {
    /// Opens a `.safetensors` file, or every one in a directory.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let shards = shard_paths(path)?;
        if shards.is_empty() {
            return Err(ModelError::NotFound {
                path: path.join("model.safetensors"),
            });
        }
        let mut files = Vec::new();
        let mut tensors = HashMap::new();
        for (index, shard) in shards.into_iter().enumerate() {
            let file = File::open(&shard).map_err(|e| io_error(&shard, e))?;
            // SAFETY: read-only map; all reads are bounds-checked (see ct2.rs).
            let map = unsafe { Mmap::map(&file) }.map_err(|e| io_error(&shard, e))?;
            parse_header(&shard, &map, index, &mut tensors)?;
            files.push((shard, map));
        }
        Ok(Self {
            path: path.to_path_buf(),
            files,
            tensors,
        })
    }
}

fn parse_header(
    path: &Path,
    map: &[u8],
    file: usize,
    tensors: &mut HashMap<String, Entry>,
) -> Result<(), ModelError> {
    let truncated = |what: String| ModelError::Truncated {
        path: path.to_path_buf(),
        what,
    };
    if map.len() < 8 {
        return Err(truncated(format!(
            "{} bytes, a safetensors file starts with an 8-byte header length",
            map.len()
        )));
    }
    let header_len = u64::from_le_bytes(map[..8].try_into().unwrap_or_default());
    let data_start = usize::try_from(header_len)
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|&s| s <= map.len())
        .ok_or_else(|| {
            truncated(format!(
                "header of {header_len} bytes announced, file has {}",
                map.len()
            ))
        })?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&map[8..data_start])
            .map_err(|e| corrupt(path, format!("header is not a JSON object: {e}")))?;
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| corrupt(path, format!("tensor `{name}`: {what}"));
        let dtype = match info.get("dtype").and_then(|d| d.as_str()) {
            Some("F32") => Dtype::F32,
            Some("F16") => Dtype::F16,
            Some("BF16") => Dtype::Bf16,
            Some(other) => {
                return Err(ModelError::Unsupported {
                    path: path.to_path_buf(),
                    what: format!("dtype {other} of tensor `{name}` (supported: F32, F16, BF16)"),
                });
            }
            None => return Err(bad("no dtype")),
        };
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .ok_or_else(|| bad("no shape list"))?;
        let offsets: Vec<usize> = info
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .filter(|o: &Vec<usize>| o.len() == 2 && o[0] <= o[1])
            .ok_or_else(|| bad("no valid data_offsets [begin, end]"))?;
        let size = match dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        };
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel.and_then(|n| n.checked_mul(size)) != Some(offsets[1] - offsets[0]) {
            return Err(bad(&format!(
                "shape {shape:?} does not fit its {} bytes",
                offsets[1] - offsets[0]
            )));
        }
        let (Some(begin), Some(end)) = (
            data_start.checked_add(offsets[0]),
            data_start.checked_add(offsets[1]),
        ) else {
            return Err(bad("data_offsets beyond any file size"));
        };
        if end > map.len() {
            return Err(truncated(format!(
                "data of tensor `{name}` ends at byte {end}, file has {}",
                map.len()
            )));
        }
        let Some(openai) = hf_to_openai(&name) else {
            continue;
        };
        let entry = Entry {
            file,
            dtype,
            shape,
            begin,
            end,
        };
        if tensors.insert(openai, entry).is_some() {
            return Err(bad("appears twice in the checkpoint"));
        }
    }
    Ok(())
}

impl OpenaiTensors for SafetensorsCheckpoint {
    fn path(&self) -> &Path {
        &self.path
    }
    fn file_name(&self, name: &str) -> String {
        openai_to_hf(name).unwrap_or_else(|| name.to_string())
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|e| e.shape.clone())
    }
    fn read(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingWeight {
                path: self.path.clone(),
                name: openai_to_hf(name).unwrap_or_else(|| name.to_string()),
            })?;
        let map = &self.files[e.file].1;
        let bytes = &map[e.begin..e.end];
        let out = match e.dtype {
            Dtype::F32 => f32s(bytes),
            Dtype::F16 => f16s(bytes),
            Dtype::Bf16 => bf16s(bytes),
        };
        super::bytes::release(map, e.begin, e.end - e.begin);
        Ok(out)
    }
}

/// The parts of a Hugging Face `config.json` (and `generation_config.json`) the engine uses.
#[derive(Debug, Default, serde::Deserialize)]
pub struct HfConfig {
    pub d_model: Option<usize>,
    pub encoder_layers: Option<usize>,
    pub encoder_attention_heads: Option<usize>,
    pub decoder_layers: Option<usize>,
    pub decoder_attention_heads: Option<usize>,
    pub num_mel_bins: Option<usize>,
    pub vocab_size: Option<usize>,
    pub max_source_positions: Option<usize>,
    pub max_target_positions: Option<usize>,
    #[serde(default)]
    pub suppress_tokens: Vec<i64>,
    #[serde(default)]
    pub begin_suppress_tokens: Vec<i64>,
    #[serde(default)]
    pub alignment_heads: Vec<(usize, usize)>,
}

/// Reads a JSON configuration; `Ok(None)` when the file does not exist.
pub fn read_config(path: &Path) -> Result<Option<HfConfig>, ModelError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| corrupt(path, format!("invalid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, e)),
    }
}

impl HfConfig {
    /// Model dimensions; `path` names the config for errors.
    pub fn dims(&self, path: &Path) -> Result<Dims, ModelError> {
        let need = |v: Option<usize>, key: &str| {
            v.filter(|&v| v > 0)
                .ok_or_else(|| corrupt(path, format!("no positive `{key}`")))
        };
        let d = need(self.d_model, "d_model")?;
        let dims = Dims {
            n_mels: need(self.num_mel_bins, "num_mel_bins")?,
            n_audio_ctx: need(self.max_source_positions, "max_source_positions")?,
            n_audio_state: d,
            n_audio_head: need(self.encoder_attention_heads, "encoder_attention_heads")?,
            n_audio_layer: need(self.encoder_layers, "encoder_layers")?,
            n_vocab: need(self.vocab_size, "vocab_size")?,
            n_text_ctx: need(self.max_target_positions, "max_target_positions")?,
            n_text_state: d,
            n_text_head: need(self.decoder_attention_heads, "decoder_attention_heads")?,
            n_text_layer: need(self.decoder_layers, "decoder_layers")?,
        };
        for heads in [dims.n_audio_head, dims.n_text_head] {
            if !d.is_multiple_of(heads) {
                return Err(corrupt(
                    path,
                    format!("d_model {d} is not a multiple of {heads} heads"),
                ));
            }
        }
        Ok(dims)
    }
}

/// The safetensors dtype to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteType {
    F32,
    F16,
}

/// Writes `tensors` (openai names) as one Hugging Face-named `.safetensors` file.
pub fn write(path: &Path, tensors: &[NamedTensor], ty: WriteType) -> Result<(), ModelError> {
    let io = |e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut header = serde_json::Map::new();
    let mut metadata = serde_json::Map::new();
    metadata.insert("format".into(), "pt".into());
    header.insert("__metadata__".into(), metadata.into());
    let size = match ty {
        WriteType::F32 => 4,
        WriteType::F16 => 2,
    };
    let mut offset = 0usize;
    let mut names = Vec::with_capacity(tensors.len());
    for (name, shape, data) in tensors {
        let hf = openai_to_hf(name).ok_or_else(|| ModelError::Unsupported {
            path: path.to_path_buf(),
            what: format!("tensor `{name}` has no Hugging Face name"),
        })?;
        let len = data.len() * size;
        header.insert(
            hf.clone(),
            serde_json::json!({
                "dtype": if ty == WriteType::F32 { "F32" } else { "F16" },
                "shape": shape,
                "data_offsets": [offset, offset + len],
            }),
        );
        offset += len;
        names.push(hf);
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| corrupt(path, format!("cannot encode the header: {e}")))?;
    // Pad the header with spaces so the data starts 8-byte aligned, as the reference writer does.
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = std::io::BufWriter::new(File::create(path).map_err(io)?);
    out.write_all(&(json.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&json).map_err(io)?;
    for (_, _, data) in tensors {
        let bytes: Vec<u8> = match ty {
            WriteType::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            WriteType::F16 => data
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect(),
        };
        out.write_all(&bytes).map_err(io)?;
    }
    out.flush().map_err(io)
}
