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
//! Every size and the packing description come from the design's tile plan
//! ([`super::tiling::Plan`], the one source the kernels, `kernels/whisper_encoder.py` and the
//! golden model follow): [`Manifest::expected`] derives the argument layout
//! ([`kernel_args`]), the tiles and the weight packing from it, and
//! [`Manifest::validate`] compares a manifest with that, field by field.
//!
//! Weight packing (`bf16-tiled-v2`, [`super::golden::pack_weights`]): tensors in the order of
//! `stem_tensors`, each layer's `layer_tensors` (`{layer}` replaced), `final_tensors`, each
//! starting at a multiple of `align_bytes`. A matrix used as the right operand `B[K×N]` of a
//! product (linear weights, stored `[N, K]` in CTranslate2, transposed; convolutions
//! `[d_out, c_in, 3]` as `B[3·c_in, d_out]` with row `tap·c_in + c`) is `matrix_dtype` (bf16)
//! in column panels of width `tile_n`, each panel `K / tile_k` row-major `tile_k × tile_n`
//! tiles (conv1: `tile_k_conv1`, one tap over all mel bins); the design's shapes need no
//! padding. Biases, LayerNorm parameters and positional embeddings are `vector_dtype` (fp32);
//! the positional embeddings have `position_rows` rows (the padded sequence length, zeros past
//! `n_audio_ctx`); a matrix's bias follows it directly.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::npu::plan::Hardware;
use crate::engine::npu::tiling::{self, Plan, Unsupported};
use crate::model::Dims;
use crate::model::ct2::Ct2File;

/// Manifest format this host reads.
pub const MANIFEST_VERSION: u32 = 1;
/// Opcode of mlir-aie kernels for "execute the instruction stream".
pub const OPCODE_RUN_INSTRUCTIONS: u64 = 3;

/// The kernel arguments of the design for `plan`, in mlir-aie's order: opcode, instruction BO,
/// instruction count, then the data BOs `weights`, `mel`, `scratch`, `encoder_out` in the
/// memory groups of their argument indices, sized by the plan.
pub fn kernel_args(plan: &Plan) -> Vec<Arg> {
    let scalar = |index: u64, name: &str, value: Option<u64>| Arg {
        index,
        name: name.into(),
        kind: ArgKind::Scalar,
        value,
        group_id: None,
        dtype: None,
        bytes: None,
        direction: None,
    };
    let buffer = |index: u64, name: &str, dtype: &str, bytes: usize, direction| Arg {
        index,
        name: name.into(),
        kind: ArgKind::Buffer,
        value: None,
        group_id: Some(index),
        dtype: Some(dtype.into()),
        bytes: Some(bytes as u64),
        direction: Some(direction),
    };
    vec![
        scalar(0, "opcode", Some(OPCODE_RUN_INSTRUCTIONS)),
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
        scalar(2, "instruction_count", None),
        buffer(3, "weights", "mixed", plan.weights_bytes, Direction::In),
        buffer(4, "mel", "bf16", plan.input_bytes, Direction::In),
        buffer(5, "scratch", "mixed", plan.scratch_bytes, Direction::InOut),
        buffer(6, "encoder_out", "f32", plan.output_bytes, Direction::Out),
    ]
}
/// The weight packing this host writes.
pub const PACKING: &str = "bf16-tiled-v2";

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

/// The design's tile sizes (`src/npu/tiling.rs`): the kernels are compiled for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tiles {
    /// Rows of a matrix-product tile.
    pub gemm_m: u64,
    /// Depth of a matrix-product tile.
    pub gemm_k: u64,
    /// Depth of conv1's tiles (one kernel tap over all mel bins).
    pub gemm_k_conv1: u64,
    /// Columns of a matrix-product tile.
    pub gemm_n: u64,
    /// Queries per attention block.
    pub attn_q: u64,
    /// Keys per attention block.
    pub attn_kv: u64,
}

impl Tiles {
    /// The tiles of the design.
    pub fn design() -> Self {
        Self {
            gemm_m: tiling::TM as u64,
            gemm_k: tiling::TK as u64,
            gemm_k_conv1: tiling::TK_CONV1 as u64,
            gemm_n: tiling::TN as u64,
            attn_q: tiling::QB as u64,
            attn_kv: tiling::KB as u64,
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

/// Every field of an [`Arg`], in the order [`first_arg_difference`] compares them.
pub const ARG_FIELDS: &[&str] = &[
    "index",
    "name",
    "kind",
    "value",
    "group_id",
    "dtype",
    "direction",
    "bytes",
];

/// The first field among `fields` in which two argument lists of the same length differ:
/// `(argument index, field, found, expected)`, values as text.
pub fn first_arg_difference(
    got: &[Arg],
    want: &[Arg],
    fields: &[&'static str],
) -> Option<(usize, &'static str, String, String)> {
    let field = |a: &Arg, f: &str| match f {
        "index" => a.index.to_string(),
        "name" => format!("`{}`", a.name),
        "kind" => format!("{:?}", a.kind),
        "value" => format!("{:?}", a.value),
        "group_id" => format!("{:?}", a.group_id),
        "dtype" => format!("{:?}", a.dtype),
        "direction" => format!("{:?}", a.direction),
        "bytes" => format!("{:?}", a.bytes),
        other => unreachable!("no Arg field {other}"),
    };
    got.iter().zip(want).enumerate().find_map(|(i, (g, w))| {
        fields.iter().find_map(|&f| {
            let (found, expected) = (field(g, f), field(w, f));
            (found != expected).then_some((i, f, found, expected))
        })
    })
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

/// How the `weights` buffer is packed (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightPacking {
    pub format: String,
    /// Element type of the weight matrices.
    pub matrix_dtype: String,
    /// Element type of biases, LayerNorm parameters and positional embeddings.
    pub vector_dtype: String,
    pub tile_k: u64,
    pub tile_k_conv1: u64,
    pub tile_n: u64,
    pub align_bytes: u64,
    /// Rows of the packed positional embeddings (the padded sequence length).
    pub position_rows: u64,
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

/// The encoder tensors in packing order (the order of [`super::golden::pack_weights`] and of
/// the plan's weight regions): stem, per layer (`{layer}`), final.
fn tensor_specs() -> (Vec<String>, Vec<String>, Vec<String>) {
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

/// Expected CTranslate2 shape of an encoder tensor (layer index already substituted or still
/// `{layer}`).
fn expected_tensor(name: &str, m: &ModelDims) -> Option<Vec<u64>> {
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
    match suffix {
        "conv1/weight" => Some(vec![d, m.n_mels, 3]),
        "conv2/weight" => Some(vec![d, d, 3]),
        "conv1/bias" | "conv2/bias" => Some(vec![d]),
        "position_encodings/encodings" => Some(vec![m.n_audio_ctx, d]),
        "self_attention/layer_norm/gamma"
        | "self_attention/layer_norm/beta"
        | "ffn/layer_norm/gamma"
        | "ffn/layer_norm/beta"
        | "layer_norm/gamma"
        | "layer_norm/beta" => Some(vec![d]),
        "self_attention/linear_0/weight" => Some(vec![3 * d, d]),
        "self_attention/linear_0/bias" => Some(vec![3 * d]),
        "self_attention/linear_1/weight" => Some(vec![d, d]),
        "self_attention/linear_1/bias" => Some(vec![d]),
        "ffn/linear_0/weight" => Some(vec![ff, d]),
        "ffn/linear_0/bias" => Some(vec![ff]),
        "ffn/linear_1/weight" => Some(vec![d, ff]),
        "ffn/linear_1/bias" => Some(vec![d]),
        _ => None,
    }
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

    /// The design's tile plan for these dimensions.
    pub fn plan(&self) -> Result<Plan, Unsupported> {
        Plan::new(
            self.n_mels as usize,
            self.n_audio_state as usize,
            self.n_audio_head as usize,
            self.n_audio_layer as usize,
            self.n_audio_ctx as usize,
        )
    }
}

/// Alignment of every region in the design's buffers (`tiling.rs` `Allocator`).
const ALIGN_BYTES: u64 = 64;

impl Manifest {
    /// The manifest a build for `model` must carry (versions as given): everything derived from
    /// the design's tile plan ([`ModelDims::plan`]), the argument layout being the host's
    /// ([`kernel_args`]). `npu_plan --manifest` prints it; the shipped
    /// `xclbin/*.json` are its output (`shipped_manifests_are_generated_from_the_plan`).
    pub fn expected(
        model: ModelDims,
        versions: Versions,
        status: &str,
    ) -> Result<Self, Unsupported> {
        let plan = model.plan()?;
        Ok(Self::for_plan(model, &plan, versions, status))
    }

    /// [`Manifest::expected`] for an already built plan of `model`.
    pub fn for_plan(model: ModelDims, plan: &Plan, versions: Versions, status: &str) -> Self {
        let artifact = format!("whisper_encoder_{}", model.name);
        let (stem_tensors, layer_tensors, final_tensors) = tensor_specs();
        let hw = Hardware::phoenix();
        let tiles = Tiles::design();
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
            args: kernel_args(plan),
            weight_packing: WeightPacking {
                format: PACKING.into(),
                matrix_dtype: "bf16".into(),
                vector_dtype: "f32".into(),
                tile_k: tiles.gemm_k,
                tile_k_conv1: tiles.gemm_k_conv1,
                tile_n: tiles.gemm_n,
                align_bytes: ALIGN_BYTES,
                position_rows: plan.t_pad as u64,
                bytes: plan.weights_bytes as u64,
                stem_tensors,
                layer_tensors,
                final_tensors,
            },
            tiles,
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
        let expected = Manifest::expected(model, self.versions.clone(), "").map_err(|e| {
            ManifestError::Invalid {
                path: path.to_path_buf(),
                field: "model".into(),
                why: e.to_string(),
            }
        })?;
        self.validate_tiles(&expected.tiles, path)?;
        self.validate_args(&expected.args, path)?;
        self.validate_packing(&expected.weight_packing, path)?;
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
            let Some(want) = expected_tensor(&name, model) else {
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

    /// The tiles must be the design's: the kernels are compiled for them and the weights
    /// packed with them.
    fn validate_tiles(&self, want: &Tiles, path: &Path) -> Result<(), ManifestError> {
        let t = &self.tiles;
        for (field, found, expected) in [
            ("tiles.gemm_m", t.gemm_m, want.gemm_m),
            ("tiles.gemm_k", t.gemm_k, want.gemm_k),
            ("tiles.gemm_k_conv1", t.gemm_k_conv1, want.gemm_k_conv1),
            ("tiles.gemm_n", t.gemm_n, want.gemm_n),
            ("tiles.attn_q", t.attn_q, want.attn_q),
            ("tiles.attn_kv", t.attn_kv, want.attn_kv),
        ] {
            if found != expected {
                return Err(ManifestError::Mismatch {
                    path: path.to_path_buf(),
                    field: field.into(),
                    found: found.to_string(),
                    expected_what: "the design's (src/npu/tiling.rs)",
                    expected: expected.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The arguments must be the host's layout for the design's plan, sizes included
    /// (exactly: the xclbin's runtime sequence is compiled for these sizes).
    fn validate_args(&self, want: &[Arg], path: &Path) -> Result<(), ManifestError> {
        if self.args.len() != want.len() {
            return Err(ManifestError::Mismatch {
                path: path.to_path_buf(),
                field: "args".into(),
                found: format!("{} arguments", self.args.len()),
                expected_what: "the host's layout",
                expected: format!(
                    "{} ({})",
                    want.len(),
                    want.iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        if let Some((i, f, found, expected)) = first_arg_difference(&self.args, want, ARG_FIELDS) {
            return Err(ManifestError::Mismatch {
                path: path.to_path_buf(),
                field: format!("args[{i}].{f}"),
                found,
                expected_what: if f == "bytes" {
                    "the size the design's plan (src/npu/tiling.rs) gives this model"
                } else {
                    "the host's layout"
                },
                expected,
            });
        }
        Ok(())
    }

    /// The packing description must be the design's, field by field.
    fn validate_packing(&self, want: &WeightPacking, path: &Path) -> Result<(), ManifestError> {
        let wp = &self.weight_packing;
        let q = |s: &str| format!("`{s}`");
        let fields = [
            ("format", q(&wp.format), q(&want.format)),
            ("matrix_dtype", q(&wp.matrix_dtype), q(&want.matrix_dtype)),
            ("vector_dtype", q(&wp.vector_dtype), q(&want.vector_dtype)),
            ("tile_k", wp.tile_k.to_string(), want.tile_k.to_string()),
            (
                "tile_k_conv1",
                wp.tile_k_conv1.to_string(),
                want.tile_k_conv1.to_string(),
            ),
            ("tile_n", wp.tile_n.to_string(), want.tile_n.to_string()),
            (
                "align_bytes",
                wp.align_bytes.to_string(),
                want.align_bytes.to_string(),
            ),
            (
                "position_rows",
                wp.position_rows.to_string(),
                want.position_rows.to_string(),
            ),
            (
                "stem_tensors",
                format!("{:?}", wp.stem_tensors),
                format!("{:?}", want.stem_tensors),
            ),
            (
                "layer_tensors",
                format!("{:?}", wp.layer_tensors),
                format!("{:?}", want.layer_tensors),
            ),
            (
                "final_tensors",
                format!("{:?}", wp.final_tensors),
                format!("{:?}", want.final_tensors),
            ),
            ("bytes", wp.bytes.to_string(), want.bytes.to_string()),
        ];
        for (f, found, expected) in fields {
            if found != expected {
                return Err(ManifestError::Mismatch {
                    path: path.to_path_buf(),
                    field: format!("weight_packing.{f}"),
                    found,
                    expected_what: "the design's packing (src/npu/tiling.rs, golden::pack_weights)",
                    expected,
                });
            }
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

    /// The shipped files are `npu_plan --manifest` output: exactly [`Manifest::expected`]
    /// (derived from the design's plan) for the real models' dimensions, and they pass the
    /// host's own argument check against that plan. Regenerate them with
    /// `cargo run --release --example npu_plan -- --model NAME --manifest > xclbin/whisper_encoder_NAME.json`.
    #[test]
    fn shipped_manifests_are_generated_from_the_plan() {
        for name in ["tiny.en", "base"] {
            let (manifest, path) = shipped(name);
            let file = model_file(name);
            manifest.validate_model_file(&file, &path).unwrap();
            let dims = crate::model::ct2::dims_of(&file).unwrap();
            let model = ModelDims::from_dims(name, &dims);
            let plan = model.plan().unwrap();
            let expected =
                Manifest::expected(model, manifest.versions.clone(), &manifest.status).unwrap();
            assert_eq!(
                manifest,
                expected,
                "{} is stale: regenerate it with npu_plan --manifest",
                path.display()
            );
            crate::engine::npu::host::check_layout(
                &manifest.args,
                &plan,
                &path.display().to_string(),
            )
            .unwrap();
            let bytes = |n: &str| manifest.arg(n).and_then(|a| a.bytes).unwrap() as usize;
            assert_eq!(bytes("weights"), plan.weights_bytes, "{name}");
            assert_eq!(bytes("mel"), plan.input_bytes, "{name}");
            assert_eq!(bytes("scratch"), plan.scratch_bytes, "{name}");
            assert_eq!(bytes("encoder_out"), plan.output_bytes, "{name}");
            assert_eq!(manifest.weight_packing.bytes as usize, plan.weights_bytes);
            assert_eq!(manifest.weight_packing.position_rows as usize, plan.t_pad);
        }
        // The figures the README quotes: weights, mel, scratch, output bytes.
        for (name, want) in [
            ("tiny.en", [17_670_144, 491_840, 15_336_192, 2_304_000]),
            ("base", [42_881_024, 491_840, 20_448_256, 3_072_000]),
        ] {
            let (manifest, _) = shipped(name);
            let sizes: Vec<Option<u64>> = manifest.args[3..].iter().map(|a| a.bytes).collect();
            assert_eq!(sizes, want.map(Some), "{name}");
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
                "`tiles.gemm_k` is 60, but the design's (src/npu/tiling.rs) is 64",
                Box::new(|j| j["tiles"]["gemm_k"] = 60.into()),
            ),
            (
                "`tiles.attn_q` is 32",
                Box::new(|j| j["tiles"]["attn_q"] = 32.into()),
            ),
            (
                "`weight_packing.tile_n` is 32",
                Box::new(|j| j["weight_packing"]["tile_n"] = 32.into()),
            ),
            (
                "`weight_packing.vector_dtype` is `bf16`",
                Box::new(|j| j["weight_packing"]["vector_dtype"] = "bf16".into()),
            ),
            (
                "`weight_packing.position_rows` is 1500",
                Box::new(|j| j["weight_packing"]["position_rows"] = 1500.into()),
            ),
            (
                "`args[4].bytes` is Some(480000), but the size the design's plan",
                Box::new(|j| j["args"][4]["bytes"] = 480_000.into()),
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
        // bf16 matrices (no padding: conv1's K = 240 is three 80-deep tiles), fp32 vectors,
        // positions padded to 1536 rows; every region of base is a multiple of 64 B.
        let matrices = 240 * 512 + 1536 * 512 + 6 * (512 * 1536 + 512 * 512 + 512 * 2048 * 2);
        let vectors = 512 + 512 + 1536 * 512 + 6 * (512 * 4 + 1536 + 512 + 2048 + 512) + 2 * 512;
        let m = Manifest::expected(base, versions(), "").unwrap();
        assert_eq!(m.weight_packing.bytes, matrices * 2 + vectors * 4);
        assert_eq!(
            m.arg("weights").unwrap().bytes,
            Some(m.weight_packing.bytes)
        );
        // A shape the kernels cannot run is refused, not described.
        let large = ModelDims {
            name: "large-v3".into(),
            n_mels: 128,
            n_audio_ctx: 1500,
            n_audio_state: 1280,
            n_audio_head: 20,
            n_audio_layer: 32,
        };
        let err = Manifest::expected(large, versions(), "").unwrap_err();
        assert!(err.to_string().contains("128 mel bins"), "{err}");
    }

    fn versions() -> Versions {
        Versions {
            mlir_aie: "x".into(),
            xrt: "x".into(),
            npu_firmware: "x".into(),
            amdxdna_driver: "x".into(),
        }
    }
}
