//! The process-wide ONNX Runtime, loaded at run time (`ort`'s `load-dynamic`): found, loaded
//! once, never unloaded. Silero VAD and the ONNX engine share it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use once_cell::sync::OnceCell;
use ort::environment::Environment;

/// Environment variable naming the ONNX Runtime library file (ort's own convention).
pub const LIBRARY_ENV: &str = "ORT_DYLIB_PATH";
/// Environment variable naming the directory `scripts/fetch-runtime` installs the library under.
pub const RUNTIME_ROOT_ENV: &str = "WHISPERNPU_RUNTIME";

const FIX: &str = "run scripts/fetch-runtime";
const LIBRARY_NAME: &str = "libonnxruntime.so";

/// Why ONNX Runtime could not be loaded. Every message says what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found (looked for {}); {FIX}, or set {LIBRARY_ENV} to a libonnxruntime.so (ONNX Runtime >= 1.18)",
        list(tried)
    )]
    LibraryNotFound { tried: Vec<PathBuf> },
    #[error("ONNX Runtime library {} (from {origin}) does not exist; {FIX}, or fix {origin}", path.display())]
    LibraryMissing { path: PathBuf, origin: String },
    #[error("cannot load the ONNX Runtime library {}: {reason}; {FIX} to install a known-good copy", path.display())]
    LibraryLoad { path: PathBuf, reason: String },
}

/// The paths, made absolute so that the message does not depend on knowing the working directory.
pub(crate) fn list(paths: &[PathBuf]) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    let names: Vec<String> = paths
        .iter()
        .map(|p| cwd.join(p).display().to_string())
        .collect();
    names.join(", ")
}

/// The loaded runtime.
pub struct Runtime {
    pub environment: Environment,
    /// The library file it was loaded from.
    pub library: PathBuf,
}

static RUNTIME: OnceCell<Runtime> = OnceCell::new();

/// Roots searched for the runtime library when neither an explicit path nor `ORT_DYLIB_PATH` is
/// given, in order: `$WHISPERNPU_RUNTIME`, `./runtime`, and this source tree's `runtime`. Each is
/// looked into as `ROOT/onnxruntime/` and `ROOT/`.
pub fn library_search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(root) = std::env::var_os(RUNTIME_ROOT_ENV).filter(|v| !v.is_empty()) {
        dirs.push(PathBuf::from(root));
    }
    dirs.push(PathBuf::from("runtime"));
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime"));
    dirs
}

/// The library file inside a directory, if any.
fn library_in(dir: &Path) -> Option<PathBuf> {
    [dir.join("onnxruntime"), dir.to_path_buf()]
        .into_iter()
        .flat_map(|d| [d.join(LIBRARY_NAME), d.join(format!("{LIBRARY_NAME}.1"))])
        .find(|p| p.is_file())
        .or_else(|| {
            // A wheel's `capi/` folder holds only `libonnxruntime.so.X.Y.Z`.
            let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(&format!("{LIBRARY_NAME}.")))
                })
                .collect();
            versioned.sort();
            versioned.pop()
        })
}

/// Finds the ONNX Runtime library: `explicit` (a file or a directory), else `$ORT_DYLIB_PATH`,
/// else the first of [`library_search_dirs`] holding one.
pub fn resolve_library(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let given = explicit
        .map(|p| (p.to_path_buf(), "the runtime path given".to_string()))
        .or_else(|| {
            std::env::var_os(LIBRARY_ENV)
                .filter(|v| !v.is_empty())
                .map(|v| (PathBuf::from(v), LIBRARY_ENV.to_string()))
        });
    if let Some((path, origin)) = given {
        if path.is_file() {
            return Ok(path);
        }
        if path.is_dir() {
            return library_in(&path).ok_or(RuntimeError::LibraryMissing {
                path: path.join("onnxruntime").join(LIBRARY_NAME),
                origin,
            });
        }
        return Err(RuntimeError::LibraryMissing { path, origin });
    }
    let dirs = library_search_dirs();
    dirs.iter()
        .find_map(|d| library_in(d))
        .ok_or_else(|| RuntimeError::LibraryNotFound {
            tried: dirs
                .iter()
                .map(|d| d.join("onnxruntime").join(LIBRARY_NAME))
                .collect(),
        })
}

/// Loads ONNX Runtime from `library` the first time; later calls return the loaded runtime and,
/// when `library` is another file, a note saying it was not used.
pub fn runtime(library: &Path) -> Result<(&'static Runtime, Option<String>), RuntimeError> {
    let wanted = library
        .canonicalize()
        .map_err(|e| RuntimeError::LibraryLoad {
            path: library.to_path_buf(),
            reason: e.to_string(),
        })?;
    let rt = RUNTIME.get_or_try_init(|| load_runtime(&wanted))?;
    let note = (rt.library != wanted).then(|| {
        format!(
            "ONNX Runtime is already loaded from {} in this process; {} was not used",
            rt.library.display(),
            wanted.display()
        )
    });
    Ok((rt, note))
}

/// The runtime if it is loaded, else loaded from [`resolve_library`]`(None)`.
pub fn default_runtime() -> Result<(&'static Runtime, Option<String>), RuntimeError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok((rt, None));
    }
    runtime(&resolve_library(None)?)
}

fn load_runtime(library: &Path) -> Result<Runtime, RuntimeError> {
    let fail = |reason: String| RuntimeError::LibraryLoad {
        path: library.to_path_buf(),
        reason,
    };
    // `ort` reports a failed dlopen or a too old library as an error, but asserts on a few things
    // a foreign library could break: never let that unwind into the caller.
    let built = catch_unwind(AssertUnwindSafe(|| -> Result<Environment, String> {
        let builder = ort::init_from(library).map_err(|e| e.to_string())?;
        builder
            .with_name("whispernpu")
            .with_telemetry(false)
            .build()
            .map_err(|e| e.to_string())
    }));
    match built {
        Ok(Ok(environment)) => Ok(Runtime {
            environment,
            library: library.to_path_buf(),
        }),
        Ok(Err(reason)) => Err(fail(reason)),
        Err(panic) => Err(fail(format!(
            "ONNX Runtime panicked while loading: {}",
            crate::error::panic_message(&*panic)
        ))),
    }
}
