//! The `whispernpu` GStreamer element: 16 kHz mono audio in, one timed text buffer per phrase out.
//!
//! ```text
//! gst-launch-1.0 filesrc location=talk.wav ! decodebin ! audioconvert ! audioresample \
//!     ! whispernpu model=base ! srtenc ! filesink location=talk.srt
//! ```
//!
//! * Sink: `audio/x-raw, format={F32LE,S16LE}, rate=16000, channels=1, layout=interleaved`.
//! * Src: `text/x-raw, format={utf8,pango-markup}`; each buffer is one segment (phrase) with PTS =
//!   its start and duration = end − start. Stretches without text are covered by GAP events; a
//!   language tag event follows once the language is known.
//! * Bus: an element message `whispernpu-segment` per segment (`start`, `end` in ns, `text`,
//!   `language`, `avg-logprob`, `no-speech-prob`), Progress messages while the model loads.
//!
//! Processing runs on a worker thread that owns the engine; the streaming thread only converts
//! and queues audio. Non-live streams use the offline long-form algorithm (the same text as
//! `examples/transcribe`); live streams are decoded in chunks of `latency` minus headroom (see
//! [`policy`]). Timestamps: see [`timeline`].

mod arrival;
mod imp;
pub mod policy;
pub mod timeline;

use std::sync::Arc;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use crate::engine::WhisperModel;

glib::wrapper! {
    /// The `whispernpu` element.
    pub struct WhisperNpu(ObjectSubclass<imp::WhisperNpu>) @extends gst::Element, gst::Object;
}

impl WhisperNpu {
    /// The model this element uses, once loaded (instances naming the same model share it).
    pub fn model(&self) -> Option<Arc<WhisperModel>> {
        self.imp().loaded_model()
    }
}

/// Engine backend (`backend` property).
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstWhisperNpuBackend")]
pub enum Backend {
    /// The NPU when the probe finds a device, XRT and a built encoder, else the CPU (no encoder
    /// artifact has been built yet, so the CPU).
    #[default]
    #[enum_value(
        name = "Auto: npu when an amdxdna device, XRT and a built encoder are all found (none is built yet), else onnx when the model directory holds an ONNX export and ONNX Runtime has an accelerator, else cpu (onnx on the CPU for an ONNX-only model)",
        nick = "auto"
    )]
    Auto,
    #[enum_value(name = "Cpu: native Rust engine", nick = "cpu")]
    Cpu,
    /// Written, never run on an NPU.
    #[enum_value(
        name = "Npu: AMD Ryzen AI NPU through XRT (never run on an NPU; NULL→READY fails naming any missing part)",
        nick = "npu"
    )]
    Npu,
    #[enum_value(
        name = "Onnx: ONNX Runtime on an ONNX export (Optimum layout, scripts/export-onnx) with the execution provider of execution-provider: CPU, Vitis AI (Ryzen AI NPU), OpenVINO, CUDA, ...",
        nick = "onnx"
    )]
    Onnx,
    #[enum_value(
        name = "NpuSim: the NPU host code on a simulated device running the encoder's golden model on the CPU (slow; for checking the design)",
        nick = "npu-sim"
    )]
    NpuSim,
}

/// Numeric precision (`compute-type` property); see [`crate::engine::ComputeType`].
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstWhisperNpuComputeType")]
pub enum ComputeTypeMode {
    #[default]
    #[enum_value(
        name = "Auto: fastest type whose accuracy holds (int8-bf16 on Intel AMX or with AVX512_BF16 and VNNI, bf16 with AVX512_BF16 alone, else f32)",
        nick = "auto"
    )]
    Auto,
    #[enum_value(
        name = "F32: weights as stored (f16 checkpoints kept in f16)",
        nick = "f32"
    )]
    F32,
    #[enum_value(name = "Int8: int8 decoder weights, f32 encoder", nick = "int8")]
    Int8,
    #[enum_value(
        name = "Bf16: bf16 encoder products (Intel AMX, or AVX512_BF16 on AMD, where available), decoder as f32",
        nick = "bf16"
    )]
    Bf16,
    #[enum_value(
        name = "Int8-bf16: encoder linear layers int8 (AVX512-VNNI), attention bf16, decoder as f32",
        nick = "int8-bf16"
    )]
    Int8Bf16,
}

impl From<ComputeTypeMode> for crate::engine::ComputeType {
    fn from(m: ComputeTypeMode) -> Self {
        match m {
            ComputeTypeMode::Auto => Self::Auto,
            ComputeTypeMode::F32 => Self::F32,
            ComputeTypeMode::Int8 => Self::Int8,
            ComputeTypeMode::Bf16 => Self::Bf16,
            ComputeTypeMode::Int8Bf16 => Self::Int8Bf16,
        }
    }
}

/// ONNX Runtime execution provider (`execution-provider` property); see
/// [`crate::engine::onnx::Provider`].
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstWhisperNpuExecutionProvider")]
pub enum ExecutionProvider {
    #[default]
    #[enum_value(
        name = "Auto: the first accelerator the ONNX Runtime library has (Vitis AI, CUDA, ROCm, MIGraphX, DirectML, CoreML, OpenVINO), else the CPU",
        nick = "auto"
    )]
    Auto,
    #[enum_value(name = "Cpu: ONNX Runtime's CPU provider", nick = "cpu")]
    Cpu,
    #[enum_value(
        name = "VitisAi: AMD Ryzen AI NPU (Ryzen AI Software's ONNX Runtime)",
        nick = "vitisai"
    )]
    VitisAi,
    #[enum_value(
        name = "OpenVino: Intel OpenVINO (CPU, GPU, NPU; the onnxruntime-openvino build)",
        nick = "openvino"
    )]
    OpenVino,
    #[enum_value(name = "Cuda: NVIDIA CUDA", nick = "cuda")]
    Cuda,
    #[enum_value(name = "Rocm: AMD ROCm", nick = "rocm")]
    Rocm,
    #[enum_value(name = "Migraphx: AMD MIGraphX", nick = "migraphx")]
    Migraphx,
    #[enum_value(name = "Coreml: Apple CoreML", nick = "coreml")]
    Coreml,
    #[enum_value(name = "Directml: Windows DirectML", nick = "directml")]
    Directml,
}

impl From<ExecutionProvider> for crate::engine::onnx::Provider {
    fn from(p: ExecutionProvider) -> Self {
        use crate::engine::onnx::Provider as P;
        match p {
            ExecutionProvider::Auto => P::Auto,
            ExecutionProvider::Cpu => P::Cpu,
            ExecutionProvider::VitisAi => P::VitisAi,
            ExecutionProvider::OpenVino => P::OpenVino,
            ExecutionProvider::Cuda => P::Cuda,
            ExecutionProvider::Rocm => P::Rocm,
            ExecutionProvider::Migraphx => P::MigraphX,
            ExecutionProvider::Coreml => P::CoreMl,
            ExecutionProvider::Directml => P::DirectMl,
        }
    }
}

/// Decoder task (`task` property).
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstWhisperNpuTask")]
pub enum TaskMode {
    #[default]
    #[enum_value(name = "Transcribe: text in the spoken language", nick = "transcribe")]
    Transcribe,
    #[enum_value(
        name = "Translate: English text from any language (multilingual models)",
        nick = "translate"
    )]
    Translate,
}

/// Processing mode (`mode` property).
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstWhisperNpuMode")]
pub enum Mode {
    /// Live when the upstream LATENCY query says live, else offline.
    #[default]
    #[enum_value(name = "Auto: live when upstream is live", nick = "auto")]
    Auto,
    #[enum_value(name = "Offline: 30 s windows, long-form algorithm", nick = "offline")]
    Offline,
    #[enum_value(name = "Live: chunks of latency minus headroom", nick = "live")]
    Live,
}

/// What each text buffer holds (`output` property).
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstWhisperNpuOutput")]
pub enum OutputMode {
    #[default]
    #[enum_value(
        name = "Segments: one buffer per transcribed segment",
        nick = "segments"
    )]
    Segments,
    #[enum_value(
        name = "Words: one buffer per word, with the word's time (cross-attention alignment)",
        nick = "words"
    )]
    Words,
}

/// A caption layout by name (`caption-preset` property): setting it sets `max-line-length`,
/// `max-lines` and `max-words-per-line` (see [`crate::transcribe::CAPTION_PRESETS`]).
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstWhisperNpuCaptionPreset")]
pub enum CaptionPreset {
    #[default]
    #[enum_value(name = "None: no shaping, one buffer per segment", nick = "none")]
    None,
    #[enum_value(
        name = "Cea608RollUp2: CEA-608 roll-up, 2 rows of 32 columns (max-line-length=32 max-lines=2)",
        nick = "cea608-roll-up-2"
    )]
    Cea608RollUp2,
    #[enum_value(
        name = "Cea608RollUp3: CEA-608 roll-up, 3 rows of 32 columns (max-line-length=32 max-lines=3)",
        nick = "cea608-roll-up-3"
    )]
    Cea608RollUp3,
}

impl CaptionPreset {
    /// The layout this preset stands for.
    pub fn layout(self) -> crate::transcribe::CaptionLayout {
        let name = match self {
            CaptionPreset::None => "none",
            CaptionPreset::Cea608RollUp2 => "cea608-roll-up-2",
            CaptionPreset::Cea608RollUp3 => "cea608-roll-up-3",
        };
        crate::transcribe::CaptionLayout::preset(name).expect("every preset is in the table")
    }
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "whispernpu",
        gst::Rank::NONE,
        WhisperNpu::static_type(),
    )
}
