//! Rust bindings to a small C++ shim over AMD XRT's native API (`include/xrt_shim.h`,
//! `src/shim.cpp`): open a device, load an xclbin into a hardware context, open its kernel,
//! allocate / map / sync buffer objects, start a run and wait for it with a timeout.
//!
//! The shim is compiled only where `build.rs` finds XRT's headers (with `hw_context`). Elsewhere
//! the same API exists but every constructor returns [`XrtError::Unavailable`] with the reason,
//! and [`availability`] says why; nothing links against XRT then.
//!
//! Status: the C++ shim is written against XRT's documented C++ API and mlir-aie's host flow but
//! has not been compiled against XRT or run yet (no XRT and no NPU where it was written);
//! `tests/shim_syntax.rs` checks it is well-formed C++ against stand-in declarations.

use std::fmt;
use std::path::Path;
use std::time::Duration;

#[cfg(xrt_available)]
mod ffi {
    #![allow(non_camel_case_types)]
    use std::ffi::{c_char, c_int, c_void};

    #[repr(C)]
    pub struct xrt_shim_device {
        _private: [u8; 0],
    }
    #[repr(C)]
    pub struct xrt_shim_context {
        _private: [u8; 0],
    }
    #[repr(C)]
    pub struct xrt_shim_kernel {
        _private: [u8; 0],
    }
    #[repr(C)]
    pub struct xrt_shim_bo {
        _private: [u8; 0],
    }
    #[repr(C)]
    pub struct xrt_shim_run {
        _private: [u8; 0],
    }

    pub const XRT_SHIM_BO_DATA: i32 = 0;
    pub const XRT_SHIM_BO_INSTRUCTIONS: i32 = 1;
    pub const XRT_SHIM_ARG_SCALAR: i32 = 0;
    pub const XRT_SHIM_ARG_BO: i32 = 1;
    pub const XRT_SHIM_RUN_COMPLETED: i32 = 0;
    pub const XRT_SHIM_RUN_TIMEOUT: i32 = 1;

    #[repr(C)]
    pub struct xrt_shim_arg {
        pub kind: i32,
        pub scalar_bytes: u32,
        pub scalar: u64,
        pub bo: *mut xrt_shim_bo,
    }

    unsafe extern "C" {
        pub fn xrt_shim_last_error() -> *const c_char;
        pub fn xrt_shim_device_open(index: u32, out: *mut *mut xrt_shim_device) -> c_int;
        pub fn xrt_shim_device_close(device: *mut xrt_shim_device);
        pub fn xrt_shim_context_create(
            device: *mut xrt_shim_device,
            xclbin_path: *const c_char,
            out: *mut *mut xrt_shim_context,
        ) -> c_int;
        pub fn xrt_shim_context_free(context: *mut xrt_shim_context);
        pub fn xrt_shim_kernel_open(
            context: *mut xrt_shim_context,
            name_prefix: *const c_char,
            out: *mut *mut xrt_shim_kernel,
        ) -> c_int;
        pub fn xrt_shim_kernel_group_id(
            kernel: *mut xrt_shim_kernel,
            arg_index: i32,
            out: *mut i32,
        ) -> c_int;
        pub fn xrt_shim_kernel_close(kernel: *mut xrt_shim_kernel);
        pub fn xrt_shim_bo_alloc(
            device: *mut xrt_shim_device,
            bytes: usize,
            kind: i32,
            group_id: i32,
            out: *mut *mut xrt_shim_bo,
        ) -> c_int;
        pub fn xrt_shim_bo_map(
            bo: *mut xrt_shim_bo,
            out: *mut *mut c_void,
            bytes: *mut usize,
        ) -> c_int;
        pub fn xrt_shim_bo_sync(bo: *mut xrt_shim_bo, to_device: i32) -> c_int;
        pub fn xrt_shim_bo_free(bo: *mut xrt_shim_bo);
        pub fn xrt_shim_run_start(
            kernel: *mut xrt_shim_kernel,
            args: *const xrt_shim_arg,
            n_args: usize,
            out: *mut *mut xrt_shim_run,
        ) -> c_int;
        pub fn xrt_shim_run_wait(
            run: *mut xrt_shim_run,
            timeout_ms: u32,
            outcome: *mut i32,
            state: *mut i32,
        ) -> c_int;
        pub fn xrt_shim_run_free(run: *mut xrt_shim_run);
    }
}

/// Whether this build can use XRT: `Ok(description)` where the shim was compiled and linked,
/// else `Err(reason)` naming what was missing at build time.
pub fn availability() -> Result<String, String> {
    #[cfg(xrt_available)]
    {
        Ok(format!("shim built against {}", env!("XRT_SYS_INCLUDE")))
    }
    #[cfg(not(xrt_available))]
    {
        Err(env!("XRT_SYS_UNAVAILABLE").to_string())
    }
}

/// Errors of XRT calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XrtError {
    /// This build has no XRT (see [`availability`]).
    Unavailable(String),
    /// A shim call failed; `message` is XRT's exception text.
    Call { what: &'static str, message: String },
    /// The run did not finish within the timeout.
    Timeout { timeout: Duration },
    /// The run ended in a state other than completed (raw `ert_cmd_state`).
    RunFailed { state: i32 },
    /// An argument Rust could not pass (interior NUL in a path, ...).
    Argument(String),
}

impl fmt::Display for XrtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XrtError::Unavailable(why) => write!(f, "XRT is not available: {why}"),
            XrtError::Call { what, message } => write!(f, "XRT {what} failed: {message}"),
            XrtError::Timeout { timeout } => {
                write!(
                    f,
                    "NPU run did not finish within {} ms",
                    timeout.as_millis()
                )
            }
            XrtError::RunFailed { state } => {
                write!(f, "NPU run ended in ert_cmd_state {state} (not completed)")
            }
            XrtError::Argument(why) => write!(f, "invalid XRT argument: {why}"),
        }
    }
}

impl std::error::Error for XrtError {}

#[cfg(not(xrt_available))]
fn unavailable<T>() -> Result<T, XrtError> {
    Err(XrtError::Unavailable(
        env!("XRT_SYS_UNAVAILABLE").to_string(),
    ))
}

#[cfg(xrt_available)]
fn check(what: &'static str, rc: std::ffi::c_int) -> Result<(), XrtError> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: the shim returns a pointer to its thread-local, NUL-terminated message, valid
    // until the next shim call on this thread; it is copied at once.
    let message = unsafe { std::ffi::CStr::from_ptr(ffi::xrt_shim_last_error()) }
        .to_string_lossy()
        .into_owned();
    Err(XrtError::Call { what, message })
}

macro_rules! handle {
    ($(#[$doc:meta])* $name:ident, $ffi:ident, $free:ident) => {
        $(#[$doc])*
        pub struct $name {
            #[cfg(xrt_available)]
            ptr: std::ptr::NonNull<ffi::$ffi>,
            #[cfg(not(xrt_available))]
            never: std::convert::Infallible,
        }

        impl Drop for $name {
            fn drop(&mut self) {
                #[cfg(xrt_available)]
                // SAFETY: the pointer came from the shim's constructor and is freed once.
                unsafe {
                    ffi::$free(self.ptr.as_ptr())
                };
                #[cfg(not(xrt_available))]
                match self.never {}
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(stringify!($name))
            }
        }
    };
}

handle!(
    /// An XRT device (`xrt::device`).
    Device,
    xrt_shim_device,
    xrt_shim_device_close
);
handle!(
    /// An xclbin registered with a device and its hardware context (`xrt::hw_context`).
    Context,
    xrt_shim_context,
    xrt_shim_context_free
);
handle!(
    /// A kernel of a hardware context (`xrt::kernel`).
    Kernel,
    xrt_shim_kernel,
    xrt_shim_kernel_close
);
handle!(
    /// A buffer object (`xrt::bo`).
    Bo,
    xrt_shim_bo,
    xrt_shim_bo_free
);
handle!(
    /// A started run (`xrt::run`).
    Run,
    xrt_shim_run,
    xrt_shim_run_free
);

/// Kind of buffer object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoKind {
    /// Data, `host_only` (mlir-aie's data buffers).
    Data,
    /// The instruction stream, `cacheable`.
    Instructions,
}

/// Direction of a buffer sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    ToDevice,
    FromDevice,
}

/// One kernel argument, in argument order.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    U32(u32),
    U64(u64),
    Bo(&'a Bo),
}

#[cfg(xrt_available)]
fn new_handle<T>(
    what: &'static str,
    f: impl FnOnce(*mut *mut T) -> std::ffi::c_int,
) -> Result<std::ptr::NonNull<T>, XrtError> {
    let mut out = std::ptr::null_mut();
    check(what, f(&mut out))?;
    std::ptr::NonNull::new(out).ok_or(XrtError::Call {
        what,
        message: "null handle".into(),
    })
}

impl Device {
    /// Opens device `index` (0 for the only NPU).
    pub fn open(index: u32) -> Result<Self, XrtError> {
        #[cfg(xrt_available)]
        {
            // SAFETY: out-pointer valid for the call.
            let ptr = new_handle("device open", |out| unsafe {
                ffi::xrt_shim_device_open(index, out)
            })?;
            Ok(Self { ptr })
        }
        #[cfg(not(xrt_available))]
        {
            let _ = index;
            unavailable()
        }
    }

    /// Loads an xclbin, registers it and creates its hardware context.
    pub fn load_xclbin(&self, path: &Path) -> Result<Context, XrtError> {
        #[cfg(xrt_available)]
        {
            use std::os::unix::ffi::OsStrExt;
            let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
                .map_err(|_| XrtError::Argument(format!("path {} has a NUL", path.display())))?;
            // SAFETY: device handle live, path NUL-terminated, out-pointer valid.
            let ptr = new_handle("xclbin load", |out| unsafe {
                ffi::xrt_shim_context_create(self.ptr.as_ptr(), c_path.as_ptr(), out)
            })?;
            Ok(Context { ptr })
        }
        #[cfg(not(xrt_available))]
        {
            let _ = path;
            match self.never {}
        }
    }

    /// Allocates a buffer object of `bytes` in memory group `group_id`
    /// (see [`Kernel::group_id`]).
    pub fn alloc_bo(&self, bytes: usize, kind: BoKind, group_id: i32) -> Result<Bo, XrtError> {
        #[cfg(xrt_available)]
        {
            let kind = match kind {
                BoKind::Data => ffi::XRT_SHIM_BO_DATA,
                BoKind::Instructions => ffi::XRT_SHIM_BO_INSTRUCTIONS,
            };
            // SAFETY: device handle live, out-pointer valid.
            let ptr = new_handle("buffer allocation", |out| unsafe {
                ffi::xrt_shim_bo_alloc(self.ptr.as_ptr(), bytes, kind, group_id, out)
            })?;
            Ok(Bo { ptr })
        }
        #[cfg(not(xrt_available))]
        {
            let _ = (bytes, kind, group_id);
            match self.never {}
        }
    }
}

impl Context {
    /// Opens the first kernel whose name starts with `name_prefix` (`MLIR_AIE`).
    pub fn kernel(&self, name_prefix: &str) -> Result<Kernel, XrtError> {
        #[cfg(xrt_available)]
        {
            let c_name = std::ffi::CString::new(name_prefix).map_err(|_| {
                XrtError::Argument(format!("kernel name `{name_prefix}` has a NUL"))
            })?;
            // SAFETY: context live, name NUL-terminated, out-pointer valid.
            let ptr = new_handle("kernel open", |out| unsafe {
                ffi::xrt_shim_kernel_open(self.ptr.as_ptr(), c_name.as_ptr(), out)
            })?;
            Ok(Kernel { ptr })
        }
        #[cfg(not(xrt_available))]
        {
            let _ = name_prefix;
            match self.never {}
        }
    }
}

impl Kernel {
    /// Memory group of argument `index` (where its buffer object must be allocated).
    pub fn group_id(&self, index: i32) -> Result<i32, XrtError> {
        #[cfg(xrt_available)]
        {
            let mut group = 0;
            // SAFETY: kernel live, out-pointer valid.
            check("group_id", unsafe {
                ffi::xrt_shim_kernel_group_id(self.ptr.as_ptr(), index, &mut group)
            })?;
            Ok(group)
        }
        #[cfg(not(xrt_available))]
        {
            let _ = index;
            match self.never {}
        }
    }

    /// Sets `args` in order and starts a run.
    pub fn start(&self, args: &[Arg<'_>]) -> Result<Run, XrtError> {
        #[cfg(xrt_available)]
        {
            let raw: Vec<ffi::xrt_shim_arg> = args
                .iter()
                .map(|a| match a {
                    Arg::U32(v) => ffi::xrt_shim_arg {
                        kind: ffi::XRT_SHIM_ARG_SCALAR,
                        scalar_bytes: 4,
                        scalar: u64::from(*v),
                        bo: std::ptr::null_mut(),
                    },
                    Arg::U64(v) => ffi::xrt_shim_arg {
                        kind: ffi::XRT_SHIM_ARG_SCALAR,
                        scalar_bytes: 8,
                        scalar: *v,
                        bo: std::ptr::null_mut(),
                    },
                    Arg::Bo(bo) => ffi::xrt_shim_arg {
                        kind: ffi::XRT_SHIM_ARG_BO,
                        scalar_bytes: 0,
                        scalar: 0,
                        bo: bo.ptr.as_ptr(),
                    },
                })
                .collect();
            // SAFETY: kernel and every referenced buffer live for the call; the shim copies
            // the xrt::bo handles into the run.
            let ptr = new_handle("run start", |out| unsafe {
                ffi::xrt_shim_run_start(self.ptr.as_ptr(), raw.as_ptr(), raw.len(), out)
            })?;
            Ok(Run { ptr })
        }
        #[cfg(not(xrt_available))]
        {
            let _ = args;
            match self.never {}
        }
    }
}

impl Bo {
    /// The buffer mapped into this process.
    pub fn as_mut_slice(&mut self) -> Result<&mut [u8], XrtError> {
        #[cfg(xrt_available)]
        {
            let mut data = std::ptr::null_mut();
            let mut bytes = 0usize;
            // SAFETY: buffer live, out-pointers valid.
            check("buffer map", unsafe {
                ffi::xrt_shim_bo_map(self.ptr.as_ptr(), &mut data, &mut bytes)
            })?;
            if data.is_null() {
                return Err(XrtError::Call {
                    what: "buffer map",
                    message: "null mapping".into(),
                });
            }
            // SAFETY: XRT maps `bytes` bytes for the buffer's lifetime; &mut self makes the
            // slice exclusive.
            Ok(unsafe { std::slice::from_raw_parts_mut(data.cast::<u8>(), bytes) })
        }
        #[cfg(not(xrt_available))]
        {
            match self.never {}
        }
    }

    pub fn sync(&self, direction: Sync) -> Result<(), XrtError> {
        #[cfg(xrt_available)]
        {
            let to_device = i32::from(direction == Sync::ToDevice);
            // SAFETY: buffer live.
            check("buffer sync", unsafe {
                ffi::xrt_shim_bo_sync(self.ptr.as_ptr(), to_device)
            })
        }
        #[cfg(not(xrt_available))]
        {
            let _ = direction;
            match self.never {}
        }
    }
}

impl Run {
    /// Waits for the run; `timeout` zero means no limit (rounded up to whole milliseconds).
    pub fn wait(&self, timeout: Duration) -> Result<(), XrtError> {
        #[cfg(xrt_available)]
        {
            let ms = u32::try_from(timeout.as_millis().max(u128::from(!timeout.is_zero())))
                .unwrap_or(u32::MAX);
            let (mut outcome, mut state) = (0, 0);
            // SAFETY: run live, out-pointers valid.
            check("run wait", unsafe {
                ffi::xrt_shim_run_wait(self.ptr.as_ptr(), ms, &mut outcome, &mut state)
            })?;
            match outcome {
                ffi::XRT_SHIM_RUN_COMPLETED => Ok(()),
                ffi::XRT_SHIM_RUN_TIMEOUT => Err(XrtError::Timeout { timeout }),
                _ => Err(XrtError::RunFailed { state }),
            }
        }
        #[cfg(not(xrt_available))]
        {
            let _ = timeout;
            match self.never {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_matches_the_build() {
        match availability() {
            Ok(what) => assert!(what.contains("shim built against")),
            Err(why) => {
                assert!(why.contains("XRT headers not found"), "{why}");
                let err = Device::open(0).unwrap_err();
                assert_eq!(err, XrtError::Unavailable(why.clone()));
                assert!(
                    err.to_string()
                        .starts_with("XRT is not available: XRT headers")
                );
            }
        }
    }
}
