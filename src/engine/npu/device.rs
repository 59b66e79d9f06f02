//! The buffer-object interface the host encoder ([`super::host::NpuEncoder`]) drives: allocate,
//! map and sync buffer objects, start one run with the kernel's arguments, wait for it. Two
//! devices implement it: [`super::sim::SimDevice`] (the golden model executes the run) and,
//! with the `npu` feature, [`super::xrt::XrtDevice`] (XRT through `xrt-sys`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A buffer object allocated by a device (an index into the device's own table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BoHandle(pub usize);

/// Kind of buffer object (XRT allocates them with different flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoKind {
    /// The instruction stream (`XCL_BO_FLAGS_CACHEABLE`).
    Instructions,
    /// Data (`XRT_BO_FLAGS_HOST_ONLY`).
    Data,
}

/// Direction of a buffer sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncDir {
    ToDevice,
    FromDevice,
}

/// One kernel argument, in argument order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunArg {
    U32(u32),
    U64(u64),
    Bo(BoHandle),
}

/// Errors of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceError {
    /// The device cannot be used at all (no XRT in this build, no device).
    Unavailable(String),
    /// A call failed (XRT's exception text, or the simulator's reason).
    Call { what: &'static str, message: String },
    /// The run did not finish within the timeout.
    Timeout(Duration),
    /// The run ended in a state other than completed.
    RunFailed(String),
    /// The host broke the buffer-object protocol (the simulator checks it: a BO read before it
    /// was synced from the device, an input written but not synced to it, arguments out of the
    /// kernel's order, a second run started before the first was waited for).
    Protocol(String),
    /// A file the device needs (xclbin) could not be read.
    File { path: PathBuf, why: String },
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::Unavailable(why) => f.write_str(why),
            DeviceError::Call { what, message } => write!(f, "{what} failed: {message}"),
            DeviceError::Timeout(t) => {
                write!(f, "did not finish within {} ms", t.as_millis())
            }
            DeviceError::RunFailed(why) => write!(f, "failed: {why}"),
            DeviceError::Protocol(why) => write!(f, "buffer-object protocol broken: {why}"),
            DeviceError::File { path, why } => write!(f, "{}: {why}", path.display()),
        }
    }
}

impl std::error::Error for DeviceError {}

/// A device that runs the encoder's instruction stream on buffer objects.
///
/// The host's sequence per window: map + write the input BO, sync it to the device, `start`
/// with every argument in the kernel's order, `wait` with a timeout, sync the output BO from
/// the device, map + read it.
pub trait NpuDevice: Send {
    /// Allocates `bytes` for kernel argument `arg_index` (the device places it in that
    /// argument's memory group).
    fn alloc_bo(
        &mut self,
        bytes: usize,
        kind: BoKind,
        arg_index: usize,
    ) -> Result<BoHandle, DeviceError>;
    /// The buffer mapped into this process (at least the bytes allocated).
    fn map(&mut self, bo: BoHandle) -> Result<&mut [u8], DeviceError>;
    fn sync(&mut self, bo: BoHandle, direction: SyncDir) -> Result<(), DeviceError>;
    /// Starts one run with `args` in the kernel's argument order.
    fn start(&mut self, args: &[RunArg]) -> Result<(), DeviceError>;
    /// Waits for the run started last.
    fn wait(&mut self, timeout: Duration) -> Result<(), DeviceError>;
}
