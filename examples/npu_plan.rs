//! Prints the cost model of the Whisper encoder on an AMD Phoenix NPU: per phase and per layer
//! FLOPs, DMA bytes and predicted time, dispatches per window and × realtime. Every figure is
//! estimated (see `src/npu/plan.rs`); no NPU is needed or used.
//!
//! ```text
//! cargo run --release --example npu_plan -- --model base
//! ```

use std::process::ExitCode;

use gstwhispernpu::engine::npu::manifest::{Manifest, ModelDims, Versions};
use gstwhispernpu::engine::npu::plan::{Assumptions, EncoderShape, Plan, Tiling};

const USAGE: &str = "\
usage: npu_plan [OPTIONS]

Cost model of the Whisper encoder on a Phoenix NPU (XDNA1). All output is ESTIMATED.

options:
  --model NAME|DIR        built-in shape (tiny.en, tiny, base.en, base, small.en, small,
                          medium.en, medium, large-v2, large-v3) or a model directory whose
                          model.bin gives the dimensions [default: base]
  --gemm-efficiency F     achieved fraction of peak bf16 MACs in matrix products [default: 0.5]
  --dma-efficiency F      achieved fraction of theoretical shim DMA bandwidth [default: 0.5]
  --vector-efficiency F   achieved fraction of the vector lanes [default: 0.5]
  --dispatch-ms MS        host cost per XRT dispatch [default: 1.5, measured in the earlier attempt]
  --no-assumptions        do not print the assumptions block
  --manifest              print instead the xclbin manifest (JSON) a build for this model must
                          carry, derived from the design's tile plan (src/npu/tiling.rs),
                          versions marked as not built; the shipped xclbin/*.json are this
                          output (--model tiny.en / base)
  -h, --help              print this help";

struct Config {
    model: String,
    assumptions: Assumptions,
    print_assumptions: bool,
    manifest: bool,
}

fn parse_fraction(flag: &str, value: Option<String>) -> Result<f64, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    value
        .parse::<f64>()
        .map_err(|_| format!("{flag}: `{value}` is not a number"))
}

fn parse_args() -> Result<Option<Config>, String> {
    let mut config = Config {
        model: "base".into(),
        assumptions: Assumptions::default(),
        print_assumptions: true,
        manifest: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--model" => config.model = args.next().ok_or("--model needs a value")?,
            "--gemm-efficiency" => {
                config.assumptions.gemm_efficiency = parse_fraction(&arg, args.next())?
            }
            "--dma-efficiency" => {
                config.assumptions.dma_efficiency = parse_fraction(&arg, args.next())?
            }
            "--vector-efficiency" => {
                config.assumptions.vector_efficiency = parse_fraction(&arg, args.next())?
            }
            "--dispatch-ms" => {
                config.assumptions.dispatch_s = parse_fraction(&arg, args.next())? / 1e3
            }
            "--no-assumptions" => config.print_assumptions = false,
            "--manifest" => config.manifest = true,
            other => return Err(format!("unknown argument `{other}`\n\n{USAGE}")),
        }
    }
    config.assumptions.validate()?;
    Ok(Some(config))
}

/// A built-in shape by name, else the dimensions of a model directory's model.bin.
fn shape_of(model: &str) -> Result<EncoderShape, String> {
    if let Some(shape) = EncoderShape::builtin(model) {
        return Ok(shape);
    }
    let dir = gstwhispernpu::model::resolve(model).map_err(|e| {
        format!(
            "{e} (built-in shapes: {})",
            EncoderShape::builtin_names().join(", ")
        )
    })?;
    let file = gstwhispernpu::model::ct2::Ct2File::open(&dir.join("model.bin"))
        .map_err(|e| e.to_string())?;
    let dims = gstwhispernpu::model::ct2::dims_of(&file).map_err(|e| e.to_string())?;
    Ok(EncoderShape::from_dims(&dir.display().to_string(), &dims))
}

fn main() -> ExitCode {
    let config = match parse_args() {
        Ok(Some(config)) => config,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("npu_plan: {e}");
            return ExitCode::from(2);
        }
    };
    let shape = match shape_of(&config.model) {
        Ok(shape) => shape,
        Err(e) => {
            eprintln!("npu_plan: {e}");
            return ExitCode::FAILURE;
        }
    };
    if config.manifest {
        let not_built = || "not built yet".to_string();
        let manifest = match Manifest::expected(
            ModelDims {
                name: shape.name.clone(),
                n_mels: shape.n_mels,
                n_audio_ctx: shape.n_ctx,
                n_audio_state: shape.d_model,
                n_audio_head: shape.n_heads,
                n_audio_layer: shape.n_layers,
            },
            Versions {
                mlir_aie: not_built(),
                xrt: not_built(),
                npu_firmware: not_built(),
                amdxdna_driver: not_built(),
            },
            "planned layout; the xclbin and instructions are not built yet (kernels/build.sh on a \
             machine with mlir-aie writes them; record the versions used here)",
        ) {
            Ok(manifest) => manifest,
            Err(e) => {
                eprintln!("npu_plan: {}: {e}", shape.name);
                return ExitCode::FAILURE;
            }
        };
        match serde_json::to_string_pretty(&manifest) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("npu_plan: cannot serialise the manifest: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    let plan = Plan::new(shape, config.assumptions, Tiling::default());
    print!("{plan}");
    if config.print_assumptions {
        println!();
        println!("{}", plan.assumptions.describe());
    }
    ExitCode::SUCCESS
}
