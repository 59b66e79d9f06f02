//! Where the engine's weights come from, whatever the file format.
//!
//! The engine asks for tensors by their CTranslate2 names (`encoder/layer_0/self_attention/
//! linear_0/weight`, with Q, K and V fused) through [`TensorSource`]. A CTranslate2 file answers
//! directly; GGML and safetensors checkpoints store openai's names (`encoder.blocks.0.attn.
//! query.weight`, unfused; the safetensors reader renames Hugging Face's names to these), and
//! [`OpenaiLayout`] maps each CTranslate2 name to the openai tensors it is made of. The same
//! mapping, run backwards by [`openai_tensors`], exports a model to openai names.

use std::path::Path;

use super::Dims;
use super::ct2::Ct2File;
use crate::error::ModelError;

/// Tensors by CTranslate2 name, converted to f32 (what [`crate::engine::cpu::Weights`] reads);
/// read from several threads at once while a model loads.
pub trait TensorSource: Sync {
    /// The file reported in errors.
    fn path(&self) -> &Path;
    fn contains(&self, name: &str) -> bool;
    /// The tensor `name` as f32, checked against the `expected` shape.
    fn tensor(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, ModelError>;
    /// What [`tensor`](Self::tensor) would check (presence, shape, a type it can convert),
    /// without reading the data.
    fn check(&self, name: &str, expected: &[usize]) -> Result<(), ModelError>;
}

impl TensorSource for Ct2File {
    fn path(&self) -> &Path {
        Ct2File::path(self)
    }
    fn contains(&self, name: &str) -> bool {
        Ct2File::contains(self, name)
    }
    fn tensor(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, ModelError> {
        Ct2File::tensor(self, name, expected)
    }
    fn check(&self, name: &str, expected: &[usize]) -> Result<(), ModelError> {
        Ct2File::check(self, name, expected)
    }
}

/// A borrowed CTranslate2 file as a boxed [`TensorSource`].
pub struct Borrowed<'a>(pub &'a Ct2File);

impl TensorSource for Borrowed<'_> {
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }
    fn tensor(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, ModelError> {
        self.0.tensor(name, expected)
    }
    fn check(&self, name: &str, expected: &[usize]) -> Result<(), ModelError> {
        self.0.check(name, expected)
    }
}

/// Tensors by openai name (a GGML file, a safetensors checkpoint after renaming).
pub trait OpenaiTensors {
    fn path(&self) -> &Path;
    /// Shape, outermost dimension first; `None` when absent.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The data as f32 (dequantised), row-major.
    fn read(&self, name: &str) -> Result<Vec<f32>, ModelError>;
    /// The name as the file spells it, for errors.
    fn file_name(&self, name: &str) -> String {
        name.to_string()
    }
}

/// One piece of a CTranslate2 tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// An openai tensor.
    Tensor(String),
    /// Zeros (the key projections have no bias; CTranslate2 stores zeros in the fused bias).
    Zeros,
}

/// The openai tensors a CTranslate2 tensor is made of, concatenated along the first dimension
/// in equal shares; `None` for a name outside Whisper's layout.
pub fn ct2_to_openai(name: &str) -> Option<Vec<Part>> {
    let t = |s: String| Part::Tensor(s);
    let p: Vec<&str> = name.split('/').collect();
    fn wb(s: &str) -> Option<&str> {
        matches!(s, "weight" | "bias").then_some(s)
    }
    let ln = |s: &str| match s {
        "gamma" => Some("weight"),
        "beta" => Some("bias"),
        _ => None,
    };
    let side = *p.first()?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    Some(match p[1..] {
        [conv @ ("conv1" | "conv2"), x] if side == "encoder" => {
            vec![t(format!("encoder.{conv}.{}", wb(x)?))]
        }
        ["position_encodings", "encodings"] => vec![t(format!("{side}.positional_embedding"))],
        ["embeddings", "weight"] if side == "decoder" => {
            vec![t("decoder.token_embedding.weight".into())]
        }
        ["layer_norm", g] => {
            let ln_name = if side == "encoder" { "ln_post" } else { "ln" };
            vec![t(format!("{side}.{ln_name}.{}", ln(g)?))]
        }
        [layer, block, module, x] => {
            let n: usize = layer.strip_prefix("layer_")?.parse().ok()?;
            let b = format!("{side}.blocks.{n}");
            let attn = match block {
                "self_attention" => "attn",
                "attention" if side == "decoder" => "cross_attn",
                "ffn" => "mlp",
                _ => return None,
            };
            if module == "layer_norm" {
                return Some(vec![t(format!("{b}.{attn}_ln.{}", ln(x)?))]);
            }
            let x = wb(x)?;
            let bias = x == "bias";
            let proj = |p: &str| t(format!("{b}.{attn}.{p}.{x}"));
            match (attn, module) {
                ("attn", "linear_0") => vec![
                    proj("query"),
                    if bias { Part::Zeros } else { proj("key") },
                    proj("value"),
                ],
                ("attn", "linear_1") | ("cross_attn", "linear_2") => vec![proj("out")],
                ("cross_attn", "linear_0") => vec![proj("query")],
                ("cross_attn", "linear_1") => {
                    vec![if bias { Part::Zeros } else { proj("key") }, proj("value")]
                }
                ("mlp", "linear_0") => vec![t(format!("{b}.mlp.0.{x}"))],
                ("mlp", "linear_1") => vec![t(format!("{b}.mlp.2.{x}"))],
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// Shapes equal up to dimensions of size 1 (whisper.cpp stores the conv biases as `[d, 1]`).
fn same_shape(a: &[usize], b: &[usize]) -> bool {
    let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
    squeeze(a) == squeeze(b)
}

/// A [`TensorSource`] over openai-named tensors.
pub struct OpenaiLayout<'a, T: OpenaiTensors>(pub &'a T);

impl<T: OpenaiTensors + Sync> TensorSource for OpenaiLayout<'_, T> {
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn contains(&self, name: &str) -> bool {
        ct2_to_openai(name).is_some_and(|parts| {
            parts.iter().all(|p| match p {
                Part::Tensor(n) => self.0.shape(n).is_some(),
                Part::Zeros => true,
            })
        })
    }
    fn tensor(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, ModelError> {
        // The shapes are checked before anything is allocated: `expected` may come from a
        // file's header.
        let (parts, part_shape) = self.parts(name, expected)?;
        let part_len: usize = part_shape.iter().product();
        let mut out = Vec::with_capacity(part_len * parts.len());
        for part in &parts {
            match part {
                Part::Zeros => out.resize(out.len() + part_len, 0.0),
                Part::Tensor(n) => {
                    let data = self.0.read(n)?;
                    if data.len() != part_len {
                        return Err(ModelError::BadShape {
                            path: self.0.path().to_path_buf(),
                            name: self.0.file_name(n),
                            found: vec![data.len()],
                            expected: vec![part_len],
                        });
                    }
                    if let Some(at) = super::bytes::first_non_finite(&data) {
                        return Err(ModelError::Corrupt {
                            path: self.0.path().to_path_buf(),
                            what: format!(
                                "weight `{}` holds a non-finite value ({}) at index {at}",
                                self.0.file_name(n),
                                data[at]
                            ),
                        });
                    }
                    out.extend(data);
                }
            }
        }
        Ok(out)
    }
    fn check(&self, name: &str, expected: &[usize]) -> Result<(), ModelError> {
        self.parts(name, expected).map(|_| ())
    }
}

impl<T: OpenaiTensors> OpenaiLayout<'_, T> {
    /// The openai tensors making up `name` and the shape each must have, all checked present
    /// with that shape.
    fn parts(&self, name: &str, expected: &[usize]) -> Result<(Vec<Part>, Vec<usize>), ModelError> {
        let path = self.0.path();
        let parts = ct2_to_openai(name).ok_or_else(|| ModelError::MissingWeight {
            path: path.to_path_buf(),
            name: name.to_string(),
        })?;
        let rows = expected.first().copied().unwrap_or(1);
        let mut part_shape = expected.to_vec();
        if let Some(first) = part_shape.first_mut() {
            *first = rows / parts.len();
        }
        for part in &parts {
            if let Part::Tensor(n) = part {
                let found = self.0.shape(n).ok_or_else(|| ModelError::MissingWeight {
                    path: path.to_path_buf(),
                    name: self.0.file_name(n),
                })?;
                if !same_shape(&found, &part_shape) {
                    return Err(ModelError::BadShape {
                        path: path.to_path_buf(),
                        name: self.0.file_name(n),
                        found,
                        expected: part_shape,
                    });
                }
            }
        }
        Ok((parts, part_shape))
    }
}

/// Every tensor the engine reads, by CTranslate2 name, with its shape (biases included; a source
/// may lack some of them, as `Weights` allows).
pub fn engine_tensors(dims: &Dims) -> Vec<(String, Vec<usize>)> {
    let (da, dt, m) = (dims.n_audio_state, dims.n_text_state, dims.n_mels);
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let mut push = |name: String, shape: Vec<usize>| out.push((name, shape));
    let linear = |push: &mut dyn FnMut(String, Vec<usize>), p: String, o: usize, i: usize| {
        push(format!("{p}/weight"), vec![o, i]);
        push(format!("{p}/bias"), vec![o]);
    };
    let ln = |push: &mut dyn FnMut(String, Vec<usize>), p: String, d: usize| {
        push(format!("{p}/gamma"), vec![d]);
        push(format!("{p}/beta"), vec![d]);
    };
    push("encoder/conv1/weight".into(), vec![da, m, 3]);
    push("encoder/conv1/bias".into(), vec![da]);
    push("encoder/conv2/weight".into(), vec![da, da, 3]);
    push("encoder/conv2/bias".into(), vec![da]);
    push(
        "encoder/position_encodings/encodings".into(),
        vec![dims.n_audio_ctx, da],
    );
    for i in 0..dims.n_audio_layer {
        let p = format!("encoder/layer_{i}");
        ln(&mut push, format!("{p}/self_attention/layer_norm"), da);
        linear(
            &mut push,
            format!("{p}/self_attention/linear_0"),
            3 * da,
            da,
        );
        linear(&mut push, format!("{p}/self_attention/linear_1"), da, da);
        ln(&mut push, format!("{p}/ffn/layer_norm"), da);
        linear(&mut push, format!("{p}/ffn/linear_0"), 4 * da, da);
        linear(&mut push, format!("{p}/ffn/linear_1"), da, 4 * da);
    }
    ln(&mut push, "encoder/layer_norm".into(), da);
    push("decoder/embeddings/weight".into(), vec![dims.n_vocab, dt]);
    push(
        "decoder/position_encodings/encodings".into(),
        vec![dims.n_text_ctx, dt],
    );
    for i in 0..dims.n_text_layer {
        let p = format!("decoder/layer_{i}");
        ln(&mut push, format!("{p}/self_attention/layer_norm"), dt);
        linear(
            &mut push,
            format!("{p}/self_attention/linear_0"),
            3 * dt,
            dt,
        );
        linear(&mut push, format!("{p}/self_attention/linear_1"), dt, dt);
        ln(&mut push, format!("{p}/attention/layer_norm"), dt);
        linear(&mut push, format!("{p}/attention/linear_0"), dt, dt);
        linear(&mut push, format!("{p}/attention/linear_1"), 2 * dt, da);
        linear(&mut push, format!("{p}/attention/linear_2"), dt, dt);
        ln(&mut push, format!("{p}/ffn/layer_norm"), dt);
        linear(&mut push, format!("{p}/ffn/linear_0"), 4 * dt, dt);
        linear(&mut push, format!("{p}/ffn/linear_1"), dt, 4 * dt);
    }
    ln(&mut push, "decoder/layer_norm".into(), dt);
    out
}

/// An openai-named tensor: name, shape (outermost first), row-major f32 data.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// The model of `source` as openai-named tensors, fused CTranslate2 tensors split (the zero key
/// biases dropped), in the order of [`engine_tensors`].
pub fn openai_tensors(
    source: &dyn TensorSource,
    dims: &Dims,
) -> Result<Vec<NamedTensor>, ModelError> {
    let mut out = Vec::new();
    for (name, shape) in engine_tensors(dims) {
        if !source.contains(&name) {
            if name.ends_with("/bias") {
                continue;
            }
            // Name the tensor as the openai-named formats spell it.
            let first = ct2_to_openai(&name).and_then(|parts| {
                parts.into_iter().find_map(|p| match p {
                    Part::Tensor(n) => Some(n),
                    Part::Zeros => None,
                })
            });
            return Err(ModelError::MissingWeight {
                path: source.path().to_path_buf(),
                name: first.unwrap_or(name),
            });
        }
        let data = source.tensor(&name, &shape)?;
        let parts = ct2_to_openai(&name).ok_or_else(|| ModelError::MissingWeight {
            path: source.path().to_path_buf(),
            name: name.clone(),
        })?;
        let mut part_shape = shape.clone();
        part_shape[0] /= parts.len();
        let part_len: usize = part_shape.iter().product();
        for (part, chunk) in parts.iter().zip(data.chunks_exact(part_len)) {
            if let Part::Tensor(n) = part {
                out.push((n.clone(), part_shape.clone(), chunk.to_vec()));
            }
        }
    }
    Ok(out)
}
