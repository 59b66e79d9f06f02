//! The ONNX Runtime engine: Whisper exported to ONNX in Hugging Face Optimum's layout, run by
//! ONNX Runtime (loaded at run time) with an execution provider.
//!
//! Files (detected by [`crate::model::OnnxLayout`]): `encoder_model.onnx` (`input_features`
//! `[batch, n_mels, 3000]` → `last_hidden_state` `[batch, 1500, d]`) and a decoder:
//! - `decoder_model_merged.onnx`: `input_ids`, `encoder_hidden_states`,
//!   `past_key_values.{i}.{decoder,encoder}.{key,value}`, `use_cache_branch` → `logits`,
//!   `present.{i}.*` (the first step without past, the others with it);
//! - `decoder_model.onnx` + `decoder_with_past_model.onnx` (the same, split in two files);
//! - `decoder_model.onnx` alone, no KV cache: every step decodes the whole sequence; a
//!   static-shape export (AMD's recipe for the Ryzen AI NPU: batch 1, a fixed decoder length)
//!   gets the sequence padded to its length, and the logits are read at the last real position.
//!
//! Decoders that also output `cross_attentions.{i}` (`[batch, heads, tokens, 1500]`, Optimum
//! with `output_attentions`; `scripts/export-onnx` writes them) give word timestamps.
//!
//! Sequences run one at a time (batch 1) and share the window's encoder K/V: beam search and
//! best-of sampling cost one decoder call per sequence and step, the encoder K/V are never
//! copied. Sessions are shared by every transcriber using the model, behind a lock each.

pub mod runtime;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ort::ep::{self, ArbitrarilyConfigurableExecutionProvider, ExecutionProvider};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{Session, SessionInputValue, SessionOutputs};
use ort::value::{DynValue, Tensor, TensorRef, ValueType};

use super::{Decoder, Encoder, ModelWeights, WhisperModel};
use crate::error::{Error, ModelError};
use crate::model::{Dims, OnnxLayout};

/// The execution providers the engine knows, by the names of the `execution-provider` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Provider {
    /// The first accelerator the loaded ONNX Runtime has (Vitis AI, CUDA, ROCm, MIGraphX,
    /// DirectML, CoreML, OpenVINO, in that order), else the CPU.
    #[default]
    Auto,
    Cpu,
    VitisAi,
    OpenVino,
    Cuda,
    Rocm,
    MigraphX,
    CoreMl,
    DirectMl,
}

impl Provider {
    pub const NAMES: &'static str =
        "auto, cpu, vitisai, openvino, cuda, rocm, migraphx, coreml, directml";
    /// The order `auto` tries accelerators in.
    const ACCELERATORS: [Provider; 7] = [
        Provider::VitisAi,
        Provider::Cuda,
        Provider::Rocm,
        Provider::MigraphX,
        Provider::DirectMl,
        Provider::CoreMl,
        Provider::OpenVino,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Auto => "auto",
            Provider::Cpu => "cpu",
            Provider::VitisAi => "vitisai",
            Provider::OpenVino => "openvino",
            Provider::Cuda => "cuda",
            Provider::Rocm => "rocm",
            Provider::MigraphX => "migraphx",
            Provider::CoreMl => "coreml",
            Provider::DirectMl => "directml",
        }
    }

    /// ONNX Runtime's name of the provider.
    pub fn ort_name(self) -> &'static str {
        match self {
            Provider::Auto => "auto",
            Provider::Cpu => ep::CPU::NAME,
            Provider::VitisAi => ep::Vitis::NAME,
            Provider::OpenVino => ep::OpenVINO::NAME,
            Provider::Cuda => ep::CUDA::NAME,
            Provider::Rocm => ep::ROCm::NAME,
            Provider::MigraphX => ep::MIGraphX::NAME,
            Provider::CoreMl => ep::CoreML::NAME,
            Provider::DirectMl => ep::DirectML::NAME,
        }
    }

    /// Whether the loaded ONNX Runtime was built with this provider.
    fn available(self) -> bool {
        let check = match self {
            Provider::Auto | Provider::Cpu => return true,
            Provider::VitisAi => ep::Vitis::is_available(),
            Provider::OpenVino => ep::OpenVINO::is_available(),
            Provider::Cuda => ep::CUDA::is_available(),
            Provider::Rocm => ep::ROCm::is_available(),
            Provider::MigraphX => ep::MIGraphX::is_available(),
            Provider::CoreMl => ep::CoreML::is_available(),
            Provider::DirectMl => ep::DirectML::is_available(),
        };
        check.unwrap_or(false)
    }

    /// Whether this provider runs on something other than the CPU cores the decoder uses: its
    /// encoder then runs on a worker thread, overlapping the next window with this one's decode.
    pub fn is_accelerator(self) -> bool {
        !matches!(self, Provider::Auto | Provider::Cpu)
    }
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => Provider::Auto,
            "cpu" => Provider::Cpu,
            "vitisai" | "vitis" => Provider::VitisAi,
            "openvino" => Provider::OpenVino,
            "cuda" => Provider::Cuda,
            "rocm" => Provider::Rocm,
            "migraphx" => Provider::MigraphX,
            "coreml" => Provider::CoreMl,
            "directml" | "dml" => Provider::DirectMl,
            _ => {
                return Err(format!(
                    "unknown execution provider `{s}` (known: {})",
                    Self::NAMES
                ));
            }
        })
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to run an ONNX model.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct OnnxOptions {
    pub provider: Provider,
    /// Passed to the provider (`config_file`, `cache_dir`, `device_type`, ...), in order.
    pub provider_options: Vec<(String, String)>,
    /// Threads of ONNX Runtime's own pool per session (0: one per core).
    pub threads: usize,
}

impl OnnxOptions {
    /// Parses `key=value;key=value` (the `execution-provider-options` property).
    pub fn parse_provider_options(text: &str) -> Result<Vec<(String, String)>, String> {
        text.split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("`{pair}` is not key=value"))?;
                let k = k.trim();
                if k.is_empty() {
                    return Err(format!("`{pair}` has an empty key"));
                }
                Ok((k.to_string(), v.trim().to_string()))
            })
            .collect()
    }
}

fn ort_err(path: &Path) -> impl Fn(ort::Error) -> ModelError + use<> {
    let path = path.to_path_buf();
    move |e| ModelError::Corrupt {
        path: path.clone(),
        what: format!("ONNX Runtime cannot load it: {e}"),
    }
}

fn run_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Engine {
        engine: "ONNX Runtime engine".into(),
        why: format!("{what}: {e}"),
    }
}

/// Registers `provider` with `options` on a session builder.
fn register(
    builder: &mut SessionBuilder,
    provider: Provider,
    options: &[(String, String)],
) -> Result<(), String> {
    fn with<E: ArbitrarilyConfigurableExecutionProvider>(mut e: E, o: &[(String, String)]) -> E {
        for (k, v) in o {
            e = e.with_arbitrary_config(k, v);
        }
        e
    }
    let device_id = || -> Result<i32, String> {
        options
            .iter()
            .find(|(k, _)| k == "device_id")
            .map(|(_, v)| {
                v.parse()
                    .map_err(|_| format!("device_id `{v}` is not a number"))
            })
            .transpose()
            .map(|d| d.unwrap_or(0))
    };
    let r = match provider {
        Provider::Auto | Provider::Cpu => return Ok(()),
        Provider::VitisAi => with(ep::Vitis::default(), options).register(builder),
        Provider::OpenVino => with(ep::OpenVINO::default(), options).register(builder),
        Provider::Cuda => with(ep::CUDA::default(), options).register(builder),
        Provider::Rocm => with(ep::ROCm::default(), options).register(builder),
        Provider::CoreMl => with(ep::CoreML::default(), options).register(builder),
        Provider::MigraphX => ep::MIGraphX::default()
            .with_device_id(device_id()?)
            .register(builder),
        Provider::DirectMl => ep::DirectML::default()
            .with_device_id(device_id()?)
            .register(builder),
    };
    r.map_err(|e| e.to_string())
}

/// One session and what it was made from.
struct Graph {
    session: Mutex<Session>,
    path: PathBuf,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl Graph {
    fn lock(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn has_output(&self, name: &str) -> bool {
        self.outputs.iter().any(|n| n == name)
    }
    /// Every name in `names` is an input (`outputs`: an output), else an error naming the file.
    fn require(&self, names: &[String], outputs: bool) -> Result<(), ModelError> {
        let have = if outputs { &self.outputs } else { &self.inputs };
        if let Some(missing) = names.iter().find(|n| !have.contains(n)) {
            return Err(ModelError::Corrupt {
                path: self.path.clone(),
                what: format!(
                    "no {} `{missing}` (it has {}: {}); not a Whisper export in Optimum's layout?",
                    if outputs { "output" } else { "input" },
                    if outputs { "outputs" } else { "inputs" },
                    have.join(", ")
                ),
            });
        }
        Ok(())
    }
}

/// A Whisper model's ONNX sessions.
pub struct OnnxModel {
    encoder: Graph,
    /// The decoder without past (merged: the merged file).
    decoder: Graph,
    /// `decoder_with_past_model.onnx` (split layout).
    with_past: Option<Graph>,
    layout: OnnxLayout,
    /// A static decoder's fixed sequence length (decoder-only layout).
    static_len: Option<usize>,
    /// The decoder outputs `cross_attentions.{i}`.
    attentions: bool,
    provider: Provider,
    library: PathBuf,
    layers: usize,
    heads: usize,
    head_dim: usize,
}

impl OnnxModel {
    /// Loads the sessions of the export in `dir` with the provider of `opts`.
    pub fn load(
        dir: &Path,
        layout: OnnxLayout,
        dims: &Dims,
        opts: &OnnxOptions,
    ) -> Result<Self, ModelError> {
        let (rt, _note) = runtime::default_runtime().map_err(|e| ModelError::Unsupported {
            path: dir.to_path_buf(),
            what: format!("ONNX export: {e}"),
        })?;
        let library = rt.library.clone();
        let lacks = |p: Provider| ModelError::Unsupported {
            path: dir.to_path_buf(),
            what: lacks_message(p, &library),
        };
        let provider = match opts.provider {
            Provider::Auto => Provider::ACCELERATORS
                .into_iter()
                .find(|p| p.available())
                .unwrap_or(Provider::Cpu),
            p if !p.available() => return Err(lacks(p)),
            p => p,
        };
        // OpenVINO (measured with ONNX Runtime 1.24.1's) gives wrong text from the merged
        // decoder's `If`: the split files, when the export has them (Optimum's default does).
        let layout = if layout == OnnxLayout::Merged && provider == Provider::OpenVino {
            if dir.join(OnnxLayout::DECODER).is_file()
                && dir.join(OnnxLayout::DECODER_WITH_PAST).is_file()
            {
                OnnxLayout::Split
            } else {
                return Err(ModelError::Unsupported {
                    path: dir.join(OnnxLayout::DECODER_MERGED),
                    what: "decoder for OpenVINO: its output is wrong with the merged decoder; \
                           export the split layout too (scripts/export-onnx --layout both)"
                        .into(),
                });
            }
        } else {
            layout
        };
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            opts.threads
        };
        let open = |file: &str| -> Result<Graph, ModelError> {
            let path = dir.join(file);
            let fail = ort_err(&path);
            let mut builder = Session::builder(&rt.environment)
                .map_err(&fail)?
                .with_intra_threads(threads)
                .map_err(|e| fail(e.into()))?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(|e| fail(e.into()))?;
            register(&mut builder, provider, &opts.provider_options).map_err(|why| {
                ModelError::Unsupported {
                    path: path.clone(),
                    what: format!(
                        "execution provider `{}` refused its options or the model: {why}",
                        provider.as_str()
                    ),
                }
            })?;
            let session = builder.commit_from_file(&path).map_err(&fail)?;
            let inputs = session
                .inputs()
                .iter()
                .map(|i| i.name().to_string())
                .collect();
            let outputs = session
                .outputs()
                .iter()
                .map(|o| o.name().to_string())
                .collect();
            Ok(Graph {
                session: Mutex::new(session),
                path,
                inputs,
                outputs,
            })
        };
        let encoder = open(OnnxLayout::ENCODER)?;
        encoder.require(&["input_features".into()], false)?;
        encoder.require(&["last_hidden_state".into()], true)?;
        let layers = dims.n_text_layer;
        let names = |prefix: &str, sides: &[&str]| -> Vec<String> {
            (0..layers)
                .flat_map(|i| {
                    sides.iter().flat_map(move |side| {
                        ["key", "value"].map(|kv| format!("{prefix}.{i}.{side}.{kv}"))
                    })
                })
                .collect()
        };
        let (decoder, with_past) = match layout {
            OnnxLayout::Merged => (open(OnnxLayout::DECODER_MERGED)?, None),
            OnnxLayout::Split => (
                open(OnnxLayout::DECODER)?,
                Some(open(OnnxLayout::DECODER_WITH_PAST)?),
            ),
            OnnxLayout::DecoderOnly => (open(OnnxLayout::DECODER)?, None),
        };
        decoder.require(&["input_ids".into(), "encoder_hidden_states".into()], false)?;
        decoder.require(&["logits".into()], true)?;
        if layout != OnnxLayout::DecoderOnly {
            decoder.require(&names("present", &["decoder", "encoder"]), true)?;
        }
        if layout == OnnxLayout::Merged {
            let mut inputs = names("past_key_values", &["decoder", "encoder"]);
            inputs.push("use_cache_branch".into());
            decoder.require(&inputs, false)?;
        }
        if let Some(past) = &with_past {
            let mut inputs = names("past_key_values", &["decoder", "encoder"]);
            inputs.push("input_ids".into());
            past.require(&inputs, false)?;
            let mut outputs = names("present", &["decoder"]);
            outputs.push("logits".into());
            past.require(&outputs, true)?;
        }
        let static_len = {
            let session = decoder.lock();
            session
                .inputs()
                .iter()
                .find(|i| i.name() == "input_ids")
                .and_then(|i| match i.dtype() {
                    ValueType::Tensor { shape, .. } => shape.get(1).copied(),
                    _ => None,
                })
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n > 0)
        };
        if let Some(n) = static_len
            && (layout != OnnxLayout::DecoderOnly || n < 8)
        {
            return Err(ModelError::Unsupported {
                path: decoder.path.clone(),
                what: format!(
                    "a decoder of fixed length {n} in the {} layout (static decoders come alone, \
                     without past, at least 8 tokens long)",
                    layout.as_str()
                ),
            });
        }
        let attentions = (0..layers).all(|i| decoder.has_output(&format!("cross_attentions.{i}")));
        Ok(Self {
            encoder,
            decoder,
            with_past,
            layout,
            static_len,
            attentions,
            provider,
            library,
            layers,
            heads: dims.n_text_head,
            head_dim: dims.n_text_state / dims.n_text_head,
        })
    }

    /// What runs it: the provider, the layout and the library.
    pub fn description(&self) -> String {
        format!(
            "{}, {} decoder{}{}, {}",
            self.provider.ort_name(),
            self.layout.as_str(),
            self.static_len
                .map(|n| format!(" of fixed length {n}"))
                .unwrap_or_default(),
            if self.attentions {
                ""
            } else {
                ", no cross-attention outputs (no word timestamps)"
            },
            self.library.display()
        )
    }

    /// The execution provider in use (never `Auto`).
    pub fn provider(&self) -> Provider {
        self.provider
    }

    pub fn layout(&self) -> OnnxLayout {
        self.layout
    }
}

/// Loads ONNX Runtime (if not yet) and resolves `provider`: `Auto` to the first accelerator the
/// library has, else the CPU; a named provider must be in the library. The error names the
/// provider and the library, and says what to do.
pub fn resolve_provider(provider: Provider) -> Result<Provider, String> {
    let (rt, _) = runtime::default_runtime().map_err(|e| e.to_string())?;
    match provider {
        Provider::Auto => Ok(Provider::ACCELERATORS
            .into_iter()
            .find(|p| p.available())
            .unwrap_or(Provider::Cpu)),
        p if p.available() => Ok(p),
        p => Err(lacks_message(p, &rt.library)),
    }
}

fn lacks_message(p: Provider, library: &Path) -> String {
    format!(
        "execution provider `{}` ({}): the ONNX Runtime library {} lacks it (it has: {}); set \
         ORT_DYLIB_PATH to a build that has it (for example the capi/ folder of the \
         onnxruntime-openvino wheel, Ryzen AI Software's or a GPU build's onnxruntime), or use \
         execution-provider=cpu",
        p.as_str(),
        p.ort_name(),
        library.display(),
        available_providers().join(", ")
    )
}

/// The providers the loaded ONNX Runtime has, among those this engine knows.
pub fn available_providers() -> Vec<&'static str> {
    std::iter::once(Provider::Cpu)
        .chain(Provider::ACCELERATORS)
        .filter(|p| p.available())
        .map(Provider::ort_name)
        .collect()
}

fn onnx(model: &WhisperModel) -> &OnnxModel {
    match &model.weights {
        ModelWeights::Onnx(o) => o,
        ModelWeights::Cpu(_) => unreachable!("an ONNX engine object on a native model"),
    }
}

/// The ONNX engine's [`Encoder`].
pub struct OnnxEncoder {
    model: Arc<WhisperModel>,
}

impl OnnxEncoder {
    pub fn new(model: Arc<WhisperModel>) -> Self {
        Self { model }
    }
}

impl Encoder for OnnxEncoder {
    fn encode(&mut self, mel: &[f32], out: &mut [f32], _threads: usize) -> Result<(), Error> {
        let m = onnx(&self.model);
        let n_mels = self.model.dims.n_mels;
        let input = TensorRef::from_array_view(([1usize, n_mels, mel.len() / n_mels], mel))
            .map_err(|e| run_err("encoder input", e))?;
        let mut session = m.encoder.lock();
        let outputs = session
            .run(ort::inputs!["input_features" => input])
            .map_err(|e| run_err("encoder", e))?;
        let (_, data) = outputs["last_hidden_state"]
            .try_extract_tensor::<f32>()
            .map_err(|e| run_err("encoder output", e))?;
        if data.len() != out.len() {
            return Err(run_err(
                "encoder output",
                format!("{} values, expected {}", data.len(), out.len()),
            ));
        }
        out.copy_from_slice(data);
        Ok(())
    }
}

/// One sequence's state.
struct Sequence {
    /// Every token fed so far.
    tokens: Vec<u32>,
    /// Per layer, the self-attention cache (key, value) `[1, heads, len, head_dim]`.
    past: Vec<(DynValue, DynValue)>,
}

/// The ONNX engine's [`Decoder`]: sequences decoded one at a time on a shared encoder K/V.
pub struct OnnxDecoder {
    model: Arc<WhisperModel>,
    max_batch: usize,
    /// The window's encoder output `[1, 1500, d]`.
    audio: Option<Tensor<f32>>,
    /// Per layer, the window's cross-attention (key, value), from the first pass.
    cross: Option<Vec<(DynValue, DynValue)>>,
    seqs: Vec<Sequence>,
    len: usize,
    /// `[2 * max_batch][vocab]`.
    logits: Vec<f32>,
    /// Logits of every position of the last [`Decoder::forward_capture`] `[n][vocab]`.
    capture_logits: Vec<f32>,
}

impl OnnxDecoder {
    pub fn new(model: Arc<WhisperModel>, max_batch: usize) -> Self {
        let vocab = model.dims.n_vocab;
        Self {
            max_batch: max_batch.max(1),
            audio: None,
            cross: None,
            seqs: vec![Sequence {
                tokens: Vec::new(),
                past: Vec::new(),
            }],
            len: 0,
            logits: vec![0.0; 2 * max_batch.max(1) * vocab],
            capture_logits: Vec::new(),
            model,
        }
    }

    fn empty_past(&self) -> Result<DynValue, Error> {
        let m = onnx(&self.model);
        Tensor::<f32>::from_array(([1usize, m.heads, 0, m.head_dim], Vec::<f32>::new()))
            .map(|t| t.into_dyn())
            .map_err(|e| run_err("empty past", e))
    }

    /// Runs the decoder on all of `tokens` without past (the first step, the decoder-only
    /// layout, a capture): returns the outputs. `attentions`: keep `cross_attentions.*`.
    fn run_full<'s>(
        m: &'s OnnxModel,
        audio: &Tensor<f32>,
        tokens: &[u32],
        session: &'s mut Session,
    ) -> Result<SessionOutputs<'s>, Error> {
        let n = m.static_len.unwrap_or(tokens.len());
        if tokens.len() > n {
            return Err(run_err(
                "decoder",
                format!(
                    "{} tokens do not fit the static decoder's {n}",
                    tokens.len()
                ),
            ));
        }
        // A static decoder: the sequence padded (with end-of-text, as AMD's demo does; the
        // causal mask keeps the padding out of the real positions).
        let pad = tokens.last().copied().unwrap_or(0);
        let ids: Vec<i64> = tokens
            .iter()
            .map(|&t| i64::from(t))
            .chain(std::iter::repeat_n(i64::from(pad), n - tokens.len()))
            .collect();
        let ids = Tensor::from_array(([1usize, n], ids)).map_err(|e| run_err("input_ids", e))?;
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![
            ("input_ids".into(), ids.into()),
            ("encoder_hidden_states".into(), audio.into()),
        ];
        // The merged decoder's first branch ignores the past, but every input must be fed: a
        // dummy of one position (as Optimum does; OpenVINO gives garbage for zero-length ones).
        let dummy;
        if m.layout == OnnxLayout::Merged {
            dummy = Tensor::<f32>::from_array((
                [1usize, m.heads, 1, m.head_dim],
                vec![0.0; m.heads * m.head_dim],
            ))
            .map_err(|e| run_err("dummy past", e))?;
            for i in 0..m.layers {
                for side in ["decoder", "encoder"] {
                    for kv in ["key", "value"] {
                        inputs.push((
                            format!("past_key_values.{i}.{side}.{kv}").into(),
                            (&dummy).into(),
                        ));
                    }
                }
            }
            let branch = Tensor::from_array(([1usize], vec![false]))
                .map_err(|e| run_err("use_cache_branch", e))?;
            inputs.push(("use_cache_branch".into(), branch.into()));
        }
        session.run(inputs).map_err(|e| run_err("decoder", e))
    }

    /// The logits row at `pos` of a `[1, n, vocab]` output into `dst`.
    fn copy_row(
        outputs: &SessionOutputs<'_>,
        pos: usize,
        vocab: usize,
        dst: &mut [f32],
    ) -> Result<(), Error> {
        let (_, data) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .map_err(|e| run_err("logits", e))?;
        let row = data
            .get(pos * vocab..(pos + 1) * vocab)
            .ok_or_else(|| run_err("logits", format!("no row {pos}")))?;
        dst.copy_from_slice(row);
        Ok(())
    }

    /// Feeds `new` tokens to sequence `b`; writes the logits of its last position into
    /// `last` and, with `extra`, of that position among the new tokens into `extra_row`.
    fn step(
        &mut self,
        b: usize,
        new: &[u32],
        extra: Option<usize>,
        rows: (usize, Option<usize>),
    ) -> Result<(), Error> {
        let m = onnx(&self.model);
        let vocab = self.model.dims.n_vocab;
        let audio = self
            .audio
            .as_ref()
            .ok_or_else(|| run_err("decoder", "no audio set"))?;
        let seq = &mut self.seqs[b];
        let start = seq.tokens.len();
        seq.tokens.extend_from_slice(new);
        let (last_row, extra_row) = rows;
        fn row(logits: &mut [f32], i: usize, vocab: usize) -> &mut [f32] {
            &mut logits[i * vocab..(i + 1) * vocab]
        }
        if let Some(n) = m.static_len
            && seq.tokens.len() > n
        {
            // Past the static decoder's length: the text of this window ends here.
            let eot = self.model.tokenizer.specials.eot as usize;
            for r in std::iter::once(last_row).chain(extra_row) {
                let dst = row(&mut self.logits, r, vocab);
                dst.fill(f32::NEG_INFINITY);
                dst[eot] = 0.0;
            }
            return Ok(());
        }
        if m.layout == OnnxLayout::DecoderOnly || (start == 0 && self.cross.is_none()) {
            // Whole sequence, no past.
            let mut session = m.decoder.lock();
            let mut outputs = Self::run_full(m, audio, &seq.tokens, &mut session)?;
            let n = seq.tokens.len();
            Self::copy_row(
                &outputs,
                n - 1,
                vocab,
                row(&mut self.logits, last_row, vocab),
            )?;
            if let (Some(e), Some(r)) = (extra, extra_row) {
                Self::copy_row(&outputs, start + e, vocab, row(&mut self.logits, r, vocab))?;
            }
            if m.layout != OnnxLayout::DecoderOnly {
                let mut take = |name: String| {
                    outputs
                        .remove(&name)
                        .ok_or_else(|| run_err("decoder", format!("no output {name}")))
                };
                let mut past = Vec::with_capacity(m.layers);
                let mut cross = Vec::with_capacity(m.layers);
                for i in 0..m.layers {
                    past.push((
                        take(format!("present.{i}.decoder.key"))?,
                        take(format!("present.{i}.decoder.value"))?,
                    ));
                    cross.push((
                        take(format!("present.{i}.encoder.key"))?,
                        take(format!("present.{i}.encoder.value"))?,
                    ));
                }
                seq.past = past;
                self.cross = Some(cross);
            }
            return Ok(());
        }
        if start == 0 {
            // Another sequence's first step on the same window: the cross K/V are known, but
            // the self-attention cache must start empty.
            let e = self.empty_past()?;
            let seq = &mut self.seqs[b];
            seq.past = (0..m.layers)
                .map(|_| Ok((clone_value(&e)?, clone_value(&e)?)))
                .collect::<Result<_, Error>>()?;
        }
        let seq = &mut self.seqs[b];
        let cross = self
            .cross
            .as_ref()
            .ok_or_else(|| run_err("decoder", "no cross-attention cache"))?;
        let ids: Vec<i64> = new.iter().map(|&t| i64::from(t)).collect();
        let ids =
            Tensor::from_array(([1usize, new.len()], ids)).map_err(|e| run_err("input_ids", e))?;
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            vec![("input_ids".into(), ids.into())];
        for (i, ((k, v), (ck, cv))) in seq.past.iter().zip(cross).enumerate() {
            inputs.push((
                format!("past_key_values.{i}.decoder.key").into(),
                k.view().into(),
            ));
            inputs.push((
                format!("past_key_values.{i}.decoder.value").into(),
                v.view().into(),
            ));
            inputs.push((
                format!("past_key_values.{i}.encoder.key").into(),
                ck.view().into(),
            ));
            inputs.push((
                format!("past_key_values.{i}.encoder.value").into(),
                cv.view().into(),
            ));
        }
        let graph = match (&m.with_past, m.layout) {
            (Some(g), _) => g,
            (None, _) => {
                inputs.push(("encoder_hidden_states".into(), audio.into()));
                let branch = Tensor::from_array(([1usize], vec![true]))
                    .map_err(|e| run_err("use_cache_branch", e))?;
                inputs.push(("use_cache_branch".into(), branch.into()));
                &m.decoder
            }
        };
        let mut session = graph.lock();
        let mut outputs = session.run(inputs).map_err(|e| run_err("decoder", e))?;
        Self::copy_row(
            &outputs,
            new.len() - 1,
            vocab,
            row(&mut self.logits, last_row, vocab),
        )?;
        if let (Some(e), Some(r)) = (extra, extra_row) {
            Self::copy_row(&outputs, e, vocab, row(&mut self.logits, r, vocab))?;
        }
        let mut past = Vec::with_capacity(m.layers);
        for i in 0..m.layers {
            let mut take = |name: String| {
                outputs
                    .remove(&name)
                    .ok_or_else(|| run_err("decoder", format!("no output {name}")))
            };
            past.push((
                take(format!("present.{i}.decoder.key"))?,
                take(format!("present.{i}.decoder.value"))?,
            ));
        }
        drop(outputs);
        drop(session);
        self.seqs[b].past = past;
        Ok(())
    }
}

/// A copy of a float tensor.
fn clone_value(v: &DynValue) -> Result<DynValue, Error> {
    let (shape, data) = v
        .try_extract_tensor::<f32>()
        .map_err(|e| run_err("cache copy", e))?;
    let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    Tensor::from_array((dims, data.to_vec()))
        .map(|t| t.into_dyn())
        .map_err(|e| run_err("cache copy", e))
}

impl Decoder for OnnxDecoder {
    fn set_audio(&mut self, encoder_out: &[f32], _threads: usize) -> Result<(), Error> {
        let d = self.model.dims.n_audio_state;
        let t = encoder_out.len() / d;
        self.audio = Some(
            Tensor::from_array(([1usize, t, d], encoder_out.to_vec()))
                .map_err(|e| run_err("encoder_hidden_states", e))?,
        );
        self.cross = None;
        self.reset(1);
        Ok(())
    }

    fn reset(&mut self, batch: usize) {
        self.seqs = (0..batch.clamp(1, self.max_batch))
            .map(|_| Sequence {
                tokens: Vec::new(),
                past: Vec::new(),
            })
            .collect();
        self.len = 0;
    }

    fn reorder(&mut self, sources: &[usize]) {
        let mut next = Vec::with_capacity(sources.len());
        for &s in sources.iter().take(self.max_batch) {
            let src = &self.seqs[s.min(self.seqs.len() - 1)];
            let past = src
                .past
                .iter()
                .map(|(k, v)| Ok((clone_value(k)?, clone_value(v)?)))
                .collect::<Result<Vec<_>, Error>>()
                // A failed copy leaves an empty cache; the next step then fails with an error.
                .unwrap_or_default();
            next.push(Sequence {
                tokens: src.tokens.clone(),
                past,
            });
        }
        self.seqs = next;
    }

    fn forward(
        &mut self,
        tokens: &[u32],
        extra: Option<usize>,
        _threads: usize,
    ) -> Result<(), Error> {
        let batch = self.seqs.len();
        let n = tokens.len() / batch;
        if n == 0 || n * batch != tokens.len() {
            return Err(run_err(
                "decoder",
                format!("{} tokens for {batch} sequences", tokens.len()),
            ));
        }
        for b in 0..batch {
            let rows = (b, extra.map(|_| batch + b));
            self.step(b, &tokens[b * n..(b + 1) * n], extra, rows)?;
        }
        self.len += n;
        Ok(())
    }

    fn logits_row(&self, i: usize) -> &[f32] {
        let v = self.model.dims.n_vocab;
        &self.logits[i * v..(i + 1) * v]
    }

    fn len(&self) -> usize {
        self.len
    }

    fn batch(&self) -> usize {
        self.seqs.len()
    }

    fn can_capture(&self) -> bool {
        onnx(&self.model).attentions
    }

    fn forward_capture(
        &mut self,
        tokens: &[u32],
        heads: &[(usize, usize)],
        frames: usize,
        _threads: usize,
    ) -> Result<Vec<f32>, Error> {
        let m = onnx(&self.model);
        if !m.attentions {
            return Err(run_err(
                "word timing",
                "this ONNX export has no cross_attentions outputs: export it again with \
                 scripts/export-onnx (or Optimum with output_attentions)",
            ));
        }
        let audio = self
            .audio
            .as_ref()
            .ok_or_else(|| run_err("decoder", "no audio set"))?;
        let n = tokens.len();
        let vocab = self.model.dims.n_vocab;
        let mut session = m.decoder.lock();
        let outputs = Self::run_full(m, audio, tokens, &mut session)?;
        let frames = frames.clamp(1, self.model.dims.n_audio_ctx);
        let mut out = vec![0.0f32; heads.len() * n * frames];
        for (k, &(l, h)) in heads.iter().enumerate() {
            let name = format!("cross_attentions.{l}");
            let (shape, data) = outputs[name.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(|e| run_err("cross_attentions", e))?;
            // [1, heads, len, keys]
            let (len, keys) = (shape[2].max(0) as usize, shape[3].max(0) as usize);
            if h >= m.heads || len < n || keys < frames {
                return Err(run_err(
                    "cross_attentions",
                    format!("shape {shape:?} for head {h} of {n} tokens"),
                ));
            }
            for i in 0..n {
                let row = &data[(h * len + i) * keys..][..frames];
                let sum: f32 = row.iter().sum::<f32>().max(f32::MIN_POSITIVE);
                for (o, &p) in out[(k * n + i) * frames..][..frames].iter_mut().zip(row) {
                    *o = p / sum;
                }
            }
        }
        let (_, logits) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .map_err(|e| run_err("logits", e))?;
        self.capture_logits.clear();
        self.capture_logits.extend_from_slice(&logits[..n * vocab]);
        drop(outputs);
        drop(session);
        self.reset(1);
        self.len = n;
        Ok(out)
    }

    fn next_token_probabilities(
        &mut self,
        tokens: &[u32],
        from: usize,
        eot: usize,
        _threads: usize,
    ) -> Result<Vec<f32>, Error> {
        let vocab = self.model.dims.n_vocab;
        let eot = eot.min(vocab);
        let mut out = Vec::new();
        for r in from..tokens.len().saturating_sub(1) {
            let row = self
                .capture_logits
                .get(r * vocab..r * vocab + eot)
                .ok_or_else(|| run_err("word probabilities", "no captured logits"))?;
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|&l| (l - max).exp()).sum();
            let target = tokens[r + 1] as usize;
            out.push(row.get(target).map_or(0.0, |&l| (l - max).exp() / sum));
        }
        Ok(out)
    }
}
