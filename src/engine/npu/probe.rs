//! Can the NPU backend run here? Three things must be present:
//!
//! 1. an XDNA device driven by `amdxdna` (`/dev/accel/accelN` whose
//!    `/sys/class/accel/accelN/device/driver` is `amdxdna`), openable read-write;
//! 2. XRT, through the `xrt-sys` shim (the crate's `npu` feature, built where XRT's headers
//!    were found);
//! 3. a built encoder artifact for the model: `whisper_encoder_<model>.json` that validates
//!    against the model, and the xclbin and instruction files it names.
//!
//! [`probe`] checks all three and returns a [`ProbeReport`] whose `Display` names exactly what
//! is missing; `backend=npu` fails with that text, `backend=auto` takes the NPU only when
//! nothing is missing ([`choose_backend`]).

use std::fmt;
use std::path::PathBuf;

use crate::engine::npu::manifest::{self, Manifest};
use crate::error::Error;
use crate::model::Dims;

/// Where the probe looks. [`ProbeConfig::system`] is the real system; tests point it at a
/// fake tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Directory of accel device nodes (`/dev/accel`).
    pub dev_accel_dir: PathBuf,
    /// sysfs root (`/sys`).
    pub sys_root: PathBuf,
    /// Directory of the manifests and built artifacts: `$WHISPERNPU_XCLBIN_DIR`, else this
    /// source tree's `xclbin/`.
    pub artifact_dir: PathBuf,
}

impl ProbeConfig {
    pub fn system() -> Self {
        Self {
            dev_accel_dir: PathBuf::from("/dev/accel"),
            sys_root: PathBuf::from("/sys"),
            artifact_dir: std::env::var_os("WHISPERNPU_XCLBIN_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(manifest::default_dir),
        }
    }
}

/// An XDNA device found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub node: PathBuf,
    pub driver: String,
}

/// A validated artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub manifest: PathBuf,
    pub xclbin: PathBuf,
    pub instructions: PathBuf,
}

/// Result of [`probe`]: each part found, or why not (a sentence that says how to fix it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    pub device: Result<Device, String>,
    /// XRT's version, or why XRT cannot be used.
    pub xrt: Result<String, String>,
    pub artifact: Result<Artifact, String>,
}

impl ProbeReport {
    /// All three parts present.
    pub fn ready(&self) -> bool {
        self.device.is_ok() && self.xrt.is_ok() && self.artifact.is_ok()
    }

    /// The missing parts, as `(what, why)`.
    pub fn missing(&self) -> Vec<(&'static str, &str)> {
        let mut missing = Vec::new();
        if let Err(why) = &self.device {
            missing.push(("amdxdna device", why.as_str()));
        }
        if let Err(why) = &self.xrt {
            missing.push(("XRT", why.as_str()));
        }
        if let Err(why) = &self.artifact {
            missing.push(("NPU encoder artifact", why.as_str()));
        }
        missing
    }
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let missing = self.missing();
        if missing.is_empty() {
            let (Ok(device), Ok(xrt), Ok(artifact)) = (&self.device, &self.xrt, &self.artifact)
            else {
                unreachable!("nothing missing means every part is present");
            };
            return write!(
                f,
                "NPU ready: {} ({}), XRT {}, {}",
                device.node.display(),
                device.driver,
                xrt,
                artifact.xclbin.display()
            );
        }
        let names: Vec<&str> = missing.iter().map(|(what, _)| *what).collect();
        write!(f, "NPU not usable, missing: {}", names.join(", "))?;
        for (what, why) in missing {
            write!(f, "; {what}: {why}")?;
        }
        Ok(())
    }
}

/// Finds an accel node driven by `amdxdna`.
pub fn find_device(config: &ProbeConfig) -> Result<Device, String> {
    let dir = &config.dev_accel_dir;
    let mut nodes: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("accel"))
            .map(|e| e.path())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    };
    nodes.sort();
    let driver_loaded = config.sys_root.join("module/amdxdna").exists();
    if nodes.is_empty() {
        return Err(format!(
            "no {}/accel* node{} (a Ryzen AI NPU needs the amdxdna driver: Linux 6.14 or newer, \
             or amd/xdna-driver; then `sudo modprobe amdxdna`)",
            dir.display(),
            if driver_loaded {
                " although the amdxdna module is loaded (is the NPU enabled in the firmware setup?)"
            } else {
                " and the amdxdna module is not loaded"
            }
        ));
    }
    let mut others = Vec::new();
    for node in &nodes {
        let Some(name) = node.file_name() else {
            continue;
        };
        let link = config
            .sys_root
            .join("class/accel")
            .join(name)
            .join("device/driver");
        let driver = std::fs::read_link(&link)
            .ok()
            .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "unknown driver".into());
        if driver != "amdxdna" {
            others.push(format!("{} ({driver})", node.display()));
            continue;
        }
        // Opening is what XRT will do; a permission error is the common failure.
        return match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(node)
        {
            Ok(_) => Ok(Device {
                node: node.clone(),
                driver,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(format!(
                "{} (amdxdna) cannot be opened read-write: permission denied (add the user to the \
                 group owning it, usually `render`, or install the udev rule of xdna-driver)",
                node.display()
            )),
            Err(e) => Err(format!(
                "{} (amdxdna) cannot be opened: {e}",
                node.display()
            )),
        };
    }
    Err(format!(
        "no accel node is driven by amdxdna: {}",
        others.join(", ")
    ))
}

/// XRT's availability through `xrt-sys`: its version, or why it cannot be used.
pub fn xrt_status() -> Result<String, String> {
    #[cfg(feature = "npu")]
    {
        xrt_sys::availability()
    }
    #[cfg(not(feature = "npu"))]
    {
        Err(
            "this build has no XRT support: rebuild with `cargo build --release --features npu` \
             on a machine with XRT installed (headers in /opt/xilinx/xrt/include or $XILINX_XRT)"
                .into(),
        )
    }
}

/// Finds and validates the artifact for `model` (a model name such as `base`) against its
/// dimensions.
pub fn find_artifact(config: &ProbeConfig, model: &str, dims: &Dims) -> Result<Artifact, String> {
    let dir = &config.artifact_dir;
    let path = dir.join(manifest::file_name(model));
    if !path.is_file() {
        return Err(format!(
            "no manifest {} for model `{model}` (kernels/build.sh builds the encoder artifact and \
             writes it)",
            path.display()
        ));
    }
    let m = Manifest::load(&path).map_err(|e| e.to_string())?;
    m.validate(dims, &path).map_err(|e| e.to_string())?;
    let xclbin = m.xclbin_path(dir);
    let instructions = m.instructions_path(dir);
    for (what, file) in [("xclbin", &xclbin), ("instruction stream", &instructions)] {
        if !file.is_file() {
            return Err(format!(
                "{} is valid but its {what} {} is missing (not built: run kernels/build.sh on a \
                 machine with mlir-aie)",
                path.display(),
                file.display()
            ));
        }
    }
    Ok(Artifact {
        manifest: path,
        xclbin,
        instructions,
    })
}

/// Probes the device, XRT and the artifact for `model`.
pub fn probe(config: &ProbeConfig, model: &str, dims: &Dims) -> ProbeReport {
    probe_with_xrt(config, model, dims, xrt_status())
}

/// As [`probe`] with a given XRT status (tests, and callers that probed XRT already).
pub fn probe_with_xrt(
    config: &ProbeConfig,
    model: &str,
    dims: &Dims,
    xrt: Result<String, String>,
) -> ProbeReport {
    ProbeReport {
        device: find_device(config),
        xrt,
        artifact: find_artifact(config, model, dims),
    }
}

/// The element's `backend` values that concern the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendRequest {
    Auto,
    Cpu,
    Npu,
}

impl std::str::FromStr for BackendRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "npu" => Ok(Self::Npu),
            _ => Err(format!("unknown backend `{s}` (known: auto, cpu, npu)")),
        }
    }
}

/// The encoder backend chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderBackend {
    Cpu,
    Npu,
}

/// The backend to use, and for `auto` a line to log when it falls back to the CPU.
pub fn choose_backend(
    request: BackendRequest,
    report: &ProbeReport,
) -> Result<(EncoderBackend, Option<String>), Error> {
    match request {
        BackendRequest::Cpu => Ok((EncoderBackend::Cpu, None)),
        BackendRequest::Npu if report.ready() => Ok((EncoderBackend::Npu, None)),
        BackendRequest::Npu => Err(Error::BackendUnavailable {
            backend: "npu".into(),
            why: report.to_string(),
        }),
        BackendRequest::Auto if report.ready() => Ok((EncoderBackend::Npu, None)),
        BackendRequest::Auto => Ok((
            EncoderBackend::Cpu,
            Some(format!("backend=auto uses the CPU: {report}")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Creates `path`'s parent directories and writes `contents`.
    fn write(path: &Path, contents: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    /// A fake system tree under the temp directory, removed on drop.
    struct Fake {
        root: PathBuf,
        config: ProbeConfig,
    }

    impl Fake {
        fn new(tag: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("whispernpu-probe-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            let config = ProbeConfig {
                dev_accel_dir: root.join("dev/accel"),
                sys_root: root.join("sys"),
                artifact_dir: root.join("xclbin"),
            };
            Self { root, config }
        }

        fn add_device(&self, name: &str, driver: &str) {
            write(&self.config.dev_accel_dir.join(name), b"");
            let drivers = self.config.sys_root.join("bus/pci/drivers").join(driver);
            std::fs::create_dir_all(&drivers).unwrap();
            let dev = self
                .config
                .sys_root
                .join("class/accel")
                .join(name)
                .join("device");
            std::fs::create_dir_all(&dev).unwrap();
            std::os::unix::fs::symlink(&drivers, dev.join("driver")).unwrap();
            std::fs::create_dir_all(self.config.sys_root.join("module").join(driver)).unwrap();
        }

        /// Copies the shipped manifest for `model`; optionally creates the built files.
        fn add_artifact(&self, model: &str, built: bool) {
            let name = manifest::file_name(model);
            let text = std::fs::read(manifest::default_dir().join(&name)).unwrap();
            write(&self.config.artifact_dir.join(&name), &text);
            if built {
                let m = Manifest::load(&self.config.artifact_dir.join(&name)).unwrap();
                write(&m.xclbin_path(&self.config.artifact_dir), b"xclbin");
                write(&m.instructions_path(&self.config.artifact_dir), b"insts");
            }
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn dims(model: &str) -> Dims {
        let dir = crate::model::resolve(model).unwrap();
        let file = crate::model::ct2::Ct2File::open(&dir.join("model.bin")).unwrap();
        crate::model::ct2::dims_of(&file).unwrap()
    }

    fn xrt_ok() -> Result<String, String> {
        Ok("2.19.0".into())
    }

    #[test]
    fn nothing_present_names_all_three() {
        let fake = Fake::new("none");
        let report = probe_with_xrt(&fake.config, "base", &dims("base"), Err("no XRT".into()));
        assert!(!report.ready());
        let text = report.to_string();
        assert!(
            text.starts_with("NPU not usable, missing: amdxdna device, XRT, NPU encoder artifact;"),
            "{text}"
        );
        assert!(
            text.contains("accel* node and the amdxdna module is not loaded"),
            "{text}"
        );
        assert!(text.contains("XRT: no XRT"), "{text}");
        assert!(
            text.contains("whisper_encoder_base.json for model `base`"),
            "{text}"
        );
    }

    #[test]
    fn everything_present_is_ready() {
        let fake = Fake::new("ready");
        fake.add_device("accel0", "amdxdna");
        fake.add_artifact("base", true);
        let report = probe_with_xrt(&fake.config, "base", &dims("base"), xrt_ok());
        assert!(report.ready(), "{report}");
        assert!(report.missing().is_empty());
        let text = report.to_string();
        assert!(text.starts_with("NPU ready: "), "{text}");
        assert!(text.contains("accel0 (amdxdna), XRT 2.19.0"), "{text}");
        assert_eq!(
            choose_backend(BackendRequest::Auto, &report).unwrap(),
            (EncoderBackend::Npu, None)
        );
        assert_eq!(
            choose_backend(BackendRequest::Npu, &report).unwrap().0,
            EncoderBackend::Npu
        );
        assert_eq!(
            choose_backend(BackendRequest::Cpu, &report).unwrap().0,
            EncoderBackend::Cpu
        );
    }

    #[test]
    fn only_the_missing_part_is_named() {
        // Device of another driver, XRT present, artifact present.
        let fake = Fake::new("other-driver");
        fake.add_device("accel0", "habanalabs");
        fake.add_artifact("base", true);
        let report = probe_with_xrt(&fake.config, "base", &dims("base"), xrt_ok());
        let text = report.to_string();
        assert!(
            text.starts_with("NPU not usable, missing: amdxdna device;"),
            "{text}"
        );
        assert!(text.contains("accel0 (habanalabs)"), "{text}");
        assert!(
            !text.contains("XRT:") && !text.contains("artifact"),
            "{text}"
        );

        // Device present, XRT missing.
        let fake = Fake::new("no-xrt");
        fake.add_device("accel0", "amdxdna");
        fake.add_artifact("base", true);
        let report = probe_with_xrt(&fake.config, "base", &dims("base"), Err("headers".into()));
        assert!(!report.ready());
        assert_eq!(
            report.to_string(),
            "NPU not usable, missing: XRT; XRT: headers"
        );
    }

    #[test]
    fn artifact_not_built_or_for_another_model() {
        let fake = Fake::new("unbuilt");
        fake.add_device("accel0", "amdxdna");
        fake.add_artifact("base", false);
        let report = probe_with_xrt(&fake.config, "base", &dims("base"), xrt_ok());
        // Device and XRT present are not enough.
        assert!(!report.ready());
        assert_eq!(
            choose_backend(BackendRequest::Auto, &report).unwrap().0,
            EncoderBackend::Cpu
        );
        assert!(choose_backend(BackendRequest::Npu, &report).is_err());
        let text = report.to_string();
        assert!(
            text.contains("missing: NPU encoder artifact;")
                && text.contains("whisper_encoder_base.xclbin is missing (not built"),
            "{text}"
        );

        // tiny.en's manifest renamed to base's: validation names the field.
        let fake = Fake::new("wrong-model");
        fake.add_device("accel0", "amdxdna");
        fake.add_artifact("tiny.en", true);
        std::fs::rename(
            fake.config
                .artifact_dir
                .join(manifest::file_name("tiny.en")),
            fake.config.artifact_dir.join(manifest::file_name("base")),
        )
        .unwrap();
        let report = probe_with_xrt(&fake.config, "base", &dims("base"), xrt_ok());
        let text = report.to_string();
        assert!(text.contains("`model.n_audio_state` is 384"), "{text}");
    }

    #[test]
    fn npu_request_fails_with_the_report_and_auto_falls_back() {
        let fake = Fake::new("fallback");
        fake.add_artifact("tiny.en", true);
        let report = probe_with_xrt(&fake.config, "tiny.en", &dims("tiny.en"), xrt_ok());
        let err = choose_backend(BackendRequest::Npu, &report)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("backend `npu` is not available: {report}"),
            "the error carries the probe's text"
        );
        assert!(err.contains("missing: amdxdna device;"), "{err}");
        let (backend, log) = choose_backend(BackendRequest::Auto, &report).unwrap();
        assert_eq!(backend, EncoderBackend::Cpu);
        assert!(log.unwrap().contains("missing: amdxdna device"));
        assert!("gpu".parse::<BackendRequest>().is_err());
        assert_eq!("npu".parse::<BackendRequest>(), Ok(BackendRequest::Npu));
    }

    #[test]
    fn this_machine_without_xrt_reports_why() {
        // No NPU and no XRT here: the real probe must say so rather than fail or panic.
        let status = xrt_status();
        if let Err(why) = &status {
            assert!(why.contains("XRT") || why.contains("xrt"), "{why}");
        }
        let report = probe(&ProbeConfig::system(), "base", &dims("base"));
        if !Path::new("/dev/accel").exists() {
            assert!(!report.ready());
            assert!(report.to_string().contains("amdxdna device"), "{report}");
        }
    }
}
