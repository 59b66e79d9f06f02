//! The XRT device (feature `npu`): [`NpuDevice`] over `xrt-sys`. Opens device 0, creates the
//! hardware context from the manifest's xclbin, opens its kernel, allocates each BO in the
//! memory group the kernel reports for its argument. [`open`] builds the host encoder on it
//! from a model's manifest (the instruction stream file it names goes into the instruction BO).
//!
//! Never run on an NPU: where this was written there is neither XRT nor a device, so
//! [`XrtDevice::open`] returns the "XRT is not available" error (tested).

use std::path::Path;
use std::time::Duration;

use super::device::{BoHandle, BoKind, DeviceError, NpuDevice, RunArg, SyncDir};
use super::host::{self, NpuEncoder, NpuError};
use super::manifest::{self, Manifest};
use crate::engine::WhisperModel;

fn xrt_error(what: &'static str) -> impl FnOnce(xrt_sys::XrtError) -> DeviceError {
    move |e| match e {
        xrt_sys::XrtError::Unavailable(why) => {
            DeviceError::Unavailable(format!("XRT is not available: {why}"))
        }
        xrt_sys::XrtError::Timeout { timeout } => DeviceError::Timeout(timeout),
        xrt_sys::XrtError::RunFailed { state } => {
            DeviceError::RunFailed(format!("ert_cmd_state {state} (not completed)"))
        }
        other => DeviceError::Call {
            what,
            message: other.to_string(),
        },
    }
}

/// An NPU through XRT.
pub struct XrtDevice {
    // Dropped in this order: the run, the buffers, the kernel, the context, the device.
    run: Option<xrt_sys::Run>,
    bos: Vec<xrt_sys::Bo>,
    kernel: xrt_sys::Kernel,
    _context: xrt_sys::Context,
    device: xrt_sys::Device,
}

// SAFETY: XRT's device, context, kernel, bo and run objects are not tied to the thread that
// created them; this type is used by one thread at a time (`&mut self` for every call), owned
// by the transcriber's NPU worker thread.
unsafe impl Send for XrtDevice {}

impl XrtDevice {
    /// Opens device 0, loads `xclbin` into a hardware context and opens the kernel whose name
    /// starts with `kernel` (`MLIR_AIE`).
    pub fn open(xclbin: &Path, kernel: &str) -> Result<Self, DeviceError> {
        let device = xrt_sys::Device::open(0).map_err(xrt_error("device open"))?;
        if !xclbin.is_file() {
            return Err(DeviceError::File {
                path: xclbin.to_path_buf(),
                why: "the xclbin is missing (not built: run kernels/build.sh on a machine with \
                      mlir-aie)"
                    .into(),
            });
        }
        let context = device
            .load_xclbin(xclbin)
            .map_err(xrt_error("xclbin load"))?;
        let kernel = context.kernel(kernel).map_err(xrt_error("kernel open"))?;
        Ok(Self {
            run: None,
            bos: Vec::new(),
            kernel,
            _context: context,
            device,
        })
    }
}

impl NpuDevice for XrtDevice {
    fn alloc_bo(
        &mut self,
        bytes: usize,
        kind: BoKind,
        arg_index: usize,
    ) -> Result<BoHandle, DeviceError> {
        let index = i32::try_from(arg_index).map_err(|_| DeviceError::Call {
            what: "group_id",
            message: format!("argument index {arg_index}"),
        })?;
        let group = self.kernel.group_id(index).map_err(xrt_error("group_id"))?;
        let kind = match kind {
            BoKind::Instructions => xrt_sys::BoKind::Instructions,
            BoKind::Data => xrt_sys::BoKind::Data,
        };
        let bo = self
            .device
            .alloc_bo(bytes, kind, group)
            .map_err(xrt_error("buffer allocation"))?;
        self.bos.push(bo);
        Ok(BoHandle(self.bos.len() - 1))
    }

    fn map(&mut self, bo: BoHandle) -> Result<&mut [u8], DeviceError> {
        let b = self.bos.get_mut(bo.0).ok_or(DeviceError::Call {
            what: "buffer map",
            message: format!("no buffer object {}", bo.0),
        })?;
        b.as_mut_slice().map_err(xrt_error("buffer map"))
    }

    fn sync(&mut self, bo: BoHandle, direction: SyncDir) -> Result<(), DeviceError> {
        let b = self.bos.get(bo.0).ok_or(DeviceError::Call {
            what: "buffer sync",
            message: format!("no buffer object {}", bo.0),
        })?;
        b.sync(match direction {
            SyncDir::ToDevice => xrt_sys::Sync::ToDevice,
            SyncDir::FromDevice => xrt_sys::Sync::FromDevice,
        })
        .map_err(xrt_error("buffer sync"))
    }

    fn start(&mut self, args: &[RunArg]) -> Result<(), DeviceError> {
        let mut xargs = Vec::with_capacity(args.len());
        for arg in args {
            xargs.push(match *arg {
                RunArg::U32(v) => xrt_sys::Arg::U32(v),
                RunArg::U64(v) => xrt_sys::Arg::U64(v),
                RunArg::Bo(h) => xrt_sys::Arg::Bo(self.bos.get(h.0).ok_or(DeviceError::Call {
                    what: "run start",
                    message: format!("no buffer object {}", h.0),
                })?),
            });
        }
        self.run = Some(self.kernel.start(&xargs).map_err(xrt_error("run start"))?);
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), DeviceError> {
        let run = self.run.take().ok_or(DeviceError::Call {
            what: "run wait",
            message: "no run started".into(),
        })?;
        run.wait(timeout).map_err(xrt_error("run wait"))
    }
}

/// The host encoder on the NPU for `model`, from the manifest `whisper_encoder_<name>.json` in
/// `artifact_dir`: the manifest is loaded and validated against the model, the device opened
/// with its xclbin, its instruction stream loaded, and its argument layout checked against the
/// design's.
pub fn open(
    model: &WhisperModel,
    name: &str,
    artifact_dir: &Path,
) -> Result<NpuEncoder<XrtDevice>, NpuError> {
    let path = artifact_dir.join(manifest::file_name(name));
    let m = Manifest::load(&path)?;
    m.validate(&model.dims, &path)?;
    let device = XrtDevice::open(&m.xclbin_path(artifact_dir), &m.kernel).map_err(|source| {
        NpuError::Device {
            what: "open",
            source,
        }
    })?;
    let instructions = host::read_instructions(&m.instructions_path(artifact_dir))?;
    let plan = super::golden::plan_for(model)?;
    NpuEncoder::new(
        device,
        model,
        plan,
        m.args.clone(),
        &instructions,
        &path.display().to_string(),
        host::RUN_TIMEOUT,
    )
}
