//! Manifest of an NPU encoder artifact (`xclbin/whisper_encoder_<model>.json`): the model
//! dimensions it was built for, its tile sizes, the XRT argument / buffer-object layout, the
//! weight packing and the tool versions. The host checks it against the model before it loads
//! anything onto the device: a mismatch is an error that names the manifest field.
//!
//! Argument layout follows mlir-aie's generated kernels (`runtime_lib/test_lib`, the IRON
//! examples' `test.cpp`): argument 0 is the opcode (3 = run a transaction/instruction stream),
//! 1 the instruction buffer object, 2 the instruction count (32-bit words), 3.. the data
//! buffer objects, each in the memory group of its argument index (`kernel.group_id(i)`).
//!
//! Weight packing (`bf16-tiled-v1`): each tensor starts at a multiple of `align_bytes`; a matrix
//! used as the right operand `B[K×N]` of a product (linear weights, stored `[N, K]` in
//! CTranslate2, transposed; convolutions `[d_out, c_in, 3]` as `B[3·c_in, d_out]` with row
//! `tap·c_in + c`) is padded with zeros to multiples of `tile_k × tile_n` and stored as column
//! panels of width `tile_n`, each panel `K / tile_k` tiles of `tile_k × tile_n` row-major bf16;
//! vectors (biases, LayerNorm, positional embedding rows) are contiguous bf16. Tensors come in
//! the order of `tensors` (stem, then each layer's `layer_tensors` with `{layer}` replaced, then
//! `final_tensors`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::Dims;
use crate::model::ct2::Ct2File;
use crate::npu::plan::{self, EncoderShape, Hardware, Tiling};

/// Manifest format this host reads.
pub const MANIFEST_VERSION: u32 = 1;
/// Opcode of mlir-aie kernels for "execute the instruction stream".
pub const OPCODE_RUN_INSTRUCTIONS: u64 = 3;
/// The weight packing this host writes.
pub const PACKING: &str = "bf16-tiled-v1";

/// Directory holding the manifests (and built artifacts) in this source tree.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("xclbin")
}

/// File name of the manifest for a model name (`base` → `whisper_encoder_base.json`).
pub fn file_name(model: &str) -> String {
    format!("whisper_encoder_{model}.json")
}

/// Problems with a manifest. Each names the manifest file and, where it applies, the field.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read NPU manifest {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("NPU manifest {path} is not valid: {why}")]
    Parse { path: PathBuf, why: String },
    #[error("NPU manifest {path}: field `{field}` is {found}, but {expected_what} is {expected}")]
    Mismatch {
        path: PathBuf,
        field: String,
        found: String,
        expected_what: &'static str,
        expected: String,
    },
    #[error("NPU manifest {path}: field `{field}` is invalid: {why}")]
    Invalid {
        path: PathBuf,
        field: String,
        why: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Files {
    /// The xclbin, relative to the manifest's directory.
    pub xclbin: String,
    /// The instruction stream (32-bit words, little-endian), relative to the manifest.
    pub instructions: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDims {
    pub name: String,
    pub n_mels: u64,
    pub n_audio_ctx: u64,
    pub n_audio_state: u64,
    pub n_audio_head: u64,
    pub n_audio_layer: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceLayout {
    /// mlir-aie device target (`npu1` = Phoenix, 4 columns).
    pub target: String,
    pub columns: u64,
    pub compute_rows: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tiles {
    pub gemm_m: u64,
    pub gemm_k: u64,
    pub gemm_n: u64,
    pub attn_q: u64,
    pub attn_kv: u64,
}

impl From<Tiles> for Tiling {
    fn from(t: Tiles) -> Self {
        Tiling {
            gemm_m: t.gemm_m,
            gemm_k: t.gemm_k,
            gemm_n: t.gemm_n,
            attn_q: t.attn_q,
            attn_kv: t.attn_kv,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgKind {
    /// A 32/64-bit scalar passed by value.
    Scalar,
    /// The instruction buffer object (`XCL_BO_FLAGS_CACHEABLE`).
    Instructions,
    /// A data buffer object (`XRT_BO_FLAGS_HOST_ONLY`).
    Buffer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    In,
    Out,
    InOut,
}

/// One kernel argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arg {
    pub index: u64,
    pub name: String,
    pub kind: ArgKind,
    /// Scalars with a fixed value (the opcode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    /// Memory group of a buffer object (equals `index` for mlir-aie kernels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightPacking {
    pub format: String,
    pub tile_k: u64,
    pub tile_n: u64,
    pub align_bytes: u64,
    /// Total bytes of the packed weights (the `weights` buffer).
    pub bytes: u64,
    pub stem_tensors: Vec<String>,
    /// Per layer, `{layer}` replaced by 0..n_audio_layer.
    pub layer_tensors: Vec<String>,
    pub final_tensors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Versions {
    pub mlir_aie: String,
    pub xrt: String,
    pub npu_firmware: String,
    pub amdxdna_driver: String,
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub manifest_version: u32,
    pub artifact: String,
    /// Free text: how the artifact was (or will be) built.
    pub status: String,
    pub files: Files,
    /// Kernel name in the xclbin.
    pub kernel: String,
    pub model: ModelDims,
    pub device: DeviceLayout,
    pub tiles: Tiles,
    pub args: Vec<Arg>,
    pub weight_packing: WeightPacking,
    pub versions: Versions,
}

/// How one encoder tensor is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `[N, K]` linear weight or `[d_out, c_in, 3]` convolution: tiled `B[K×N]`.
    Matrix {
        k: u64,
        n: u64,
    },
    Vector,
}

/// The encoder tensors in packing order with their CTranslate2 shapes and roles.
fn tensor_specs(dims: &ModelDims) -> (Vec<String>, Vec<String>, Vec<String>) {
    let stem = [
        "encoder/conv1/weight",
        "encoder/conv1/bias",
        "encoder/conv2/weight",
        "encoder/conv2/bias",
        "encoder/position_encodings/encodings",
    ];
    let layer = [
        "self_attention/layer_norm/gamma",
        "self_attention/layer_norm/beta",
        "self_attention/linear_0/weight",
        "self_attention/linear_0/bias",
        "self_attention/linear_1/weight",
        "self_attention/linear_1/bias",
        "ffn/layer_norm/gamma",
        "ffn/layer_norm/beta",
        "ffn/linear_0/weight",
        "ffn/linear_0/bias",
        "ffn/linear_1/weight",
        "ffn/linear_1/bias",
    ];
    let _ = dims;
    (
        stem.iter().map(|s| s.to_string()).collect(),
        layer
            .iter()
            .map(|s| format!("encoder/layer_{{layer}}/{s}"))
            .collect(),
        vec![
            "encoder/layer_norm/gamma".into(),
            "encoder/layer_norm/beta".into(),
        ],
    )
}

/// Expected CTranslate2 shape and packing role of an encoder tensor (layer index already
/// substituted or still `{layer}`).
fn expected_tensor(name: &str, m: &ModelDims) -> Option<(Vec<u64>, Role)> {
    let d = m.n_audio_state;
    let ff = 4 * d;
    // `encoder/layer_N/...` (N a number or `{layer}`); `encoder/layer_norm/...` is the final LN.
    let layer_suffix = name
        .strip_prefix("encoder/layer_")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(index, _)| *index == "{layer}" || index.parse::<u64>().is_ok())
        .map(|(_, suffix)| suffix);
    let suffix = match layer_suffix {
        Some(suffix) => suffix,
        None => name.strip_prefix("encoder/")?,
    };
    let mat = |n: u64, k: u64| Some((vec![n, k], Role::Matrix { k, n }));
    let vec1 = |len: u64| Some((vec![len], Role::Vector));
    match suffix {
        "conv1/weight" => Some((
            vec![d, m.n_mels, 3],
            Role::Matrix {
                k: 3 * m.n_mels,
                n: d,
            },
        )),
        "conv2/weight" => Some((vec![d, d, 3], Role::Matrix { k: 3 * d, n: d })),
        "conv1/bias" | "conv2/bias" => vec1(d),
        "position_encodings/encodings" => Some((vec![m.n_audio_ctx, d], Role::Vector)),
        "self_attention/layer_norm/gamma"
        | "self_attention/layer_norm/beta"
        | "ffn/layer_norm/gamma"
        | "ffn/layer_norm/beta"
        | "layer_norm/gamma"
        | "layer_norm/beta" => vec1(d),
        "self_attention/linear_0/weight" => mat(3 * d, d),
        "self_attention/linear_0/bias" => vec1(3 * d),
        "self_attention/linear_1/weight" => mat(d, d),
        "self_attention/linear_1/bias" => vec1(d),
        "ffn/linear_0/weight" => mat(ff, d),
        "ffn/linear_0/bias" => vec1(ff),
        "ffn/linear_1/weight" => mat(d, ff),
        "ffn/linear_1/bias" => vec1(d),
        _ => None,
    }
}

fn packed_bytes(shape: &[u64], role: Role, tile_k: u64, tile_n: u64, align: u64) -> u64 {
    let raw = match role {
        Role::Matrix { k, n } => k.next_multiple_of(tile_k) * n.next_multiple_of(tile_n) * 2,
        Role::Vector => shape.iter().product::<u64>() * 2,
    };
    raw.next_multiple_of(align.max(1))
}

/// Bytes of the packed weights for these dimensions and tiles.
pub fn packed_weight_bytes(m: &ModelDims, tile_k: u64, tile_n: u64, align: u64) -> u64 {
    let (stem, layer, fin) = tensor_specs(m);
    let size = |name: &str| {
        expected_tensor(name, m)
            .map(|(shape, role)| packed_bytes(&shape, role, tile_k, tile_n, align))
            .unwrap_or(0)
    };
    stem.iter().map(|n| size(n)).sum::<u64>()
        + m.n_audio_layer * layer.iter().map(|n| size(n)).sum::<u64>()
        + fin.iter().map(|n| size(n)).sum::<u64>()
}

impl ModelDims {
    pub fn from_dims(name: &str, dims: &Dims) -> Self {
        Self {
            name: name.to_string(),
            n_mels: dims.n_mels as u64,
            n_audio_ctx: dims.n_audio_ctx as u64,
            n_audio_state: dims.n_audio_state as u64,
            n_audio_head: dims.n_audio_head as u64,
            n_audio_layer: dims.n_audio_layer as u64,
        }
    }

    fn shape(&self) -> EncoderShape {
        EncoderShape {
            name: self.name.clone(),
            n_mels: self.n_mels,
            n_ctx: self.n_audio_ctx,
            d_model: self.n_audio_state,
            n_heads: self.n_audio_head,
            n_layers: self.n_audio_layer,
        }
    }
}

impl Manifest {
    /// The manifest a build for `dims` with `tiling` must carry (versions as given). The
    /// kernels' build writes it next to the xclbin; `npu_plan --manifest` prints it.
    pub fn expected(model: ModelDims, tiling: Tiling, versions: Versions, status: &str) -> Self {
        let artifact = format!("whisper_encoder_{}", model.name);
        let align = 64;
        let (stem_tensors, layer_tensors, final_tensors) = tensor_specs(&model);
        let weights = packed_weight_bytes(&model, tiling.gemm_k, tiling.gemm_n, align);
        let shape = model.shape();
        let buffer = |index: u64, name: &str, dtype: &str, bytes: u64, direction| Arg {
            index,
            name: name.into(),
            kind: ArgKind::Buffer,
            value: None,
            group_id: Some(index),
            dtype: Some(dtype.into()),
            bytes: Some(bytes),
            direction: Some(direction),
        };
        let hw = Hardware::phoenix();
        Self {
            manifest_version: MANIFEST_VERSION,
            files: Files {
                xclbin: format!("{artifact}.xclbin"),
                instructions: format!("{artifact}.insts.bin"),
            },
            artifact,
            status: status.into(),
            kernel: "MLIR_AIE".into(),
            device: DeviceLayout {
                target: "npu1".into(),
                columns: hw.columns,
                compute_rows: hw.compute_rows,
            },
            tiles: Tiles {
                gemm_m: tiling.gemm_m,
                gemm_k: tiling.gemm_k,
                gemm_n: tiling.gemm_n,
                attn_q: tiling.attn_q,
                attn_kv: tiling.attn_kv,
            },
            args: vec![
                Arg {
                    index: 0,
                    name: "opcode".into(),
                    kind: ArgKind::Scalar,
                    value: Some(OPCODE_RUN_INSTRUCTIONS),
                    group_id: None,
                    dtype: None,
                    bytes: None,
                    direction: None,
                },
                Arg {
                    index: 1,
                    name: "instructions".into(),
                    kind: ArgKind::Instructions,
                    value: None,
                    group_id: Some(1),
                    dtype: Some("u32".into()),
                    bytes: None,
                    direction: Some(Direction::In),
                },
                Arg {
                    index: 2,
                    name: "instruction_count".into(),
                    kind: ArgKind::Scalar,
                    value: None,
                    group_id: None,
                    dtype: None,
                    bytes: None,
                    direction: None,
                },
                buffer(3, "weights", "bf16", weights, Direction::In),
                buffer(
                    4,
                    "mel",
                    "bf16",
                    shape.n_mels * shape.n_frames() * 2,
                    Direction::In,
                ),
                buffer(
                    5,
                    "scratch",
                    "mixed",
                    plan::scratch_bytes(&shape),
                    Direction::InOut,
                ),
                buffer(
                    6,
                    "encoder_out",
                    "f32",
                    shape.n_ctx * shape.d_model * 4,
                    Direction::Out,
                ),
            ],
            weight_packing: WeightPacking {
                format: PACKING.into(),
                tile_k: tiling.gemm_k,
                tile_n: tiling.gemm_n,
                align_bytes: align,
                bytes: weights,
                stem_tensors,
                layer_tensors,
                final_tensors,
            },
            versions,
            model,
        }
    }

    /// Reads and parses a manifest (format only; see [`Manifest::validate`]).
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses manifest text; `path` is used in errors only.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ManifestError> {
        let manifest: Manifest = serde_json::from_str(text).map_err(|e| ManifestError::Parse {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        if manifest.manifest_version != MANIFEST_VERSION {
            return Err(ManifestError::Mismatch {
                path: path.to_path_buf(),
                field: "manifest_version".into(),
                found: manifest.manifest_version.to_string(),
                expected_what: "the version this host reads",
                expected: MANIFEST_VERSION.to_string(),
            });
        }
        Ok(manifest)
    }

    /// The xclbin path, resolved against the manifest's directory.
    pub fn xclbin_path(&self, manifest_dir: &Path) -> PathBuf {
        manifest_dir.join(&self.files.xclbin)
    }

    /// The instruction-stream path, resolved against the manifest's directory.
    pub fn instructions_path(&self, manifest_dir: &Path) -> PathBuf {
        manifest_dir.join(&self.files.instructions)
    }

    /// The argument called `name`.
    pub fn arg(&self, name: &str) -> Option<&Arg> {
        self.args.iter().find(|a| a.name == name)
    }

    /// Checks the manifest against a model's dimensions: model fields, tiles (hardware limits),
    /// argument layout, buffer sizes and weight packing. `path` is used in errors only.
    pub fn validate(&self, dims: &Dims, path: &Path) -> Result<(), ManifestError> {
        let mismatch = |field: &str, found: String, expected_what, expected: String| {
            Err(ManifestError::Mismatch {
                path: path.to_path_buf(),
                field: field.to_string(),
                found,
                expected_what,
                expected,
            })
        };
        let invalid = |field: &str, why: String| {
            Err(ManifestError::Invalid {
                path: path.to_path_buf(),
                field: field.to_string(),
                why,
            })
        };
        let model = ModelDims::from_dims(&self.model.name, dims);
        for (field, found, want) in [
            ("model.n_mels", self.model.n_mels, model.n_mels),
            (
                "model.n_audio_ctx",
                self.model.n_audio_ctx,
                model.n_audio_ctx,
            ),
            (
                "model.n_audio_state",
                self.model.n_audio_state,
                model.n_audio_state,
            ),
            (
                "model.n_audio_head",
                self.model.n_audio_head,
                model.n_audio_head,
            ),
            (
                "model.n_audio_layer",
                self.model.n_audio_layer,
                model.n_audio_layer,
            ),
        ] {
            if found != want {
                return mismatch(field, found.to_string(), "the model's", want.to_string());
            }
        }

        let hw = Hardware::phoenix();
        if self.device.target != "npu1" {
            return mismatch(
                "device.target",
                format!("`{}`", self.device.target),
                "the only supported target",
                "`npu1` (Phoenix)".into(),
            );
        }
        if self.device.columns == 0 || self.device.columns > hw.columns {
            return invalid(
                "device.columns",
                format!(
                    "{} (npu1 has 1..={} columns)",
                    self.device.columns, hw.columns
                ),
            );
        }
        if self.device.compute_rows == 0 || self.device.compute_rows > hw.compute_rows {
            return invalid(
                "device.compute_rows",
                format!(
                    "{} (npu1 has 1..={} compute rows)",
                    self.device.compute_rows, hw.compute_rows
                ),
            );
        }
        self.validate_tiles(&hw, path)?;
        self.validate_args(&model, path)?;
        self.validate_packing(&model, path)?;
        for (field, value) in [
            ("versions.mlir_aie", &self.versions.mlir_aie),
            ("versions.xrt", &self.versions.xrt),
            ("versions.npu_firmware", &self.versions.npu_firmware),
            ("versions.amdxdna_driver", &self.versions.amdxdna_driver),
        ] {
            if value.trim().is_empty() {
                return invalid(
                    field,
                    "empty: record the version the artifact was built or tested with".into(),
                );
            }
        }
        Ok(())
    }

    /// Checks dimensions (as [`Manifest::validate`]) and that every tensor the packing names
    /// exists in the model file with the shape the packing assumes.
    pub fn validate_model_file(&self, file: &Ct2File, path: &Path) -> Result<(), ManifestError> {
        let dims = crate::model::ct2::dims_of(file).map_err(|e| ManifestError::Invalid {
            path: path.to_path_buf(),
            field: "model".into(),
            why: format!("cannot read the model's dimensions: {e}"),
        })?;
        self.validate(&dims, path)?;
        let model = &self.model;
        let wp = &self.weight_packing;
        let mut names: Vec<(String, String)> = Vec::new();
        for (i, n) in wp.stem_tensors.iter().enumerate() {
            names.push((format!("weight_packing.stem_tensors[{i}]"), n.clone()));
        }
        for layer in 0..model.n_audio_layer {
            for (i, n) in wp.layer_tensors.iter().enumerate() {
                names.push((
                    format!("weight_packing.layer_tensors[{i}] (layer {layer})"),
                    n.replace("{layer}", &layer.to_string()),
                ));
            }
        }
        for (i, n) in wp.final_tensors.iter().enumerate() {
            names.push((format!("weight_packing.final_tensors[{i}]"), n.clone()));
        }
        for (field, name) in names {
            let Some(found) = file.shape(&name) else {
                return Err(ManifestError::Invalid {
                    path: path.to_path_buf(),
                    field,
                    why: format!("tensor `{name}` is not in {}", file.path().display()),
                });
            };
            let found: Vec<u64> = found.iter().map(|&d| d as u64).collect();
            let Some((want, _)) = expected_tensor(&name, model) else {
                return Err(ManifestError::Invalid {
                    path: path.to_path_buf(),
                    field,
                    why: format!("`{name}` is not an encoder tensor this host can pack"),
                });
            };
            if found != want {
                return Err(ManifestError::Mismatch {
                    path: path.to_path_buf(),
                    field,
                    found: format!("`{name}` of shape {found:?} in the model"),
                    expected_what: "the packing's shape",
                    expected: format!("{want:?}"),
                });
            }
        }
        Ok(())
    }

    fn validate_tiles(&self, hw: &Hardware, path: &Path) -> Result<(), ManifestError> {
        let t = &self.tiles;
        let invalid = |field: &str, why: String| {
            Err(ManifestError::Invalid {
                path: path.to_path_buf(),
                field: field.to_string(),
                why,
            })
        };
        // The bf16 matmul intrinsic works on 4×8 · 8×4 blocks.
        for (field, value, multiple) in [
            ("tiles.gemm_m", t.gemm_m, 4),
            ("tiles.gemm_k", t.gemm_k, 8),
            ("tiles.gemm_n", t.gemm_n, 4),
            ("tiles.attn_q", t.attn_q, 4),
            ("tiles.attn_kv", t.attn_kv, 8),
        ] {
            if value == 0 || !value.is_multiple_of(multiple) {
                return invalid(
                    field,
                    format!(
                        "{value} is not a positive multiple of {multiple} (AIE2 bf16 matmul 4x8x4)"
                    ),
                );
            }
        }
        let tiling = Tiling::from(t.clone());
        let budget = hw.core_data_bytes - hw.core_stack_bytes;
        let gemm: u64 = tiling.gemm_core_buffers().iter().map(|b| b.bytes).sum();
        if gemm > budget {
            return invalid(
                "tiles.gemm_m/gemm_k/gemm_n",
                format!(
                    "the matrix-product buffers need {gemm} B of a core's {budget} B data memory"
                ),
            );
        }
        let d_head = self.model.n_audio_state / self.model.n_audio_head.max(1);
        let attn: u64 = tiling
            .attention_core_buffers(d_head)
            .iter()
            .map(|b| b.bytes)
            .sum();
        if attn > budget {
            return invalid(
                "tiles.attn_q/attn_kv",
                format!("the attention buffers need {attn} B of a core's {budget} B data memory"),
            );
        }
        Ok(())
    }

    fn validate_args(&self, model: &ModelDims, path: &Path) -> Result<(), ManifestError> {
        let expected = Manifest::expected(
            model.clone(),
            Tiling::from(self.tiles.clone()),
            self.versions.clone(),
            "",
        );
        if self.args.len() != expected.args.len() {
            return Err(ManifestError::Mismatch {
                path: path.to_path_buf(),
                field: "args".into(),
                found: format!("{} arguments", self.args.len()),
                expected_what: "the host's layout",
                expected: format!(
                    "{} ({})",
                    expected.args.len(),
                    expected
                        .args
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        for (i, (got, want)) in self.args.iter().zip(&expected.args).enumerate() {
            let field = |f: &str| format!("args[{i}].{f}");
            let check = |f: &str, found: String, expected: String| {
                if found == expected {
                    Ok(())
                } else {
                    Err(ManifestError::Mismatch {
                        path: path.to_path_buf(),
                        field: field(f),
                        found,
                        expected_what: if f == "bytes" {
                            "the size this model needs"
                        } else {
                            "the host's layout"
                        },
                        expected,
                    })
                }
            };
            check("index", got.index.to_string(), want.index.to_string())?;
            check(
                "name",
                format!("`{}`", got.name),
                format!("`{}`", want.name),
            )?;
            check(
                "kind",
                format!("{:?}", got.kind),
                format!("{:?}", want.kind),
            )?;
            check(
                "value",
                format!("{:?}", got.value),
                format!("{:?}", want.value),
            )?;
            check(
                "group_id",
                format!("{:?}", got.group_id),
                format!("{:?}", want.group_id),
            )?;
            check(
                "dtype",
                format!("{:?}", got.dtype),
                format!("{:?}", want.dtype),
            )?;
            check(
                "direction",
                format!("{:?}", got.direction),
                format!("{:?}", want.direction),
            )?;
            // The scratch buffer may be larger than the minimum.
            let bytes_ok = match (got.name.as_str(), got.bytes, want.bytes) {
                ("scratch", Some(g), Some(w)) => g >= w,
                (_, g, w) => g == w,
            };
            if !bytes_ok {
                return check(
                    "bytes",
                    format!("{:?}", got.bytes),
                    format!(
                        "{}{:?}",
                        if got.name == "scratch" {
                            "at least "
                        } else {
                            ""
                        },
                        want.bytes
                    ),
                );
            }
        }
        Ok(())
    }

    fn validate_packing(&self, model: &ModelDims, path: &Path) -> Result<(), ManifestError> {
        let wp = &self.weight_packing;
        let mismatch = |field: &str, found: String, expected_what, expected: String| {
            Err(ManifestError::Mismatch {
                path: path.to_path_buf(),
                field: field.to_string(),
                found,
                expected_what,
                expected,
            })
        };
        if wp.format != PACKING {
            return mismatch(
                "weight_packing.format",
                format!("`{}`", wp.format),
                "the packing this host writes",
                format!("`{PACKING}`"),
            );
        }
        if wp.tile_k != self.tiles.gemm_k {
            return mismatch(
                "weight_packing.tile_k",
                wp.tile_k.to_string(),
                "tiles.gemm_k",
                self.tiles.gemm_k.to_string(),
            );
        }
        if wp.tile_n != self.tiles.gemm_n {
            return mismatch(
                "weight_packing.tile_n",
                wp.tile_n.to_string(),
                "tiles.gemm_n",
                self.tiles.gemm_n.to_string(),
            );
        }
        if wp.align_bytes == 0 || !wp.align_bytes.is_power_of_two() || wp.align_bytes < 4 {
            return Err(ManifestError::Invalid {
                path: path.to_path_buf(),
                field: "weight_packing.align_bytes".into(),
                why: format!(
                    "{} is not a power of two >= 4 (shim DMA addresses are 32-bit aligned)",
                    wp.align_bytes
                ),
            });
        }
        let (stem, layer, fin) = tensor_specs(model);
        for (field, got, want) in [
            ("weight_packing.stem_tensors", &wp.stem_tensors, &stem),
            ("weight_packing.layer_tensors", &wp.layer_tensors, &layer),
            ("weight_packing.final_tensors", &wp.final_tensors, &fin),
        ] {
            if got != want {
                return mismatch(
                    field,
                    format!("{got:?}"),
                    "the host's packing order",
                    format!("{want:?}"),
                );
            }
        }
        let bytes = packed_weight_bytes(model, wp.tile_k, wp.tile_n, wp.align_bytes);
        if wp.bytes != bytes {
            return mismatch(
                "weight_packing.bytes",
                wp.bytes.to_string(),
                "the packed size for this model",
                bytes.to_string(),
            );
        }
        let weights = self.arg("weights").and_then(|a| a.bytes);
        if weights != Some(bytes) {
            return mismatch(
                "args[weights].bytes",
                format!("{weights:?}"),
                "weight_packing.bytes",
                bytes.to_string(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_file(name: &str) -> Ct2File {
        let dir = crate::model::resolve(name).expect("models/ holds tiny.en and base");
        Ct2File::open(&dir.join("model.bin")).unwrap()
    }

    fn shipped(name: &str) -> (Manifest, PathBuf) {
        let path = default_dir().join(file_name(name));
        (Manifest::load(&path).unwrap(), path)
    }

    #[test]
    fn shipped_manifests_match_the_real_models() {
        for name in ["tiny.en", "base"] {
            let (manifest, path) = shipped(name);
            let file = model_file(name);
            manifest.validate_model_file(&file, &path).unwrap();
            // The shipped file is exactly what the host expects for these dimensions.
            let dims = crate::model::ct2::dims_of(&file).unwrap();
            let expected = Manifest::expected(
                ModelDims::from_dims(name, &dims),
                Tiling::default(),
                manifest.versions.clone(),
                &manifest.status,
            );
            assert_eq!(manifest, expected, "{name}");
        }
    }

    #[test]
    fn manifest_for_one_model_is_rejected_for_the_other() {
        let (tiny, path) = shipped("tiny.en");
        let err = tiny
            .validate_model_file(&model_file("base"), &path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`model.n_audio_state` is 384") && err.contains("512"),
            "{err}"
        );
    }

    /// An edit that breaks the shipped manifest.
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;

    fn broken(edit: impl Fn(&mut serde_json::Value)) -> String {
        let (_, path) = shipped("base");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut json);
        let text = serde_json::to_string(&json).unwrap();
        let file = model_file("base");
        match Manifest::parse(&text, &path) {
            Err(e) => e.to_string(),
            Ok(m) => m
                .validate_model_file(&file, &path)
                .expect_err("broken manifest was accepted")
                .to_string(),
        }
    }

    #[test]
    fn broken_manifests_name_the_field() {
        let cases: Vec<(&str, Edit)> = vec![
            (
                "`model.n_audio_layer` is 5",
                Box::new(|j| j["model"]["n_audio_layer"] = 5.into()),
            ),
            (
                "`model.n_mels` is 128",
                Box::new(|j| j["model"]["n_mels"] = 128.into()),
            ),
            (
                "`manifest_version` is 2",
                Box::new(|j| j["manifest_version"] = 2.into()),
            ),
            (
                "missing field `tiles`",
                Box::new(|j| {
                    j.as_object_mut().unwrap().remove("tiles");
                }),
            ),
            (
                "unknown field `colour`",
                Box::new(|j| j["colour"] = "blue".into()),
            ),
            (
                "`args[0].value` is Some(2)",
                Box::new(|j| j["args"][0]["value"] = 2.into()),
            ),
            (
                "`args[4].group_id` is Some(9)",
                Box::new(|j| j["args"][4]["group_id"] = 9.into()),
            ),
            (
                "`args[6].bytes` is Some(1)",
                Box::new(|j| j["args"][6]["bytes"] = 1.into()),
            ),
            (
                "`args[5].bytes`",
                Box::new(|j| j["args"][5]["bytes"] = 1000.into()),
            ),
            (
                "`args` is 6 arguments",
                Box::new(|j| {
                    j["args"].as_array_mut().unwrap().pop();
                }),
            ),
            (
                "`tiles.gemm_k` is invalid: 60",
                Box::new(|j| j["tiles"]["gemm_k"] = 60.into()),
            ),
            (
                "`tiles.gemm_m/gemm_k/gemm_n` is invalid",
                Box::new(|j| {
                    j["tiles"]["gemm_m"] = 128.into();
                    j["tiles"]["gemm_k"] = 128.into();
                    j["weight_packing"]["tile_k"] = 128.into();
                }),
            ),
            (
                "`weight_packing.tile_n` is 64",
                Box::new(|j| j["weight_packing"]["tile_n"] = 64.into()),
            ),
            (
                "`weight_packing.bytes` is 7",
                Box::new(|j| j["weight_packing"]["bytes"] = 7.into()),
            ),
            (
                "`weight_packing.format`",
                Box::new(|j| j["weight_packing"]["format"] = "f16-rowmajor".into()),
            ),
            (
                "`weight_packing.layer_tensors`",
                Box::new(|j| {
                    j["weight_packing"]["layer_tensors"][2] =
                        "encoder/layer_{layer}/attention/linear_0/weight".into();
                }),
            ),
            (
                "`device.target` is `npu2`",
                Box::new(|j| j["device"]["target"] = "npu2".into()),
            ),
            (
                "`versions.xrt` is invalid: empty",
                Box::new(|j| j["versions"]["xrt"] = "".into()),
            ),
        ];
        for (want, edit) in cases {
            let err = broken(edit);
            assert!(err.contains(want), "expected `{want}` in: {err}");
            assert!(
                err.contains("whisper_encoder_base.json"),
                "no path in: {err}"
            );
        }
        // Not JSON at all.
        let err = Manifest::parse("{", Path::new("x.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.json is not valid"), "{err}");
        let err = Manifest::load(Path::new("/nonexistent/m.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/m.json"), "{err}");
    }

    #[test]
    fn missing_tensor_in_the_model_is_named() {
        // A manifest whose packing names a tensor the model lacks passes the dimension checks
        // but not the model-file check.
        let (mut m, path) = shipped("base");
        m.weight_packing.final_tensors[1] = "encoder/layer_norm/bias".into();
        let err = m
            .validate_model_file(&model_file("base"), &path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("weight_packing.final_tensors"), "{err}");
    }

    #[test]
    fn packed_sizes() {
        let base = ModelDims {
            name: "base".into(),
            n_mels: 80,
            n_audio_ctx: 1500,
            n_audio_state: 512,
            n_audio_head: 8,
            n_audio_layer: 6,
        };
        // Unpadded for base except conv1 (K = 240 → 256); all sizes are multiples of 64 B.
        let matrices = 256 * 512 + 1536 * 512 + 6 * (512 * 1536 + 512 * 512 + 512 * 2048 * 2);
        let vectors = 512 + 512 + 1500 * 512 + 6 * (512 * 4 + 1536 + 512 + 2048 + 512) + 2 * 512;
        assert_eq!(
            packed_weight_bytes(&base, 64, 32, 64),
            (matrices + vectors) * 2
        );
        // Alignment pads every vector (tiny.en's 384 bf16 = 768 B is a multiple of 256, 6·64).
        assert!(packed_weight_bytes(&base, 64, 32, 4096) > packed_weight_bytes(&base, 64, 32, 64));
    }
}
