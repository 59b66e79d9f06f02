//! The host side of the NPU encoder, written once over [`NpuDevice`]:
//!
//! - at construction: buffer objects allocated for the kernel's arguments in the manifest's
//!   order and sizes, the encoder weights packed once into the weights BO in the kernels' tiled
//!   bf16 layout ([`super::golden::pack_weights`]), the instruction stream copied into its BO,
//!   scratch / input / output zeroed, everything synced to the device;
//! - per window ([`NpuEncoder::encode`]): the mel written into the input BO (time-major bf16),
//!   synced to the device, exactly one run with every argument in the manifest's order, a wait
//!   with a timeout, the output BO synced back and read.
//!
//! [`NpuEncoder::sim`] runs it on the simulated device (the golden model executes each run:
//! `backend=npu-sim`); `super::xrt::open` (feature `npu`) on XRT. The tests exercise this host
//! logic through the simulator, which checks the buffer-object protocol; only the thin XRT
//! adapter is left unexecuted where there is no NPU.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::device::{BoHandle, BoKind, DeviceError, NpuDevice, RunArg, SyncDir};
use super::golden::{self, GoldenError};
use super::golden_kernels::to_bf16;
use super::manifest::{Arg, ArgKind, Direction, ManifestError, first_arg_difference, kernel_args};
use super::sim::SimDevice;
use super::tiling::Plan;
use crate::engine::WhisperModel;

/// How long the host waits for one run (one window). The design's estimate is ~25–55 ms per
/// window (README "Cost model"); the first run after the device's autosuspend ≈ 136 ms.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the NPU encoder.
#[derive(Debug, thiserror::Error)]
pub enum NpuError {
    #[error(transparent)]
    Golden(#[from] GoldenError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The manifest's argument layout is not the one the design (and this host) uses.
    #[error("NPU argument layout from {source_name}: {why}")]
    Layout { source_name: String, why: String },
    #[error("cannot read the NPU instruction stream {path}: {why}")]
    Instructions { path: PathBuf, why: String },
    #[error("NPU {what}: {source}")]
    Device {
        what: &'static str,
        #[source]
        source: DeviceError,
    },
}

fn dev(what: &'static str) -> impl FnOnce(DeviceError) -> NpuError {
    move |source| NpuError::Device { what, source }
}

/// Checks that `layout` (a manifest's `args`) is the design's for `plan`: same arguments in
/// the same order, kinds, fixed values, memory groups and buffer sizes.
pub fn check_layout(layout: &[Arg], plan: &Plan, source_name: &str) -> Result<(), NpuError> {
    let want = kernel_args(plan);
    let err = |why: String| NpuError::Layout {
        source_name: source_name.into(),
        why,
    };
    if layout.len() != want.len() {
        return Err(err(format!(
            "{} arguments, the design has {} ({})",
            layout.len(),
            want.len(),
            want.iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    // The buffer objects depend on these; dtype and direction only describe them.
    let fields = &["index", "name", "kind", "value", "group_id", "bytes"];
    if let Some((i, field, found, expected)) = first_arg_difference(layout, &want, fields) {
        return Err(err(format!(
            "args[{i}].{field} is {found}, the design (src/npu/tiling.rs Plan) needs {expected}"
        )));
    }
    Ok(())
}

/// The NPU encoder of one model on device `D`: packed weights and preallocated buffer objects.
pub struct NpuEncoder<D: NpuDevice> {
    device: D,
    plan: Plan,
    layout: Vec<Arg>,
    input: BoHandle,
    output: BoHandle,
    /// Every argument of a run, built once.
    run_args: Vec<RunArg>,
    /// The window's mel, time-major bf16, before it is copied into the input BO.
    staging: Vec<u16>,
    frames: usize,
    timeout: Duration,
    dispatches: u64,
}

impl NpuEncoder<SimDevice> {
    /// The encoder on the simulated device: the golden model executes each run
    /// (`backend=npu-sim`). The argument layout is the design's ([`kernel_args`]); the
    /// instruction stream a stand-in the simulator checks ([`super::sim::instruction_stream`]).
    pub fn sim(model: &WhisperModel) -> Result<Self, NpuError> {
        let plan = golden::plan_for(model)?;
        let layout = kernel_args(&plan);
        let instructions = super::sim::instruction_stream(&plan);
        let device = SimDevice::new(plan.clone(), layout.clone());
        Self::new(
            device,
            model,
            plan,
            layout,
            &instructions,
            "the design",
            RUN_TIMEOUT,
        )
    }

    /// [`encode`](Self::encode), calling `probe(layer, x)` with the residual stream after each
    /// layer (the simulator's debugging view; see [`super::golden::Machine::run`]).
    pub fn encode_probed(
        &mut self,
        mel: &[f32],
        out: &mut [f32],
        probe: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), NpuError> {
        self.encode_with(mel, out, |device, args, timeout| {
            device.start_probed(args, probe)?;
            device.wait(timeout)
        })
    }
}

impl<D: NpuDevice> NpuEncoder<D> {
    /// Allocates the BOs of `layout` (checked against the design first), packs the weights of
    /// `model` once into the weights BO, loads `instructions`, zeroes the rest and syncs
    /// everything to the device. `source_name` names where `layout` came from, for errors.
    pub fn new(
        mut device: D,
        model: &WhisperModel,
        plan: Plan,
        layout: Vec<Arg>,
        instructions: &[u32],
        source_name: &str,
        timeout: Duration,
    ) -> Result<Self, NpuError> {
        check_layout(&layout, &plan, source_name)?;
        if instructions.is_empty() {
            return Err(NpuError::Layout {
                source_name: source_name.into(),
                why: "the instruction stream is empty".into(),
            });
        }
        let weights = golden::pack_weights(model, &plan)?;
        let mut handles: Vec<Option<BoHandle>> = Vec::with_capacity(layout.len());
        let mut run_args = Vec::with_capacity(layout.len());
        let mut by_name = std::collections::HashMap::new();
        for (i, arg) in layout.iter().enumerate() {
            match arg.kind {
                ArgKind::Scalar => {
                    let value = match (arg.value, arg.name.as_str()) {
                        (Some(v), _) => v,
                        (None, "instruction_count") => instructions.len() as u64,
                        (None, name) => {
                            return Err(NpuError::Layout {
                                source_name: source_name.into(),
                                why: format!("scalar argument `{name}` has no value"),
                            });
                        }
                    };
                    let value = u32::try_from(value).map_err(|_| NpuError::Layout {
                        source_name: source_name.into(),
                        why: format!("scalar `{}` = {value} does not fit 32 bits", arg.name),
                    })?;
                    run_args.push(RunArg::U32(value));
                    handles.push(None);
                }
                ArgKind::Instructions => {
                    let bo = device
                        .alloc_bo(instructions.len() * 4, BoKind::Instructions, i)
                        .map_err(dev("instruction buffer allocation"))?;
                    let bytes = device.map(bo).map_err(dev("instruction buffer map"))?;
                    for (dst, w) in bytes.chunks_exact_mut(4).zip(instructions) {
                        dst.copy_from_slice(&w.to_ne_bytes());
                    }
                    device
                        .sync(bo, SyncDir::ToDevice)
                        .map_err(dev("instruction buffer sync"))?;
                    run_args.push(RunArg::Bo(bo));
                    handles.push(Some(bo));
                }
                ArgKind::Buffer => {
                    let size = arg.bytes.unwrap_or(0) as usize;
                    let bo = device
                        .alloc_bo(size, BoKind::Data, i)
                        .map_err(dev("buffer allocation"))?;
                    let bytes = &mut device.map(bo).map_err(dev("buffer map"))?[..size];
                    if arg.name == "weights" {
                        // Packed once, here; never written again.
                        bytes.copy_from_slice(&weights.as_bytes()[..size]);
                    } else {
                        bytes.fill(0);
                    }
                    if arg.direction != Some(Direction::Out) {
                        device
                            .sync(bo, SyncDir::ToDevice)
                            .map_err(dev("buffer sync"))?;
                    }
                    by_name.insert(arg.name.clone(), bo);
                    run_args.push(RunArg::Bo(bo));
                    handles.push(Some(bo));
                }
            }
        }
        drop(weights);
        let (input, output) = (by_name["mel"], by_name["encoder_out"]);
        let frames = 2 * plan.t;
        Ok(Self {
            device,
            staging: vec![0; frames * plan.n_mels],
            frames,
            plan,
            layout,
            input,
            output,
            run_args,
            timeout,
            dispatches: 0,
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The kernel arguments, in order.
    pub fn layout(&self) -> &[Arg] {
        &self.layout
    }

    /// The arguments every run gets, in the layout's order.
    pub fn run_args(&self) -> &[RunArg] {
        &self.run_args
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Runs started so far (one per [`encode`](Self::encode)).
    pub fn dispatches(&self) -> u64 {
        self.dispatches
    }

    /// Encodes one window: `mel` `[n_mels][3000]` (the CPU engine's layout), `out` `[1500][d]`.
    /// A run that fails or times out is an error and `out` is left as it was.
    pub fn encode(&mut self, mel: &[f32], out: &mut [f32]) -> Result<(), NpuError> {
        self.encode_with(mel, out, |device, args, timeout| {
            device.start(args)?;
            device.wait(timeout)
        })
    }

    fn encode_with(
        &mut self,
        mel: &[f32],
        out: &mut [f32],
        run: impl FnOnce(&mut D, &[RunArg], Duration) -> Result<(), DeviceError>,
    ) -> Result<(), NpuError> {
        let (n_mels, frames, t, d) = (self.plan.n_mels, self.frames, self.plan.t, self.plan.d);
        if mel.len() != n_mels * frames {
            return Err(GoldenError::BadLength {
                what: "mel window",
                found: mel.len(),
                expected: n_mels * frames,
            }
            .into());
        }
        if out.len() != t * d {
            return Err(GoldenError::BadLength {
                what: "encoder output",
                found: out.len(),
                expected: t * d,
            }
            .into());
        }
        // Input BO: the mel time-major, row s = frame s - 1 (rows 0 and past the window stay
        // the zeros written at construction).
        for f in 0..frames {
            let row = &mut self.staging[f * n_mels..(f + 1) * n_mels];
            for (c, v) in row.iter_mut().enumerate() {
                *v = to_bf16(mel[c * frames + f]);
            }
        }
        let start = self.plan.mel.offset + n_mels * 2;
        let input = self.device.map(self.input).map_err(dev("input map"))?;
        let dst = &mut input[start..start + self.staging.len() * 2];
        for (dst, v) in dst.chunks_exact_mut(2).zip(&self.staging) {
            dst.copy_from_slice(&v.to_ne_bytes());
        }
        self.device
            .sync(self.input, SyncDir::ToDevice)
            .map_err(dev("input sync"))?;

        self.dispatches += 1;
        run(&mut self.device, &self.run_args, self.timeout).map_err(dev("run"))?;

        self.device
            .sync(self.output, SyncDir::FromDevice)
            .map_err(dev("output sync"))?;
        let start = self.plan.out.offset;
        let output = self.device.map(self.output).map_err(dev("output map"))?;
        for (o, src) in out
            .iter_mut()
            .zip(output[start..start + t * d * 4].chunks_exact(4))
        {
            *o = f32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
        }
        Ok(())
    }
}

/// One window at a time, whatever the device: what the transcriber's worker thread owns.
impl<D: NpuDevice> crate::engine::Encoder for NpuEncoder<D> {
    fn encode(
        &mut self,
        mel: &[f32],
        out: &mut [f32],
        _threads: usize,
    ) -> Result<(), crate::error::Error> {
        NpuEncoder::encode(self, mel, out).map_err(|e| crate::error::Error::Engine {
            engine: "NPU encoder".into(),
            why: e.to_string(),
        })
    }
    fn dispatches(&self) -> u64 {
        self.dispatches
    }
}

/// The instruction stream of a manifest: little-endian 32-bit words (mlir-aie's `insts.bin`).
pub fn read_instructions(path: &Path) -> Result<Vec<u32>, NpuError> {
    let bytes = std::fs::read(path).map_err(|e| NpuError::Instructions {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    if bytes.is_empty() || bytes.len() % 4 != 0 {
        return Err(NpuError::Instructions {
            path: path.to_path_buf(),
            why: format!(
                "{} bytes is not a non-empty whole number of words",
                bytes.len()
            ),
        });
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect())
}
