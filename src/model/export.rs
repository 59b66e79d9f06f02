//! Writing models in other formats (`examples/convert.rs`): whisper.cpp GGML files and Hugging
//! Face safetensors checkpoints, from any model this crate reads; and small randomly initialised
//! models of a real model's shapes, for tests of the loaders and the engine.

use std::path::{Path, PathBuf};

use super::source::{
    NamedTensor, OpenaiLayout, OpenaiTensors, TensorSource, engine_tensors, openai_tensors,
};
use super::{Dims, ModelFormat, Tokenizer, ct2, ggml, safetensors};
use crate::error::ModelError;

/// A model as openai-named tensors with what a checkpoint stores beside them.
pub struct ExportModel {
    pub dims: Dims,
    pub tokenizer: Tokenizer,
    /// The source's `tokenizer.json`, copied into safetensors checkpoints when present.
    pub tokenizer_json: Option<PathBuf>,
    pub suppress_ids: Vec<u32>,
    pub suppress_ids_begin: Vec<u32>,
    pub alignment_heads: Vec<(usize, usize)>,
    pub tensors: Vec<NamedTensor>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelError + '_ {
    move |e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

impl ExportModel {
    /// Reads a model in any [`ModelFormat`]. The configuration (suppressed tokens, alignment
    /// heads) is taken from a loaded [`super::WhisperModel`]'s rules, without building the
    /// engine's weights.
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let file = super::ModelFile::open(path)?;
        let format = file.format;
        let dir = if path.is_dir() {
            path.to_path_buf()
        } else {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        };
        let dims = file.dims.clone();
        let tokenizer = file.tokenizer()?;
        let tensors = openai_tensors(&*file.source()?, &dims)?;
        let (suppress_ids, suppress_ids_begin, alignment_heads) = match format {
            ModelFormat::Ct2 => {
                let config = ct2::read_config(&dir)?;
                (
                    config.suppress_ids,
                    config.suppress_ids_begin,
                    config.alignment_heads,
                )
            }
            _ => (Vec::new(), Vec::new(), Vec::new()),
        };
        let tokenizer_json =
            Some(dir.join("tokenizer.json")).filter(|p| format != ModelFormat::Ggml && p.is_file());
        Ok(Self {
            dims,
            tokenizer,
            tokenizer_json,
            suppress_ids,
            suppress_ids_begin,
            alignment_heads,
            tensors,
        })
    }

    /// The text tokens' bytes, as a GGML file embeds them.
    fn text_tokens(&self) -> Vec<Vec<u8>> {
        (0..self.tokenizer.specials.eot)
            .map(|id| self.tokenizer.token_bytes(id).to_vec())
            .collect()
    }

    /// `vocabulary.txt`: one token per line, GPT-2 byte-level form (CTranslate2's file).
    fn write_vocabulary(&self, dir: &Path) -> Result<(), ModelError> {
        let path = dir.join("vocabulary.txt");
        let mut text = String::new();
        for id in 0..self.tokenizer.len() as u32 {
            text.push_str(self.tokenizer.token_str(id).unwrap_or(""));
            text.push('\n');
        }
        std::fs::write(&path, text).map_err(io(&path))
    }

    /// The source's `tokenizer.json` (BPE merges), when it has one.
    fn copy_tokenizer_json(&self, dir: &Path) -> Result<(), ModelError> {
        if let Some(src) = &self.tokenizer_json {
            let dst = dir.join("tokenizer.json");
            std::fs::copy(src, &dst).map_err(io(&dst))?;
        }
        Ok(())
    }

    /// Writes a CTranslate2 model directory `dir`: `model.bin` (binary version 6, `WhisperSpec`,
    /// Q/K/V and cross-attention K/V fused as CTranslate2's converter fuses them, the output
    /// projection an alias of the token embedding, weights in f32 or f16), `config.json`
    /// (alignment heads, suppressed tokens) and `vocabulary.txt` (+ the source's
    /// `tokenizer.json`).
    pub fn write_ct2(&self, dir: &Path, ty: safetensors::WriteType) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let source = OpenaiLayout(self);
        let mut vars: Vec<(String, Vec<usize>, Vec<u8>, u8)> = Vec::new();
        for (name, shape) in engine_tensors(&self.dims) {
            if !source.contains(&name) {
                continue;
            }
            let data = source.tensor(&name, &shape)?;
            let (bytes, code) = match ty {
                safetensors::WriteType::F32 => {
                    (data.iter().flat_map(|v| v.to_le_bytes()).collect(), 0u8)
                }
                safetensors::WriteType::F16 => (
                    data.iter()
                        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                        .collect(),
                    4u8,
                ),
            };
            vars.push((name, shape, bytes, code));
        }
        // Head counts as int32 scalars: the width / 64 rule of older files is wrong for small
        // widths.
        for (side, heads) in [
            ("encoder", self.dims.n_audio_head),
            ("decoder", self.dims.n_text_head),
        ] {
            vars.push((
                format!("{side}/num_heads"),
                Vec::new(),
                (heads as i32).to_le_bytes().to_vec(),
                3,
            ));
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::new();
        let put_str = |out: &mut Vec<u8>, s: &str| {
            out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        };
        out.extend_from_slice(&6u32.to_le_bytes());
        put_str(&mut out, "WhisperSpec");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(vars.len() as u32).to_le_bytes());
        for (name, shape, bytes, code) in &vars {
            put_str(&mut out, name);
            out.push(shape.len() as u8);
            for &d in shape {
                out.extend_from_slice(&(d as u32).to_le_bytes());
            }
            out.push(*code);
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        out.extend_from_slice(&1u32.to_le_bytes());
        put_str(&mut out, "decoder/projection/weight");
        put_str(&mut out, "decoder/embeddings/weight");
        let bin = dir.join("model.bin");
        std::fs::write(&bin, out).map_err(io(&bin))?;
        let config = serde_json::json!({
            "alignment_heads": self.alignment_heads,
            "suppress_ids": self.suppress_ids,
            "suppress_ids_begin": self.suppress_ids_begin,
        });
        let path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&config).unwrap_or_default();
        std::fs::write(&path, text + "\n").map_err(io(&path))?;
        self.write_vocabulary(dir)?;
        self.copy_tokenizer_json(dir)
    }

    /// Writes a whisper.cpp GGML file with big tensors of type `ty`.
    pub fn write_ggml(&self, path: &Path, ty: ggml::GgmlType) -> Result<(), ModelError> {
        ggml::write(path, &self.dims, &self.text_tokens(), &self.tensors, ty)
    }

    /// Writes a Hugging Face checkpoint into directory `dir`: `model.safetensors`,
    /// `config.json`, `generation_config.json`, and the tokenizer: the source's `tokenizer.json`
    /// when it has one, else `vocabulary.txt` (read by this crate, not by transformers).
    pub fn write_safetensors(
        &self,
        dir: &Path,
        ty: safetensors::WriteType,
    ) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        safetensors::write(&dir.join("model.safetensors"), &self.tensors, ty)?;
        let d = &self.dims;
        let specials = &self.tokenizer.specials;
        let config = serde_json::json!({
            "architectures": ["WhisperForConditionalGeneration"],
            "model_type": "whisper",
            "d_model": d.n_audio_state,
            "encoder_layers": d.n_audio_layer,
            "encoder_attention_heads": d.n_audio_head,
            "encoder_ffn_dim": 4 * d.n_audio_state,
            "decoder_layers": d.n_text_layer,
            "decoder_attention_heads": d.n_text_head,
            "decoder_ffn_dim": 4 * d.n_text_state,
            "num_mel_bins": d.n_mels,
            "vocab_size": d.n_vocab,
            "max_source_positions": d.n_audio_ctx,
            "max_target_positions": d.n_text_ctx,
            "activation_function": "gelu",
            "scale_embedding": false,
            "tie_word_embeddings": true,
            "bos_token_id": specials.eot,
            "eos_token_id": specials.eot,
            "pad_token_id": specials.eot,
            "decoder_start_token_id": specials.sot,
            "suppress_tokens": self.suppress_ids,
            "begin_suppress_tokens": self.suppress_ids_begin,
            "torch_dtype": if ty == safetensors::WriteType::F16 { "float16" } else { "float32" },
        });
        let generation = serde_json::json!({
            "alignment_heads": self.alignment_heads,
            "suppress_tokens": self.suppress_ids,
            "begin_suppress_tokens": self.suppress_ids_begin,
            "decoder_start_token_id": specials.sot,
            "eos_token_id": specials.eot,
            "no_timestamps_token_id": specials.no_timestamps,
            "is_multilingual": self.tokenizer.is_multilingual(),
            "max_length": d.n_text_ctx,
        });
        for (name, value) in [
            ("config.json", config),
            ("generation_config.json", generation),
        ] {
            let path = dir.join(name);
            let text = serde_json::to_string_pretty(&value).unwrap_or_default();
            std::fs::write(&path, text + "\n").map_err(io(&path))?;
        }
        match &self.tokenizer_json {
            Some(_) => self.copy_tokenizer_json(dir)?,
            None => self.write_vocabulary(dir)?,
        }
        Ok(())
    }
}

impl OpenaiTensors for ExportModel {
    fn path(&self) -> &Path {
        Path::new("<export>")
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, shape, _)| shape.clone())
    }
    fn read(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        self.tensors
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, data)| data.clone())
            .ok_or_else(|| ModelError::MissingWeight {
                path: PathBuf::from("<export>"),
                name: name.to_string(),
            })
    }
}

/// Shapes of real models for [`random_model`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RandomShapes {
    /// large-v3-turbo's layout (128 mel bins, 51866 tokens, 4 decoder layers) at a small width:
    /// d_model 64, 2 heads, 2 encoder layers.
    LargeV3Turbo,
    /// The smallest model the engine runs: tiny.en's layout (80 mel bins, the English-only
    /// vocabulary of 51864 tokens) at d_model 32, 1 head, 1 encoder and 1 decoder layer; a
    /// 3.4 MB f16 file, for fuzzing the readers.
    Minimal,
}

impl std::str::FromStr for RandomShapes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "large-v3-turbo" => Ok(Self::LargeV3Turbo),
            "minimal" => Ok(Self::Minimal),
            _ => Err(format!(
                "unknown shapes `{s}` (known: large-v3-turbo, minimal)"
            )),
        }
    }
}

impl RandomShapes {
    pub fn dims(self) -> Dims {
        match self {
            Self::LargeV3Turbo => Dims {
                n_mels: 128,
                n_audio_ctx: 1500,
                n_audio_state: 64,
                n_audio_head: 2,
                n_audio_layer: 2,
                n_vocab: 51866,
                n_text_ctx: 448,
                n_text_state: 64,
                n_text_head: 2,
                n_text_layer: 4,
            },
            Self::Minimal => Dims {
                n_mels: 80,
                n_audio_ctx: 1500,
                n_audio_state: 32,
                n_audio_head: 1,
                n_audio_layer: 1,
                n_vocab: 51864,
                n_text_ctx: 448,
                n_text_state: 32,
                n_text_head: 1,
                n_text_layer: 1,
            },
        }
    }
}

/// Deterministic uniform values (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // Uniform in [-1, 1).
        (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Random tensors by CTranslate2 name (what [`openai_tensors`] exports).
struct RandomSource {
    dims: Dims,
    seed: u64,
}

impl TensorSource for RandomSource {
    fn path(&self) -> &Path {
        Path::new("<random>")
    }
    fn contains(&self, name: &str) -> bool {
        engine_tensors(&self.dims).iter().any(|(n, _)| n == name)
    }
    fn tensor(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, ModelError> {
        // Each tensor its own stream, so values do not depend on the order of requests.
        let mut rng = Rng(name.bytes().fold(self.seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }));
        let n: usize = expected.iter().product();
        let fan_in = expected.get(1..).map_or(1, |s| s.iter().product::<usize>());
        let (centre, scale) = if name.ends_with("/gamma") {
            (1.0, 0.1)
        } else if name.ends_with("/beta") || name.ends_with("/bias") {
            (0.0, 0.02)
        } else if name.contains("embeddings") || name.contains("encodings") {
            (0.0, 0.5)
        } else {
            (0.0, 1.0 / (fan_in as f32).sqrt())
        };
        Ok((0..n).map(|_| centre + scale * rng.next()).collect())
    }
    fn check(&self, _name: &str, _expected: &[usize]) -> Result<(), ModelError> {
        Ok(())
    }
}

/// A randomly initialised model of `shapes` (deterministic for a `seed`). Its tokenizer takes
/// the text tokens of `vocab_from` (a real tokenizer; missing ones are empty) with the special
/// tokens of the shapes' vocabulary size.
pub fn random_model(
    shapes: RandomShapes,
    seed: u64,
    vocab_from: &Tokenizer,
) -> Result<ExportModel, ModelError> {
    let dims = shapes.dims();
    let n_text = super::SpecialTokens::for_vocab_size(dims.n_vocab).map_or(0, |s| s.eot as usize);
    let text: Vec<Vec<u8>> = (0..n_text as u32)
        .map(|id| {
            if id < vocab_from.specials.eot {
                vocab_from.token_bytes(id).to_vec()
            } else {
                Vec::new()
            }
        })
        .collect();
    let tokenizer = Tokenizer::from_token_bytes(Path::new("<random>"), &text, dims.n_vocab)?;
    let source = RandomSource {
        dims: dims.clone(),
        seed,
    };
    let tensors = openai_tensors(&source, &dims)?;
    Ok(ExportModel {
        dims,
        tokenizer,
        tokenizer_json: None,
        suppress_ids: Vec::new(),
        suppress_ids_begin: Vec::new(),
        alignment_heads: Vec::new(),
        tensors,
    })
}
