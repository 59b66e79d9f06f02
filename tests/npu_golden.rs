//! The NPU encoder's kernels, golden model and DMA plan (issue 6, items 1 and 5):
//! - the Rust golden kernels equal the host builds of the C++ AIE2 kernels bit for bit;
//! - the kernels agree with the CPU engine's ops (LayerNorm, GELU, softmax attention, GEMM);
//! - every access pattern of the design is in bounds, within the AIE2 BD limits, and covers
//!   its buffer the expected number of times; per-core and memory-tile budgets hold;
//! - the golden encoder on jfk (tiny.en) matches the f32 CPU encoder layer by layer, in one
//!   dispatch per window;
//! - the host encoder (issue 6, item 4) drives the simulated device with one run per window and
//!   the manifest's argument order; failed / timed-out runs are errors, never output; the
//!   transcriber then falls back to the CPU;
//! - encoding the next window while decoding this one (speculation) changes no transcript and
//!   is used when a window ends in silence;
//! - `backend=npu` without an NPU fails naming what is missing (engine, XRT adapter, CLI).

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use gstwhispernpu::audio::N_FRAMES;
use gstwhispernpu::audio::mel::{MelFrontend, MelStream};
use gstwhispernpu::engine::cpu::{EncoderWorkspace, encode, encoder_layer, math, ops};
use gstwhispernpu::engine::npu::device::{DeviceError, NpuDevice, RunArg};
use gstwhispernpu::engine::npu::golden::GoldenError;
use gstwhispernpu::engine::npu::golden_kernels as gk;
use gstwhispernpu::engine::npu::host::{NpuEncoder, NpuError};
use gstwhispernpu::engine::npu::manifest::{self, ArgKind, Manifest};
use gstwhispernpu::engine::npu::sim::{SimDevice, SimFault};
use gstwhispernpu::engine::npu::tiling::{
    self, AMode, Bd, BoId, CORE_MEM_BYTES, DH, Dir, KB, MEMTILE_BYTES, Plan, QB, Step, TM, TN,
};
use gstwhispernpu::engine::worker::NpuStats;
use gstwhispernpu::engine::{ComputeType, WhisperModel};
use gstwhispernpu::transcribe::{EncoderBackend, Segment, TranscribeOptions, Transcriber};
use whispernpu_kernels_host as host;

/// Deterministic pseudo-random numbers (xorshift), uniform in [-scale, scale).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
    fn bf16(&mut self, n: usize, scale: f32) -> Vec<u16> {
        (0..n).map(|_| gk::to_bf16(self.next() * scale)).collect()
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn golden_kernels_equal_host_cpp_kernels_bit_for_bit() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    // GEMM tiles (both compiled depths), accumulating over several K steps.
    for k in [64, 80] {
        let mut c_cpp = vec![0.0f32; TM * TN];
        host::zero(&mut c_cpp);
        let mut c_rs = vec![0.0f32; TM * TN];
        for _ in 0..3 {
            let a = rng.bf16(TM * k, 2.0);
            let b = rng.bf16(k * TN, 0.5);
            host::mm(k, &a, &b, &mut c_cpp);
            gk::mm(k, &a, &b, &mut c_rs);
        }
        assert_eq!(bits(&c_cpp), bits(&c_rs), "mm k={k}");
        let bias = rng.vec(TN, 1.0);
        let (mut o_cpp, mut o_rs) = (vec![0u16; TM * TN], vec![0u16; TM * TN]);
        host::bias_bf16(&c_cpp, &bias, &mut o_cpp);
        gk::bias_bf16(&c_rs, &bias, &mut o_rs);
        assert_eq!(o_cpp, o_rs, "bias_bf16");
        host::bias_gelu_bf16(&c_cpp, &bias, &mut o_cpp);
        gk::bias_gelu_bf16(&c_rs, &bias, &mut o_rs);
        assert_eq!(o_cpp, o_rs, "bias_gelu_bf16");
        let pos = rng.vec(TM * TN, 1.0);
        let (mut f_cpp, mut f_rs) = (vec![0.0f32; TM * TN], vec![0.0f32; TM * TN]);
        host::bias_gelu_pos_f32(&c_cpp, &bias, &pos, &mut f_cpp);
        gk::bias_gelu_pos_f32(&c_rs, &bias, &pos, &mut f_rs);
        assert_eq!(bits(&f_cpp), bits(&f_rs), "bias_gelu_pos_f32");
        let x = rng.vec(TM * TN, 3.0);
        let (mut x_cpp, mut x_rs) = (x.clone(), x);
        host::bias_residual_f32(&c_cpp, &bias, &mut x_cpp);
        gk::bias_residual_f32(&c_rs, &bias, &mut x_rs);
        assert_eq!(bits(&x_cpp), bits(&x_rs), "bias_residual_f32");
    }
    // GELU over a wide range, including the tails and zero.
    let xs: Vec<f32> = (-4000..=4000).map(|i| i as f32 * 0.0025).collect();
    let c: Vec<f32> = xs
        .iter()
        .flat_map(|&x| std::iter::repeat_n(x, TN))
        .take(TM * TN)
        .collect();
    let zero_bias = vec![0.0f32; TN];
    let pos = vec![0.0f32; TM * TN];
    for chunk in xs.chunks(TM * TN).chain([c.as_slice()]) {
        let mut tile = vec![0.0f32; TM * TN];
        tile[..chunk.len()].copy_from_slice(chunk);
        let (mut a, mut b) = (vec![0.0f32; TM * TN], vec![0.0f32; TM * TN]);
        host::bias_gelu_pos_f32(&tile, &zero_bias, &pos, &mut a);
        gk::bias_gelu_pos_f32(&tile, &zero_bias, &pos, &mut b);
        assert_eq!(bits(&a), bits(&b), "gelu");
    }
    // LayerNorm, d = 384 and 512, rows with offsets and spread.
    for d in [384, 512] {
        let rows = 5;
        let mut x = rng.vec(rows * d, 4.0);
        for (r, row) in x.chunks_mut(d).enumerate() {
            row.iter_mut().for_each(|v| *v += 10.0 * r as f32);
        }
        let gamma = rng.vec(d, 1.5);
        let beta = rng.vec(d, 0.5);
        let (mut a, mut b) = (vec![0u16; rows * d], vec![0u16; rows * d]);
        host::layer_norm_bf16(&x, &gamma, &beta, &mut a);
        gk::layer_norm_bf16(&x, &gamma, &beta, &mut b);
        assert_eq!(a, b, "layer_norm_bf16 d={d}");
        let (mut a, mut b) = (vec![0.0f32; rows * d], vec![0.0f32; rows * d]);
        host::layer_norm_f32(&x, &gamma, &beta, &mut a);
        gk::layer_norm_f32(&x, &gamma, &beta, &mut b);
        assert_eq!(bits(&a), bits(&b), "layer_norm_f32 d={d}");
    }
    // Attention: several key blocks, a partial one (28 valid) and an empty one.
    let q = rng.bf16(QB * DH, 2.0);
    let mut st_cpp = host::AttnState::new();
    let mut st_rs = gk::AttnState::new();
    st_rs.init(&q, DH);
    for valid in [KB, KB, 28, 0, KB] {
        let kk = rng.bf16(KB * DH, 2.0);
        let vv = rng.bf16(KB * DH, 1.0);
        st_cpp.block(&q, &kk, &vv, 0.125, valid);
        st_rs.block(&kk, &vv, DH, 0.125, valid);
        assert_eq!(bits(&st_cpp.m), bits(&st_rs.m), "running max");
        assert_eq!(bits(&st_cpp.l), bits(&st_rs.l), "running sum");
        assert_eq!(bits(&st_cpp.o), bits(&st_rs.o), "running output");
    }
    let (mut a, mut b) = (vec![0u16; QB * DH], vec![0u16; QB * DH]);
    st_cpp.finish(&mut a);
    st_rs.finish(&mut b, DH);
    assert_eq!(a, b, "attention output");
}

/// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))` in f64.
fn gelu_exact(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

#[test]
fn gelu_kernel_max_error_against_exact_erf() {
    // Every f32 step of 1e-3 over [-12, 12]: the measured maximum absolute error of the
    // kernels' GELU (A&S 7.1.26 erf with the kernels' exp) against the exact erf GELU.
    let mut worst = (0.0f64, 0.0f32);
    for i in -12_000..=12_000 {
        let x = i as f32 * 1e-3;
        let err = (gk::gelu(x) as f64 - gelu_exact(x as f64)).abs();
        if err > worst.0 {
            worst = (err, x);
        }
    }
    eprintln!(
        "kernel GELU max |error| vs exact erf: {:e} at x = {}",
        worst.0, worst.1
    );
    assert!(worst.0 < 1e-6, "GELU error {} at {}", worst.0, worst.1);
    // And against the CPU engine's GELU (the same formula with its own exp): f32 rounding only.
    let worst_cpu = (-12_000..=12_000)
        .map(|i| {
            let x = i as f32 * 1e-3;
            (gk::gelu(x) - math::gelu(x)).abs()
        })
        .fold(0.0f32, f32::max);
    assert!(worst_cpu < 1e-6, "kernel vs CPU GELU {worst_cpu}");
}

#[test]
fn kernels_agree_with_cpu_engine_ops() {
    let mut rng = Rng(0xfeed_beef_0bad_cafe);
    // LayerNorm: fp32 statistics → the CPU's LayerNorm within f32 rounding.
    let d = 512;
    let x = rng.vec(8 * d, 3.0);
    let (gamma, beta) = (rng.vec(d, 1.0), rng.vec(d, 0.2));
    let (mut a, mut b) = (vec![0.0f32; 8 * d], vec![0.0f32; 8 * d]);
    gk::layer_norm_f32(&x, &gamma, &beta, &mut a);
    ops::layer_norm(&x, &gamma, &beta, &mut b);
    let worst = a
        .iter()
        .zip(&b)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f32::max);
    assert!(worst < 1e-5, "layer norm differs by {worst}");

    // Attention over a whole 1500-key sequence in 47 blocks vs the CPU's softmax row on the
    // same bf16 inputs: the online softmax equals the two-pass one up to bf16 probabilities.
    let t: usize = 1500;
    let q = rng.bf16(QB * DH, 1.5);
    let kk = rng.bf16(t.next_multiple_of(KB) * DH, 1.5);
    let vv = rng.bf16(t.next_multiple_of(KB) * DH, 1.0);
    let scale = 0.125;
    let mut st = gk::AttnState::new();
    st.init(&q, DH);
    for kb in 0..t.div_ceil(KB) {
        let valid = (t - kb * KB).min(KB);
        st.block(&kk[kb * KB * DH..], &vv[kb * KB * DH..], DH, scale, valid);
    }
    let mut out = vec![0u16; QB * DH];
    st.finish(&mut out, DH);
    let mut worst = 0.0f32;
    for i in 0..QB {
        let mut row: Vec<f32> = (0..t)
            .map(|j| {
                (0..DH)
                    .map(|p| gk::from_bf16(q[i * DH + p]) * gk::from_bf16(kk[j * DH + p]))
                    .sum::<f32>()
                    * scale
            })
            .collect();
        ops::softmax_row(&mut row);
        for c in 0..DH {
            let r: f32 = (0..t).map(|j| row[j] * gk::from_bf16(vv[j * DH + c])).sum();
            worst = worst.max((r - gk::from_bf16(out[i * DH + c])).abs());
        }
    }
    eprintln!("online-softmax attention vs CPU softmax: max |difference| {worst:e}");
    assert!(worst < 2e-3, "attention differs by {worst}");

    // GEMM tile vs an f64 product of the same bf16 operands.
    let a = rng.bf16(TM * 64, 2.0);
    let bm = rng.bf16(64 * TN, 0.5);
    let mut c = vec![0.0f32; TM * TN];
    gk::mm(64, &a, &bm, &mut c);
    for i in 0..TM {
        for j in 0..TN {
            let r: f64 = (0..64)
                .map(|p| gk::from_bf16(a[i * 64 + p]) as f64 * gk::from_bf16(bm[p * TN + j]) as f64)
                .sum();
            assert!((c[i * TN + j] as f64 - r).abs() < 1e-4, "mm ({i},{j})");
        }
    }
}

/// Expected number of accesses of element `e` of `region` by all the patterns of `step`.
fn expected_count(step: &Step, bd: &Bd, e: usize) -> usize {
    let r = bd.region;
    match step {
        Step::Gemm(g) => {
            let (nt, kt) = (g.b.n_tiles(), g.b.k_tiles());
            if r == g.b.w || r == g.b.bias {
                return g.row_tiles();
            }
            if bd.dir == Dir::Write || r != g.a {
                // Output (and the residual / positions read with the output's pattern): once
                // over the rows written.
                let start = if r == g.out { g.out_offset } else { 0 };
                return usize::from(e >= start && e < start + g.m * g.ldo);
            }
            match g.a_mode {
                AMode::Rows { lda } => nt * usize::from(e < g.m * lda),
                AMode::Conv1 { n_mels } => {
                    let s = e / n_mels;
                    nt * (0..kt).filter(|&p| s >= p && s - p < g.m).count()
                }
                AMode::Conv2 { d } => {
                    let s = e / d;
                    nt * (0..g.m).filter(|&t| s >= 2 * t && s <= 2 * t + 2).count()
                }
            }
        }
        Step::Norm(n) => {
            if r == n.gamma || r == n.beta {
                return n.groups().min(tiling::AUX_CORES);
            }
            usize::from(e < n.rows * n.d)
        }
        Step::Attention(a) => {
            if bd.dir == Dir::Write {
                return 1;
            }
            let (row, col) = (e / (3 * a.d), e % (3 * a.d));
            if col < a.d {
                1
            } else {
                a.query_blocks() * usize::from(row < a.key_blocks() * KB)
            }
        }
    }
}

fn check_plan(plan: &Plan) {
    let region_len = |bo: BoId| match bo {
        BoId::Weights => plan.weights_bytes,
        BoId::Input => plan.input_bytes,
        BoId::Scratch => plan.scratch_bytes,
        BoId::Output => plan.output_bytes,
    };
    let mut patterns = 0;
    for step in &plan.steps {
        // Budgets.
        let core = tiling::core_bytes(step);
        assert!(core <= CORE_MEM_BYTES, "{step:?}: {core} bytes per core");
        let mem = tiling::memtile_bytes(step);
        assert!(
            mem <= MEMTILE_BYTES,
            "{step:?}: {mem} bytes per memory tile"
        );
        if let Step::Gemm(g) = step {
            // Every output tile on exactly one core.
            let mut seen = vec![0u8; g.row_tiles() * g.b.n_tiles()];
            for c in 0..tiling::GEMM_CORES {
                for (i, j) in g.tiles_of(c) {
                    assert_eq!(tiling::Gemm::core_of(i, j), c);
                    seen[i * g.b.n_tiles() + j] += 1;
                }
            }
            assert!(
                seen.iter().all(|&s| s == 1),
                "{}: tiles not partitioned",
                g.name
            );
        }
        // Patterns: limits, bounds, coverage per (region, direction).
        let bds = tiling::bds(step);
        let mut counts: HashMap<(usize, BoId, bool), (Bd, Vec<u32>)> = HashMap::new();
        for bd in &bds {
            patterns += 1;
            if let Err(e) = bd.check_limits() {
                panic!("{step:?}: pattern {bd:?} breaks the BD limits: {e}");
            }
            assert!(
                bd.region.end() <= region_len(bd.region.bo),
                "region outside its BO"
            );
            let entry = counts
                .entry((bd.region.offset, bd.region.bo, bd.dir == Dir::Write))
                .or_insert_with(|| (*bd, vec![0; bd.region.len]));
            for addr in bd.addresses() {
                assert!(
                    addr < bd.region.len,
                    "{step:?}: {bd:?} reads past its region at {addr}"
                );
                entry.1[addr] += 1;
            }
        }
        for (bd, count) in counts.values() {
            for (e, &n) in count.iter().enumerate() {
                let want = expected_count(step, bd, e);
                assert_eq!(
                    n as usize, want,
                    "{step:?}: element {e} of {:?} ({:?}) accessed {n} times, expected {want}",
                    bd.region, bd.dir
                );
            }
        }
    }
    for kind in [tiling::CoreKind::Gemm, tiling::CoreKind::Aux] {
        let bytes = tiling::program_core_bytes(plan, kind);
        eprintln!("{kind:?} core program: {bytes} bytes of data memory");
        assert!(bytes <= CORE_MEM_BYTES, "{kind:?} cores need {bytes} bytes");
    }
    eprintln!("{} steps, {patterns} patterns checked", plan.steps.len());
}

#[test]
fn dma_patterns_cover_buffers_within_limits_tiny_and_base() {
    // tiny(.en) and base dimensions: 80 mels, d 384 / 512, 6 / 8 heads, 1500 positions. Layers
    // repeat the same patterns at other weight offsets, so two layers cover every shape.
    check_plan(&Plan::new(80, 384, 6, 2, 1500).expect("tiny plan"));
    check_plan(&Plan::new(80, 512, 8, 2, 1500).expect("base plan"));
}

#[test]
fn plan_rejects_shapes_the_kernels_do_not_support() {
    assert!(Plan::new(128, 384, 6, 4, 1500).is_err(), "128 mel bins");
    assert!(Plan::new(80, 384, 4, 4, 1500).is_err(), "head width 96");
    assert!(
        Plan::new(80, 400, 6, 4, 1500).is_err(),
        "width not a multiple of 64"
    );
}

/// jfk's first window as the CPU engine's encoder takes it.
fn jfk_window(n_mels: usize) -> Vec<f32> {
    let (audio, rate) = common::read_wav(&common::jfk_wav());
    assert_eq!(rate, 16_000);
    let mut stream = MelStream::new(Arc::new(MelFrontend::new(n_mels)));
    stream.push(&audio);
    stream.finish();
    let n = stream.frames_available().min(N_FRAMES);
    let mut window = vec![0.0; n_mels * N_FRAMES];
    stream.window(0, n, 0.0, &mut window);
    window
}

/// The CPU f32 encoder's residual stream after each layer and its output.
fn cpu_layers(model: &WhisperModel, mel: &[f32]) -> (Vec<Vec<f32>>, Vec<f32>) {
    let w = model.cpu_weights().expect("a native model");
    let dims = &model.dims;
    let (t, d, frames, n_mels) = (
        dims.n_audio_ctx,
        dims.n_audio_state,
        2 * dims.n_audio_ctx,
        dims.n_mels,
    );
    let p = gemm::Parallelism::Rayon(0);
    // The convolutions as the engine's `encode` runs them (im2col, index c * 3 + k).
    let mut im1 = vec![0.0f32; frames * n_mels * 3];
    for ti in 0..frames {
        for c in 0..n_mels {
            for k in 0..3 {
                let s = ti as isize + k as isize - 1;
                if s >= 0 && (s as usize) < frames {
                    im1[ti * n_mels * 3 + c * 3 + k] = mel[c * frames + s as usize];
                }
            }
        }
    }
    let mut c1 = vec![0.0f32; frames * d];
    w.conv1.forward_gelu(&im1, frames, &mut c1, p);
    let mut im2 = vec![0.0f32; t * d * 3];
    for ti in 0..t {
        for k in 0..3 {
            let s = 2 * ti as isize + k as isize - 1;
            if s >= 0 && (s as usize) < frames {
                for c in 0..d {
                    im2[ti * d * 3 + c * 3 + k] = c1[s as usize * d + c];
                }
            }
        }
    }
    let mut ws = EncoderWorkspace::new(dims);
    w.conv2.forward_gelu(&im2, t, &mut ws.x, p);
    for (x, pos) in ws.x.iter_mut().zip(&w.enc_pos) {
        *x += pos;
    }
    let mut layers = Vec::new();
    for layer in &w.enc_layers {
        encoder_layer(layer, dims, &mut ws, 2);
        layers.push(ws.x.clone());
    }
    let mut out = vec![0.0f32; t * d];
    ops::layer_norm(&ws.x, &w.enc_ln.gamma, &w.enc_ln.beta, &mut out);
    (layers, out)
}

#[test]
fn golden_encoder_matches_cpu_f32_per_layer_on_jfk_tiny_en() {
    let dir = common::model_dir("tiny.en");
    let model = WhisperModel::load_with(&dir, ComputeType::F32).expect("tiny.en loads");
    let mel = jfk_window(model.dims.n_mels);
    let (cpu_layers, cpu_out) = cpu_layers(&model, &mel);
    // The replicated CPU pipeline is the engine's encoder.
    let mut ws = EncoderWorkspace::new(&model.dims);
    encode(
        model.cpu_weights().expect("a native model"),
        &mel,
        &mut ws,
        2,
    );
    let same = common::cosine(&ws.x, &cpu_out);
    assert!(
        same > 0.999_999,
        "test's CPU pipeline vs engine encode: {same}"
    );

    let (mut golden, out) =
        check_layers_against_cpu(&model, &mel, &cpu_layers, &ws.x, TINY_EN_MIN_COSINE);
    let t_d = out.len();
    // A second window: one more dispatch, same result (no state leaks between windows).
    let mut again = vec![0.0f32; t_d];
    golden.encode(&mel, &mut again).expect("second window");
    assert_eq!(golden.dispatches(), 2);
    assert_eq!(bits(&out), bits(&again), "second window differs");
    // Bad inputs are errors, not panics, and do not dispatch.
    assert!(matches!(
        golden.encode(&mel[1..], &mut again),
        Err(NpuError::Golden(GoldenError::BadLength { .. }))
    ));
    assert!(matches!(
        golden.encode(&mel, &mut again[1..]),
        Err(NpuError::Golden(GoldenError::BadLength { .. }))
    ));
    assert_eq!(golden.dispatches(), 2);
}

/// `audio` transcribed with `backend` (NPU backends: next-window overlap on): the text, the
/// NPU dispatches and the windows decoded.
fn transcribe(
    model: &Arc<WhisperModel>,
    audio: &[f32],
    backend: EncoderBackend,
) -> (String, Option<u64>, u64) {
    let run = transcribe_with(model, audio, backend, true);
    (run.text, run.npu.map(|s| s.dispatches), run.windows)
}

struct Run {
    text: String,
    segments: Vec<Segment>,
    npu: Option<NpuStats>,
    windows: u64,
}

fn transcribe_with(
    model: &Arc<WhisperModel>,
    audio: &[f32],
    backend: EncoderBackend,
    npu_overlap: bool,
) -> Run {
    let opts = TranscribeOptions {
        backend,
        n_threads: 2,
        npu_overlap,
        ..TranscribeOptions::default()
    };
    let t = Transcriber::new(Arc::clone(model), opts).expect("transcriber");
    run_transcriber(t, audio)
}

fn run_transcriber(mut t: Transcriber, audio: &[f32]) -> Run {
    let mut segments = t.push(audio).expect("push");
    segments.extend(t.finish().expect("finish"));
    let text: Vec<&str> = segments.iter().map(|s| s.text.trim()).collect();
    Run {
        text: text.join(" "),
        npu: t.npu_stats(),
        windows: t.stats().windows,
        segments,
    }
}

/// The invariants of the NPU counters: every window encoded on the NPU, one dispatch per
/// window plus one per discarded speculation, at most one hit per window but the first.
fn check_npu_stats(stats: NpuStats, windows: u64) {
    assert_eq!(stats.failures, 0, "{stats:?}");
    assert_eq!(stats.windows, windows, "{stats:?}");
    assert_eq!(
        stats.dispatches,
        stats.windows + stats.speculative_misses,
        "{stats:?}"
    );
    assert!(stats.speculative_hits < windows.max(1), "{stats:?}");
}

#[test]
fn npu_sim_backend_transcribes_jfk_as_the_cpu_backend_tiny_en() {
    let dir = common::model_dir("tiny.en");
    let model = Arc::new(WhisperModel::load_with(&dir, ComputeType::F32).expect("tiny.en loads"));
    let (audio, _) = common::read_wav(&common::jfk_wav());
    let (cpu, cpu_dispatches, _) = transcribe(&model, &audio, EncoderBackend::Cpu);
    let (npu, npu_dispatches, windows) = transcribe(&model, &audio, EncoderBackend::NpuSim);
    let serial = transcribe_with(&model, &audio, EncoderBackend::NpuSim, false);
    eprintln!("cpu: {cpu}\nnpu-sim: {npu}");
    assert_eq!(serial.text, npu, "overlap changed the transcript");
    check_npu_stats(serial.npu.expect("npu stats"), serial.windows);
    assert!(
        cpu.contains("ask not what your country can do for you"),
        "{cpu}"
    );
    assert_eq!(npu, cpu, "npu-sim transcript differs from the CPU's");
    assert_eq!(cpu_dispatches, None);
    assert_eq!(npu_dispatches, Some(windows), "one dispatch per window");
    assert!(windows >= 1);
}

/// Multi-window speech (111.9 s, five windows with the seek loop): the npu-sim backend's WER
/// against the known text equals the CPU backend's (the README: 9.03 % both), with one dispatch
/// per window; with overlap the segments are the same and the next window's start is predicted
/// for most windows.
#[test]
fn npu_sim_backend_multiwindow_wer_equals_the_cpu_backends_tiny_en() {
    let dir = common::model_dir("tiny.en");
    let model = Arc::new(WhisperModel::load_with(&dir, ComputeType::F32).expect("tiny.en loads"));
    let (audio, truth) = common::multiwindow_recording();
    let (cpu_text, _, _) = transcribe(&model, &audio, EncoderBackend::Cpu);
    let overlap = transcribe_with(&model, &audio, EncoderBackend::NpuSim, true);
    let serial = transcribe_with(&model, &audio, EncoderBackend::NpuSim, false);
    let (npu_text, windows) = (overlap.text.clone(), overlap.windows);
    let cpu = common::wer_percent(&truth, &cpu_text);
    let npu = common::wer_percent(&truth, &npu_text);
    let stats = overlap.npu.expect("npu stats");
    eprintln!(
        "WER cpu {cpu:.2} %, npu-sim {npu:.2} %, {windows} windows; overlap: {} next-window \
         starts predicted, {} speculative hits, {} misses, {} dropped before starting, {} \
         dispatches",
        stats.speculative_predicted,
        stats.speculative_hits,
        stats.speculative_misses,
        stats.speculative_dropped,
        stats.dispatches
    );
    assert!(windows >= 4, "{windows} windows");
    assert_eq!(
        overlap.segments, serial.segments,
        "overlap changed the segments"
    );
    check_npu_stats(stats, windows);
    // The seek prediction (window end when the tail is quiet, else the newest timestamp pair
    // while decoding) names the next window's start for most windows. On npu-sim a run takes
    // longer than a window's decode, so pairs are named but not started: hits need a device
    // faster than the decoder.
    assert!(
        2 * stats.speculative_predicted > windows - 1,
        "next-window start predicted for only {} of {} windows: {stats:?}",
        stats.speculative_predicted,
        windows - 1
    );
    assert!(stats.speculative_misses <= 1, "{stats:?}");
    let serial_stats = serial.npu.expect("npu stats");
    check_npu_stats(serial_stats, serial.windows);
    assert_eq!(serial_stats.dispatches, windows, "one dispatch per window");
    assert_eq!(
        serial_stats.speculative_hits + serial_stats.speculative_misses,
        0
    );
    assert!(
        npu == cpu,
        "npu-sim WER {npu:.2} % vs cpu {cpu:.2} %:\nnpu-sim: {npu_text}\ncpu:     {cpu_text}"
    );
}

/// The golden encoder's cosine to the f32 CPU encoder on jfk after every layer and at the
/// output, as the README publishes it (NPU status): tiny.en ≥ 0.99998, base ≥ 0.9998.
const TINY_EN_MIN_COSINE: f64 = 0.99998;
const BASE_MIN_COSINE: f64 = 0.9998;

/// The same per-layer check on `base` (6 layers, d 512): the golden encoder stays within cosine
/// [`BASE_MIN_COSINE`] of the f32 CPU encoder after every layer, in one dispatch.
#[test]
fn golden_encoder_matches_cpu_f32_per_layer_on_jfk_base() {
    let dir = common::model_dir("base");
    let model = WhisperModel::load_with(&dir, ComputeType::F32).expect("base loads");
    let mel = jfk_window(model.dims.n_mels);
    let (cpu_layers, cpu_out) = cpu_layers(&model, &mel);
    check_layers_against_cpu(&model, &mel, &cpu_layers, &cpu_out, BASE_MIN_COSINE);
}

/// Encodes `mel` once with the golden encoder and asserts a cosine of at least `min_cosine` to
/// the CPU's output after every layer and at the end, in one dispatch. Returns the encoder (for
/// more windows) and its output.
fn check_layers_against_cpu(
    model: &WhisperModel,
    mel: &[f32],
    cpu_layers: &[Vec<f32>],
    cpu_out: &[f32],
    min_cosine: f64,
) -> (NpuEncoder<SimDevice>, Vec<f32>) {
    let mut golden = NpuEncoder::sim(model).expect("golden encoder");
    let mut out = vec![0.0f32; model.dims.n_audio_ctx * model.dims.n_audio_state];
    let mut cos = Vec::new();
    golden
        .encode_probed(mel, &mut out, &mut |layer, x| {
            cos.push(common::cosine(x, &cpu_layers[layer]));
        })
        .expect("golden encode");
    let final_cos = common::cosine(&out, cpu_out);
    eprintln!("jfk cosine per layer {cos:?}, output {final_cos}");
    assert_eq!(cos.len(), model.dims.n_audio_layer);
    for (l, c) in cos.iter().enumerate() {
        assert!(*c >= min_cosine, "layer {l}: cosine {c} < {min_cosine}");
    }
    assert!(
        final_cos >= min_cosine,
        "output cosine {final_cos} < {min_cosine}"
    );
    assert_eq!(golden.dispatches(), 1, "one dispatch per window");
    (golden, out)
}

/// Speech followed by silence in every window: each window ends on a single timestamp (or is
/// skipped as silence), so the decode moves by a whole window, exactly where the speculative
/// encode started. With overlap on, at least two windows must come from speculative encodes (the
/// README's figure: 2 hits of 4 windows), and every segment must equal the serial run's.
#[test]
fn npu_sim_overlap_hits_when_windows_end_in_silence_tiny_en() {
    let dir = common::model_dir("tiny.en");
    let model = Arc::new(WhisperModel::load_with(&dir, ComputeType::F32).expect("tiny.en loads"));
    let (jfk, _) = common::read_wav(&common::jfk_wav());
    let window = 30 * 16_000;
    let mut audio = Vec::new();
    for _ in 0..3 {
        audio.extend_from_slice(&jfk);
        audio.resize(audio.len().next_multiple_of(window), 0.0);
    }
    audio.extend(std::iter::repeat_n(0.0, 16_000));
    let overlap = transcribe_with(&model, &audio, EncoderBackend::NpuSim, true);
    let serial = transcribe_with(&model, &audio, EncoderBackend::NpuSim, false);
    let stats = overlap.npu.expect("npu stats");
    eprintln!(
        "{} windows, {stats:?}\noverlap: {}\nserial:  {}",
        overlap.windows, overlap.text, serial.text
    );
    assert!(
        overlap.text.matches("ask not what your country").count() == 3,
        "{}",
        overlap.text
    );
    assert_eq!(
        overlap.segments, serial.segments,
        "overlap changed the segments"
    );
    check_npu_stats(stats, overlap.windows);
    assert!(
        stats.speculative_hits >= 2,
        "fewer than 2 speculative hits: {stats:?}"
    );
    assert_eq!(overlap.windows, serial.windows);
}

/// The host encoder on the simulated device: one run per window, every argument in the order
/// of the shipped manifest (`xclbin/whisper_encoder_tiny.en.json`: names, kinds, memory
/// groups, sizes), BOs allocated for their argument; a run that times out or fails is an error and
/// leaves the output untouched; the next run is whole again.
#[test]
fn host_encoder_runs_once_per_window_in_manifest_order_tiny_en() {
    let dir = common::model_dir("tiny.en");
    let model = WhisperModel::load_with(&dir, ComputeType::F32).expect("tiny.en loads");
    let mut enc = NpuEncoder::sim(&model).expect("sim encoder");
    let path = manifest::default_dir().join(manifest::file_name("tiny.en"));
    let shipped = Manifest::load(&path).expect("shipped manifest");
    assert_eq!(enc.layout().len(), shipped.args.len());
    for (ours, theirs) in enc.layout().iter().zip(&shipped.args) {
        assert_eq!(
            (ours.index, &ours.name, ours.kind, ours.value, ours.group_id),
            (
                theirs.index,
                &theirs.name,
                theirs.kind,
                theirs.value,
                theirs.group_id
            ),
            "argument layout differs from {}",
            path.display()
        );
        assert_eq!(
            (ours.bytes, &ours.dtype, ours.direction),
            (theirs.bytes, &theirs.dtype, theirs.direction),
            "`{}`: the design's size / type differs from {}",
            ours.name,
            path.display()
        );
    }
    let args = enc.run_args().to_vec();
    assert_eq!(args.len(), enc.layout().len());
    for (arg, spec) in args.iter().zip(enc.layout()) {
        match spec.kind {
            ArgKind::Scalar => assert!(matches!(arg, RunArg::U32(_)), "{arg:?}"),
            _ => assert!(matches!(arg, RunArg::Bo(_)), "{arg:?}"),
        }
    }
    assert_eq!(args[0], RunArg::U32(3), "opcode");

    let mel = jfk_window(model.dims.n_mels);
    let t_d = model.dims.n_audio_ctx * model.dims.n_audio_state;
    let mut first = vec![0.0f32; t_d];
    enc.encode(&mel, &mut first).expect("window 1");
    assert_eq!(enc.dispatches(), 1);
    assert_eq!(enc.device().runs().len(), 1);
    assert_eq!(enc.device().runs()[0], args, "run 1 arguments");

    // Faults: an error naming what happened, the output untouched, no extra run.
    for (fault, want) in [
        (SimFault::Timeout, "did not finish"),
        (SimFault::Fail, "failed"),
    ] {
        enc.device_mut().inject(fault);
        let mut out = vec![7.0f32; t_d];
        let err = enc.encode(&mel, &mut out).expect_err("faulty run");
        eprintln!("{fault:?}: {err}");
        assert!(err.to_string().contains(want), "{err}");
        assert!(
            out.iter().all(|&v| v == 7.0),
            "output written by a faulty run"
        );
    }
    assert_eq!(enc.dispatches(), 3);
    // The next window is whole again (the garbage left in the output BO is overwritten).
    let mut again = vec![0.0f32; t_d];
    enc.encode(&mel, &mut again).expect("window after faults");
    assert_eq!(bits(&first), bits(&again));
    assert_eq!(enc.device().runs().len(), 4);
    assert!(enc.device().runs().iter().all(|r| *r == args));

    // The simulator rejects arguments out of the kernel's order without running.
    let mut swapped = args.clone();
    swapped.swap(3, 4);
    let err = enc.device_mut().start(&swapped).expect_err("swapped BOs");
    assert!(matches!(err, DeviceError::Protocol(_)), "{err}");
    assert_eq!(enc.device().runs().len(), 4);
}

/// The shipped manifests are what the host accepts on a device: for tiny.en and base the
/// manifest validates against the model, and the host encoder builds on its argument layout
/// (the layout check against the design's plan, BOs of the manifest's sizes, weights packed,
/// one run). A manifest with a size off by one element is refused, naming the field, by both
/// the manifest validation and the host's layout check.
#[test]
fn shipped_manifests_pass_the_host_layout_check_tiny_en_and_base() {
    for name in ["tiny.en", "base"] {
        let dir = common::model_dir(name);
        let model = WhisperModel::load_with(&dir, ComputeType::F32).expect("model loads");
        let path = manifest::default_dir().join(manifest::file_name(name));
        let source = path.display().to_string();
        let shipped = Manifest::load(&path).expect("shipped manifest");
        shipped
            .validate(&model.dims, &path)
            .unwrap_or_else(|e| panic!("{e}"));
        let plan = gstwhispernpu::engine::npu::golden::plan_for(&model).expect("plan");
        let build = |layout: Vec<gstwhispernpu::engine::npu::manifest::Arg>| {
            let device = SimDevice::new(plan.clone(), layout.clone());
            NpuEncoder::new(
                device,
                &model,
                plan.clone(),
                layout,
                &gstwhispernpu::engine::npu::sim::instruction_stream(&plan),
                &source,
                gstwhispernpu::engine::npu::host::RUN_TIMEOUT,
            )
        };
        let mut enc = build(shipped.args.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name == "tiny.en" {
            let mut out = vec![0.0f32; model.dims.n_audio_ctx * model.dims.n_audio_state];
            enc.encode(&jfk_window(model.dims.n_mels), &mut out)
                .expect("one run on the shipped layout");
            assert_eq!(enc.dispatches(), 1);
        }
        drop(enc);

        // The mel buffer one bf16 element short: both checks name `args[4].bytes`.
        let mut altered = shipped.clone();
        let mel = altered.args[4].bytes.expect("mel size") - 2;
        altered.args[4].bytes = Some(mel);
        let err = altered
            .validate(&model.dims, &path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`args[4].bytes` is Some(") && err.contains(&source),
            "{err}"
        );
        let err = match build(altered.args.clone()) {
            Ok(_) => panic!("{name}: altered layout accepted"),
            Err(e) => e.to_string(),
        };
        eprintln!("{name}: {err}");
        assert!(
            err.contains("args[4].bytes") && err.contains(&source),
            "{err}"
        );
    }
}

/// The IRON design (`kernels/whisper_encoder.py`) computes its buffer layout itself; its
/// `--layout` output (no mlir-aie needed) must equal the tile plan's sizes and the shipped
/// manifests' for tiny.en and base.
#[test]
fn iron_design_buffer_sizes_match_the_plan() {
    for (name, d, heads, layers) in [("tiny.en", 384, 6, 4), ("base", 512, 8, 6)] {
        let out = std::process::Command::new("python3")
            .arg(common::repo().join("kernels/whisper_encoder.py"))
            .args(["--d", &d.to_string(), "--heads", &heads.to_string()])
            .args(["--layers", &layers.to_string(), "--layout"])
            .output()
            .expect("cannot run python3");
        assert!(
            out.status.success(),
            "whisper_encoder.py --layout: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let design: HashMap<String, u64> =
            serde_json::from_slice(&out.stdout).expect("--layout prints a JSON object");
        let plan = Plan::new(80, d, heads, layers, 1500).expect("plan");
        let want: HashMap<String, u64> = [
            ("weights", plan.weights_bytes),
            ("mel", plan.input_bytes),
            ("scratch", plan.scratch_bytes),
            ("encoder_out", plan.output_bytes),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v as u64))
        .collect();
        assert_eq!(design, want, "{name}: IRON design vs tiling.rs Plan");
        let path = manifest::default_dir().join(manifest::file_name(name));
        let shipped = Manifest::load(&path).expect("shipped manifest");
        let declared: HashMap<String, u64> = shipped
            .args
            .iter()
            .filter(|a| a.kind == ArgKind::Buffer)
            .map(|a| (a.name.clone(), a.bytes.expect("buffer size")))
            .collect();
        assert_eq!(declared, want, "{name}: {} vs the plan", path.display());
    }
}

/// A transcriber whose NPU run times out: the window is encoded on the CPU instead (the
/// transcript equals the CPU backend's), the failure is reported and counted, later windows
/// stay on the CPU.
#[test]
fn failed_npu_run_falls_back_to_cpu_tiny_en() {
    let dir = common::model_dir("tiny.en");
    let model = Arc::new(WhisperModel::load_with(&dir, ComputeType::F32).expect("tiny.en loads"));
    let (audio, _) = common::read_wav(&common::jfk_wav());
    let cpu = transcribe_with(&model, &audio, EncoderBackend::Cpu, true);
    let mut enc = NpuEncoder::sim(&model).expect("sim encoder");
    enc.device_mut().inject(SimFault::Timeout);
    let opts = TranscribeOptions {
        backend: EncoderBackend::NpuSim,
        n_threads: 2,
        ..TranscribeOptions::default()
    };
    let mut t = Transcriber::with_npu_encoder(Arc::clone(&model), opts, Box::new(enc))
        .expect("transcriber");
    let mut segments = t.push(&audio).expect("push");
    segments.extend(t.finish().expect("finish"));
    let why = t
        .npu_failure()
        .expect("the failure is reported")
        .to_string();
    eprintln!("npu failure: {why}");
    assert!(why.contains("did not finish within"), "{why}");
    let stats = t.npu_stats().expect("stats");
    assert_eq!(stats.failures, 1, "{stats:?}");
    assert_eq!(stats.windows, 0, "{stats:?}");
    assert_eq!(
        segments, cpu.segments,
        "fallback transcript differs from the CPU's"
    );
}

/// `backend=npu` without an NPU: the engine fails with `BackendUnavailable` naming every missing
/// part (this machine has no amdxdna device and, without `--features npu`, no XRT).
#[test]
fn npu_backend_without_npu_names_what_is_missing() {
    if std::path::Path::new("/dev/accel").exists() {
        common::skip("this machine has /dev/accel: the error without an NPU cannot be checked");
        return;
    }
    let dir = common::model_dir("tiny.en");
    let model = Arc::new(WhisperModel::load_with(&dir, ComputeType::F32).expect("tiny.en loads"));
    let opts = TranscribeOptions {
        backend: EncoderBackend::Npu,
        ..TranscribeOptions::default()
    };
    let err = match Transcriber::new(model, opts) {
        Ok(_) => panic!("backend=npu worked without an NPU"),
        Err(e) => e,
    };
    let text = err.to_string();
    eprintln!("{text}");
    assert!(
        matches!(&err, gstwhispernpu::Error::BackendUnavailable { backend, .. } if backend == "npu"),
        "{err:?}"
    );
    assert!(text.contains("missing: amdxdna device"), "{text}");
    assert!(text.contains("XRT"), "{text}");
}

/// The CLI: `--backend npu` exits with status 1 and says what is missing.
#[test]
fn cli_backend_npu_without_npu_fails_naming_what_is_missing() {
    if std::path::Path::new("/dev/accel").exists() {
        common::skip("this machine has /dev/accel: the error without an NPU cannot be checked");
        return;
    }
    let bin = common::example_bin("transcribe");
    let dir = common::model_dir("tiny.en");
    let out = std::process::Command::new(&bin)
        .args(["--backend", "npu", "--model"])
        .arg(&dir)
        .arg(common::jfk_wav())
        .output()
        .expect("run examples/transcribe");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "printed a transcript");
    assert!(
        stderr.contains("backend `npu` is not available") && stderr.contains("amdxdna device"),
        "{stderr}"
    );
}

/// With `--features npu` and no XRT installed (this machine): the XRT device and the encoder on
/// it fail with the "XRT is not available" error and its reason.
#[cfg(feature = "npu")]
#[test]
fn xrt_encoder_is_unavailable_without_xrt() {
    use gstwhispernpu::engine::npu::xrt::{self, XrtDevice};
    if xrt_sys::availability().is_ok() {
        common::skip("XRT is available to this build: the error without XRT cannot be checked");
        return;
    }
    let dir = common::model_dir("tiny.en");
    let model = WhisperModel::load_with(&dir, ComputeType::F32).expect("tiny.en loads");
    let err = match xrt::open(&model, "tiny.en", &manifest::default_dir()) {
        Ok(_) => panic!("XRT encoder opened without XRT"),
        Err(e) => e,
    };
    eprintln!("{err}");
    assert!(
        matches!(
            &err,
            NpuError::Device {
                source: DeviceError::Unavailable(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("XRT is not available"), "{err}");
    let xclbin = manifest::default_dir().join("whisper_encoder_tiny.en.xclbin");
    match XrtDevice::open(&xclbin, "MLIR_AIE") {
        Ok(_) => panic!("XRT device opened without XRT"),
        Err(e) => assert!(e.to_string().starts_with("XRT is not available"), "{e}"),
    }
}
