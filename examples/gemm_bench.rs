//! Encoder GEMM micro-benchmark: achieved GFLOP/s of the encoder's matrix products against the
//! machine's measured fp32 peak.
//!
//! ```text
//! cargo run --release --example gemm_bench -- [--model base|tiny|small|all] [--runs N] [--threads LIST]
//! ```
//! The peak is measured two ways: a register-only loop of independent FMAs with the widest
//! vectors the CPU has (per thread count), and the best GEMM achieved on a large square product.
//! Then, for every GEMM shape of one encoder layer (and the convolutions, and a few decoder
//! shapes), prints the median GFLOP/s over `--runs` runs of
//! - `gemm`: the `gemm` crate call the engine has used so far (`ops::matmul_bt` /
//!   `ops::matmul_strided`, AVX2/FMA kernels on stable Rust),
//! - `sgemm`: the new kernel ([`sgemm`]) with the detected instruction set (B pre-packed for
//!   weights; packed per call for attention),
//! - `avx2`: the new kernel forced onto its AVX2 path (where the CPU has AVX2),
//! - `bf16`: the bf16 GEMM of `compute-type=bf16` ([`amx::gemm`]: AMX tiles where the CPU has
//!   them, shown as `bf16`; `vdpbf16ps` where the CPU has AVX512_BF16 without AMX, shown as
//!   `bf16dp`, its 2048³ product also against a `vdpbf16ps` loop's peak; else f32 kernels on
//!   bf16-rounded operands, shown as `bf16emu`); its
//!   column shows the speed-up over `sgemm` at the same thread count instead of a percentage,
//! - `int8` (where the CPU has AVX512-VNNI): the encoder of `compute-type=int8-bf16` ([`vnni::gemm`]
//!   for the linear layers, the bf16 products for attention), also as a speed-up over `sgemm`;
//!   its 2048³ product also against a `vpdpbusd` loop's peak,
//!
//! each on 1 thread and on N threads (a rayon pool of that size, as the engine uses). The peak
//! lines also give the best bf16 GEMM on the large square product. The `attention/head (fused)`
//! row times one head's whole attention as the encoder runs it (scores, softmax, `P · V`, with
//! `Kᵀ` and `V` packed; bf16: [`amx::attention`]); it is not in the layer total, which counts
//! the `scores` and `p·v` products.

use std::time::{Duration, Instant};

use gemm::Parallelism;
use gstwhispernpu::engine::cpu::amx::{self, PackedBf16};
use gstwhispernpu::engine::cpu::ops;
use gstwhispernpu::engine::cpu::sgemm::{self, Epilogue, Isa, MatRef, PackedB};
use gstwhispernpu::engine::cpu::vnni::{self, PackedI8};

const USAGE: &str = "\
usage: gemm_bench [--model base|tiny|small|all] [--runs N] [--threads LIST] [--only LIST] [--impls LIST] [--no-peak] [--cpu-time]

options:
  --model NAME     encoder dimensions: tiny (d 384), base (d 512), small (d 768), all [default: base]
  --runs N         timed runs per measurement, the median is reported [default: 7]
  --threads LIST   comma-separated thread counts [default: 1,<cores>]
  --only LIST      only the shapes whose name contains one of these (e.g. fc1,scores)
  --impls LIST     comma-separated subset of gemm,sgemm,avx2,bf16,int8 [default: all]
  --no-peak        skip the peak measurements
  --cpu-time       time by process CPU time / threads instead of wall time (Linux; for a
                   machine shared with other work: ignores time other processes hold the cores)";

#[derive(Clone, Copy)]
enum Kind {
    /// `x · Wᵀ` with W `[n][k]` (a Linear layer).
    Linear,
    /// Attention scores of one head: `q · kᵀ`, both strided rows of the fused QKV buffer.
    Scores { ld: usize },
    /// Attention output of one head: `p · v`, v strided rows of the fused QKV buffer.
    Pv { ld: usize },
    /// One head's whole attention as the encoder runs it: `Kᵀ` and `V` packed, then per block
    /// of query rows the scores, softmax and `P · V` (f32: two products around the softmax,
    /// 84-row blocks; bf16: [`amx::attention`], 96-row blocks). `m` = `n` = T, `k` = head width.
    Attention { ld: usize },
}

struct Shape {
    name: String,
    m: usize,
    n: usize,
    k: usize,
    kind: Kind,
    /// Times per encoder layer (for the per-layer total).
    per_layer: usize,
}

impl Shape {
    fn flops(&self) -> f64 {
        let mnk = (self.m * self.n * self.k) as f64;
        match self.kind {
            // Two products.
            Kind::Attention { .. } => 4.0 * mnk,
            _ => 2.0 * mnk,
        }
    }
}

fn shapes(d: usize, heads: usize) -> Vec<Shape> {
    let t = 1500;
    let dh = d / heads;
    let lin = |name: &str, m, n, k, per_layer| Shape {
        name: name.to_string(),
        m,
        n,
        k,
        kind: Kind::Linear,
        per_layer,
    };
    vec![
        lin("conv1 (im2col)", 2 * t, d, 80 * 3, 0),
        lin("conv2 (im2col)", t, d, 3 * d, 0),
        lin("qkv", t, 3 * d, d, 1),
        Shape {
            name: format!("scores/head ×{heads}"),
            m: t,
            n: t,
            k: dh,
            kind: Kind::Scores { ld: 3 * d },
            per_layer: heads,
        },
        Shape {
            name: format!("p·v/head ×{heads}"),
            m: t,
            n: dh,
            k: t,
            kind: Kind::Pv { ld: 3 * d },
            per_layer: heads,
        },
        Shape {
            name: "attention/head (fused)".into(),
            m: t,
            n: t,
            k: dh,
            kind: Kind::Attention { ld: 3 * d },
            per_layer: 0,
        },
        lin("attn out", t, d, d, 1),
        lin("fc1", t, 4 * d, d, 1),
        lin("fc2", t, d, 4 * d, 1),
        lin("dec qkv m=1", 1, 3 * d, d, 0),
        lin("dec fc1 m=5", 5, 4 * d, d, 0),
        lin("dec fc2 m=5", 5, d, 4 * d, 0),
    ]
}

fn fill(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Clock of the measurements: wall time, or (`--cpu-time`, Linux) the CPU time of the whole
/// process divided by the thread count, which is what the wall time would be on otherwise idle
/// cores with perfect balance: for measuring while other work shares the machine.
static CPU_TIME: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn now() -> f64 {
    let threads = CPU_TIME.load(std::sync::atomic::Ordering::Relaxed);
    if threads > 0 {
        #[cfg(target_os = "linux")]
        {
            #[repr(C)]
            struct Timespec {
                sec: i64,
                nsec: i64,
            }
            unsafe extern "C" {
                fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
            }
            const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
            let mut ts = Timespec { sec: 0, nsec: 0 };
            // SAFETY: valid out pointer; the struct matches `timespec` on 64-bit Linux.
            unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
            return (ts.sec as f64 + ts.nsec as f64 * 1e-9) / threads as f64;
        }
    }
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// Median seconds of `runs` calls of `f` after one warm-up call; with at least ~20 ms per timed
/// sample (small shapes are repeated within a sample).
fn time(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t0 = now();
    f();
    let once = (now() - t0).max(1e-7);
    let reps = ((0.02 / once).ceil() as usize).clamp(1, 10_000);
    median(
        (0..runs)
            .map(|_| {
                let t = now();
                for _ in 0..reps {
                    f();
                }
                (now() - t) / reps as f64
            })
            .collect(),
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Impl {
    GemmCrate,
    Sgemm(Isa),
    /// [`amx::gemm`] on the detected backend.
    Bf16,
    /// The int8 encoder: [`vnni::gemm`] for the linear layers, the bf16 attention products.
    Int8,
}

/// Operands of one shape, allocated once.
struct Operands {
    a: Vec<f32>,
    w: Vec<f32>,
    packed: PackedB,
    /// Weights for the bf16 GEMM (Linear), or the per-call packed B (attention).
    packed_bf16: PackedBf16,
    /// Attention: `V` packed, f32 and bf16.
    packed_v: PackedB,
    packed_v_bf16: PackedBf16,
    /// Weights for the int8 GEMM (Linear, where the CPU has AVX512-VNNI).
    packed_i8: Option<PackedI8>,
    bias: Vec<f32>,
    c: Vec<f32>,
}

impl Operands {
    fn new(s: &Shape) -> Self {
        match s.kind {
            Kind::Linear => {
                let w = fill(s.n * s.k, 2);
                Self {
                    a: fill(s.m * s.k, 1),
                    packed: PackedB::from_rows(&w, s.n, s.k),
                    packed_bf16: PackedBf16::from_rows(&w, s.n, s.k),
                    packed_i8: vnni::usable().then(|| PackedI8::from_rows(&w, s.n, s.k)),
                    packed_v: PackedB::default(),
                    packed_v_bf16: PackedBf16::default(),
                    w,
                    bias: fill(s.n, 3),
                    c: vec![0.0; s.m * s.n],
                }
            }
            Kind::Scores { ld } => Self {
                // One buffer holds q (at 0) and k (at ld / 3), rows of stride ld.
                a: fill(s.m * ld, 1),
                w: Vec::new(),
                packed: PackedB::from_rows(&[], 0, 0),
                packed_bf16: PackedBf16::default(),
                packed_v: PackedB::default(),
                packed_v_bf16: PackedBf16::default(),
                packed_i8: None,
                bias: Vec::new(),
                c: vec![0.0; s.m * s.n],
            },
            Kind::Pv { ld } => Self {
                a: fill(s.m * s.k, 1),
                w: fill(s.k * ld, 2),
                packed: PackedB::from_rows(&[], 0, 0),
                packed_bf16: PackedBf16::default(),
                packed_v: PackedB::default(),
                packed_v_bf16: PackedBf16::default(),
                packed_i8: None,
                bias: Vec::new(),
                c: vec![0.0; s.m * ld / 3],
            },
            Kind::Attention { ld } => Self {
                // q, k, v at 0, ld / 3, 2 ld / 3 of rows of stride ld.
                a: fill(s.m * ld, 1),
                w: Vec::new(),
                packed: PackedB::default(),
                packed_bf16: PackedBf16::default(),
                packed_v: PackedB::default(),
                packed_v_bf16: PackedBf16::default(),
                packed_i8: None,
                bias: Vec::new(),
                c: vec![0.0; s.m * s.k],
            },
        }
    }

    /// One head's attention (see [`Kind::Attention`]).
    fn attention(&mut self, t: usize, dh: usize, ld: usize, imp: Impl, par: Parallelism) {
        use rayon::prelude::*;
        let d = ld / 3;
        let kt = MatRef {
            data: &self.a[d..],
            rs: 1,
            cs: ld,
        };
        let v = MatRef {
            data: &self.a[2 * d..],
            rs: ld,
            cs: 1,
        };
        let scale = 1.0 / (dh as f32).sqrt();
        let q = &self.a;
        let (rows, out) = if imp == Impl::Bf16 {
            (96, &mut self.c)
        } else {
            (84, &mut self.c)
        };
        let blocks = out.chunks_mut(rows * dh).enumerate();
        if imp == Impl::Bf16 {
            self.packed_bf16.pack_from(kt, dh, t);
            self.packed_v_bf16.pack_from(v, t, dh);
            let (kp, vp) = (&self.packed_bf16, &self.packed_v_bf16);
            let block = |(b, o): (usize, &mut [f32])| {
                let qb = MatRef {
                    data: &q[b * rows * ld..],
                    rs: ld,
                    cs: 1,
                };
                amx::attention(qb, o.len() / dh, kp, vp, scale, o, dh);
            };
            match par {
                Parallelism::None => blocks.for_each(block),
                _ => out.par_chunks_mut(rows * dh).enumerate().for_each(block),
            }
            return;
        }
        self.packed.pack_from(kt, dh, t);
        self.packed_v.pack_from(v, t, dh);
        let (kp, vp) = (&self.packed, &self.packed_v);
        let block = |(b, o): (usize, &mut [f32])| {
            thread_local! {
                static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
            }
            SCORES.with(|s| {
                let mut s = s.borrow_mut();
                let r = o.len() / dh;
                s.resize(rows * t, 0.0);
                let s = &mut s[..r * t];
                let none = Parallelism::None;
                if imp == Impl::GemmCrate {
                    let qs = &q[b * rows * ld..];
                    ops::gemm_crate_strided(r, t, dh, s, t, qs, ld, 1, &q[d..], 1, ld, scale, none);
                } else {
                    let qb = MatRef {
                        data: &q[b * rows * ld..],
                        rs: ld,
                        cs: 1,
                    };
                    let ep = Epilogue {
                        alpha: scale,
                        ..Epilogue::default()
                    };
                    sgemm::sgemm(r, qb, kp, s, t, ep, none);
                }
                s.chunks_exact_mut(t).for_each(ops::softmax_row);
                if imp == Impl::GemmCrate {
                    ops::gemm_crate_strided(
                        r,
                        dh,
                        t,
                        o,
                        dh,
                        s,
                        t,
                        1,
                        &q[2 * d..],
                        ld,
                        1,
                        1.0,
                        none,
                    );
                } else {
                    let p = MatRef {
                        data: s,
                        rs: t,
                        cs: 1,
                    };
                    sgemm::sgemm(r, p, vp, o, dh, Epilogue::default(), none);
                }
            });
        };
        match par {
            Parallelism::None => blocks.for_each(block),
            _ => out.par_chunks_mut(rows * dh).enumerate().for_each(block),
        }
    }

    /// One product, as the engine would issue it.
    fn run(&mut self, s: &Shape, imp: Impl, par: Parallelism) {
        let (m, n, k) = (s.m, s.n, s.k);
        match (s.kind, imp) {
            // The int8 encoder runs its attention in bf16.
            (Kind::Attention { ld }, Impl::Int8) => self.attention(m, k, ld, Impl::Bf16, par),
            (Kind::Attention { ld }, _) => self.attention(m, k, ld, imp, par),
            (Kind::Linear, Impl::Int8) => vnni::gemm(
                m,
                &self.a,
                k,
                self.packed_i8
                    .as_ref()
                    .expect("int8 weights where VNNI is usable"),
                &mut self.c,
                n,
                Epilogue {
                    alpha: 1.0,
                    accumulate: false,
                    bias: Some(&self.bias),
                },
                amx::Activation::None,
                par,
            ),
            // The int8 encoder runs its attention products in bf16.
            (_, Impl::Int8) => self.run(s, Impl::Bf16, par),
            (Kind::Linear, Impl::GemmCrate) => {
                ops::gemm_crate_strided(
                    m,
                    n,
                    k,
                    &mut self.c,
                    n,
                    &self.a,
                    k,
                    1,
                    &self.w,
                    1,
                    k,
                    1.0,
                    par,
                );
                ops::add_bias(&mut self.c, &self.bias);
            }
            (Kind::Linear, Impl::Sgemm(_)) => sgemm::sgemm(
                m,
                MatRef {
                    data: &self.a,
                    rs: k,
                    cs: 1,
                },
                &self.packed,
                &mut self.c,
                n,
                Epilogue {
                    alpha: 1.0,
                    accumulate: false,
                    bias: Some(&self.bias),
                },
                par,
            ),
            (Kind::Scores { ld }, Impl::GemmCrate) => ops::gemm_crate_strided(
                m,
                n,
                k,
                &mut self.c,
                n,
                &self.a,
                ld,
                1,
                &self.a[ld / 3..],
                1,
                ld,
                0.125,
                par,
            ),
            (Kind::Scores { ld }, Impl::Sgemm(_)) => sgemm::sgemm_strided(
                m,
                n,
                k,
                &mut self.c,
                n,
                MatRef {
                    data: &self.a,
                    rs: ld,
                    cs: 1,
                },
                MatRef {
                    data: &self.a[ld / 3..],
                    rs: 1,
                    cs: ld,
                },
                0.125,
                false,
                par,
            ),
            (Kind::Pv { ld }, Impl::GemmCrate) => ops::gemm_crate_strided(
                m,
                n,
                k,
                &mut self.c,
                ld / 3,
                &self.a,
                k,
                1,
                &self.w,
                ld,
                1,
                1.0,
                par,
            ),
            (Kind::Linear, Impl::Bf16) => amx::gemm(
                m,
                MatRef {
                    data: &self.a,
                    rs: k,
                    cs: 1,
                },
                &self.packed_bf16,
                &mut self.c,
                n,
                Epilogue {
                    alpha: 1.0,
                    accumulate: false,
                    bias: Some(&self.bias),
                },
                par,
            ),
            // Attention: B packed per call (as `sgemm_strided` does), then the product.
            (Kind::Scores { ld }, Impl::Bf16) => {
                let kt = MatRef {
                    data: &self.a[ld / 3..],
                    rs: 1,
                    cs: ld,
                };
                self.packed_bf16.pack_from(kt, k, n);
                let q = MatRef {
                    data: &self.a,
                    rs: ld,
                    cs: 1,
                };
                let ep = Epilogue {
                    alpha: 0.125,
                    ..Epilogue::default()
                };
                amx::gemm(m, q, &self.packed_bf16, &mut self.c, n, ep, par);
            }
            (Kind::Pv { ld }, Impl::Bf16) => {
                let v = MatRef {
                    data: &self.w,
                    rs: ld,
                    cs: 1,
                };
                self.packed_bf16.pack_from(v, k, n);
                let p = MatRef {
                    data: &self.a,
                    rs: k,
                    cs: 1,
                };
                let ep = Epilogue::default();
                amx::gemm(m, p, &self.packed_bf16, &mut self.c, ld / 3, ep, par);
            }
            (Kind::Pv { ld }, Impl::Sgemm(_)) => sgemm::sgemm_strided(
                m,
                n,
                k,
                &mut self.c,
                ld / 3,
                MatRef {
                    data: &self.a,
                    rs: k,
                    cs: 1,
                },
                MatRef {
                    data: &self.w,
                    rs: ld,
                    cs: 1,
                },
                1.0,
                false,
                par,
            ),
        }
    }
}

/// Measures `imp` on `shape` with `threads` threads: seconds per product.
fn measure(shape: &Shape, ops: &mut Operands, imp: Impl, threads: usize, runs: usize) -> f64 {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let par = if threads <= 1 {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    };
    let cpu_time = CPU_TIME.load(std::sync::atomic::Ordering::Relaxed) > 0;
    if cpu_time {
        CPU_TIME.store(threads, std::sync::atomic::Ordering::Relaxed);
    }
    pool.install(|| {
        let mut go = || time(runs, || ops.run(shape, imp, par));
        match imp {
            Impl::Sgemm(isa) => sgemm::with_isa(isa, go),
            Impl::GemmCrate | Impl::Bf16 | Impl::Int8 => go(),
        }
    })
}

/// One result column: GFLOP/s and, for f32 kernels, the share of the FMA-loop peak; for bf16,
/// the speed-up over `sgemm`.
fn cell(gflops: f64, fma_peak: f64, imp: Impl, speedup: f64) -> String {
    match imp {
        Impl::Bf16 | Impl::Int8 => format!(" {:>6.1} (×{:>3.1})", gflops, speedup),
        _ => format!(" {:>6.1} ({:>3.0}%)", gflops, 100.0 * gflops / fma_peak),
    }
}

/// An instruction loop's peak (`loop_peak`, one thread's rate over 600 ms) of `threads` threads
/// running at once: their sum (None where the CPU lacks the instruction).
fn together(threads: usize, loop_peak: fn(Duration) -> Option<f64>) -> Option<f64> {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| loop_peak(Duration::from_millis(600))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

/// FMA-loop peak of `threads` threads running at once, GFLOP/s.
fn fma_peak(threads: usize) -> f64 {
    together(threads, |d| Some(sgemm::fma_peak_gflops(d))).unwrap_or(f64::NAN)
}

/// The `vdpbf16ps` loop peak of `threads` threads together (None without AVX512_BF16).
fn dpbf16_peak(threads: usize) -> Option<f64> {
    together(threads, amx::dpbf16_peak_gflops)
}

/// The `vpdpbusd` loop peak of `threads` threads together, G int8 ops/s (None without VNNI).
fn dpbusd_peak(threads: usize) -> Option<f64> {
    together(threads, vnni::dpbusd_peak_gops)
}

fn main() {
    let mut models = vec!["base".to_string()];
    let mut runs = 7usize;
    let mut only: Option<String> = None;
    let mut no_peak = false;
    let mut impl_filter: Option<String> = None;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut thread_counts = vec![1, cores];
    thread_counts.dedup();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next().unwrap_or_else(|| {
                eprintln!("gemm_bench: {arg} needs a value\n\n{USAGE}");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--model" => {
                let v = value();
                models = if v == "all" {
                    vec!["tiny".into(), "base".into(), "small".into()]
                } else {
                    vec![v]
                }
            }
            "--cpu-time" => CPU_TIME.store(1, std::sync::atomic::Ordering::Relaxed),
            "--no-peak" => no_peak = true,
            "--only" => only = Some(value()),
            "--impls" => impl_filter = Some(value()),
            "--runs" => runs = value().parse().expect("--runs N"),
            "--threads" => {
                thread_counts = value()
                    .split(',')
                    .map(|t| t.trim().parse().expect("--threads LIST"))
                    .collect()
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("gemm_bench: unknown argument {other}\n\n{USAGE}");
                std::process::exit(2)
            }
        }
    }
    let runs = runs.max(1);

    let isa = Isa::detected();
    println!("sgemm kernel     {isa:?}");
    let mut impls = vec![("gemm", Impl::GemmCrate), ("sgemm", Impl::Sgemm(isa))];
    if isa != Isa::Avx2 && Isa::Avx2.supported() {
        impls.push(("avx2", Impl::Sgemm(Isa::Avx2)));
    }
    let bf16_backend = amx::Backend::detected();
    println!("bf16 backend     {bf16_backend:?}");
    let bf16_name = match bf16_backend {
        amx::Backend::Amx => "bf16",
        amx::Backend::Avx512Bf16 => "bf16dp",
        amx::Backend::Emulated => "bf16emu",
    };
    impls.push((bf16_name, Impl::Bf16));
    println!(
        "int8 (VNNI)      {}",
        if vnni::usable() {
            "vpdpbusd"
        } else {
            "not on this CPU"
        }
    );
    if vnni::usable() {
        impls.push(("int8", Impl::Int8));
    }
    if let Some(f) = &impl_filter {
        impls.retain(|(name, _)| f.split(',').any(|x| name.starts_with(x.trim())));
    }

    // Peaks.
    let mut fma = Vec::new();
    let mut square = Vec::new();
    let big = Shape {
        name: "square 2048".into(),
        m: 2048,
        n: 2048,
        k: 2048,
        kind: Kind::Linear,
        per_layer: 0,
    };
    let mut big_ops = Operands::new(&big);
    for &t in &thread_counts {
        if no_peak {
            fma.push(f64::NAN);
            square.push(f64::NAN);
            continue;
        }
        let f = fma_peak(t);
        let flops = 2.0 * (big.m * big.n * big.k) as f64;
        let gflops =
            |imp, ops: &mut Operands| flops / measure(&big, ops, imp, t, runs.min(5)) / 1e9;
        let best = impls
            .iter()
            .filter(|&&(_, imp)| imp != Impl::Bf16 && imp != Impl::Int8)
            .map(|&(_, imp)| gflops(imp, &mut big_ops))
            .fold(0.0, f64::max);
        let bf16 = if impls.iter().any(|&(_, imp)| imp == Impl::Bf16) {
            let g = gflops(Impl::Bf16, &mut big_ops);
            // The vdpbf16ps kernel against its own peak (twice the FMA loop's flops per
            // instruction).
            let own = if bf16_backend == amx::Backend::Avx512Bf16 {
                dpbf16_peak(t).map_or(String::new(), |p| {
                    format!(" ({:.0}% of a vdpbf16ps loop, {p:.1})", 100.0 * g / p)
                })
            } else {
                String::new()
            };
            format!("   {bf16_name} GEMM 2048³ {g:7.1} GFLOP/s{own}")
        } else {
            String::new()
        };
        let int8 = if impls.iter().any(|&(_, imp)| imp == Impl::Int8) {
            let g = gflops(Impl::Int8, &mut big_ops);
            let own = dpbusd_peak(t).map_or(String::new(), |p| {
                format!(" ({:.0}% of a vpdpbusd loop, {p:.1})", 100.0 * g / p)
            });
            format!("   int8 GEMM 2048³ {g:7.1} GOP/s{own}")
        } else {
            String::new()
        };
        println!(
            "peak {t} thread{}   FMA loop {f:7.1} GFLOP/s   best GEMM 2048³ {best:7.1} GFLOP/s{bf16}{int8}",
            if t == 1 { " " } else { "s" }
        );
        fma.push(f);
        square.push(best);
    }
    drop(big_ops);

    for model in &models {
        let (d, heads) = match model.as_str() {
            "tiny" => (384, 6),
            "base" => (512, 8),
            "small" => (768, 12),
            other => {
                eprintln!("gemm_bench: unknown model {other}\n\n{USAGE}");
                std::process::exit(2)
            }
        };
        println!(
            "\n{model} (d {d}, {heads} heads, T 1500): GFLOP/s, median of {runs}; (%) of the FMA-loop peak, \
             (×) {bf16_name}{} over sgemm",
            if vnni::usable() { " and int8" } else { "" }
        );
        let mut header = format!("{:<22} {:>16}", "shape", "m×n×k");
        for &t in &thread_counts {
            for (name, _) in &impls {
                header += &format!(" {:>13}", format!("{name} {t}T"));
            }
        }
        println!("{header}");
        // Per-layer seconds for each (threads, impl) column.
        let mut layer = vec![0.0f64; thread_counts.len() * impls.len()];
        let mut layer_flops = 0.0;
        for s in shapes(d, heads) {
            if only
                .as_ref()
                .is_some_and(|o| !o.split(',').any(|o| s.name.contains(o.trim())))
            {
                continue;
            }
            let flops = s.flops();
            let mut ops = Operands::new(&s);
            let mut line = format!("{:<22} {:>16}", s.name, format!("{}×{}×{}", s.m, s.n, s.k));
            let mut col = 0;
            for (ti, &t) in thread_counts.iter().enumerate() {
                let mut sgemm_secs = f64::NAN;
                for &(_, imp) in &impls {
                    let secs = measure(&s, &mut ops, imp, t, runs);
                    let g = flops / secs / 1e9;
                    line += &cell(g, fma[ti], imp, sgemm_secs / secs);
                    if matches!(imp, Impl::Sgemm(i) if i == isa) {
                        sgemm_secs = secs;
                    }
                    layer[col] += secs * s.per_layer as f64;
                    col += 1;
                }
            }
            layer_flops += flops * s.per_layer as f64;
            println!("{line}");
        }
        let mut line = format!("{:<22} {:>16}", "encoder layer total", "");
        for (col, secs) in layer.iter().enumerate() {
            let ti = col / impls.len();
            let g = layer_flops / secs / 1e9;
            let sgemm_col = impls
                .iter()
                .position(|&(_, imp)| matches!(imp, Impl::Sgemm(i) if i == isa))
                .map(|i| ti * impls.len() + i);
            let speedup = sgemm_col.map_or(f64::NAN, |c| layer[c] / secs);
            line += &cell(g, fma[ti], impls[col % impls.len()].1, speedup);
        }
        println!("{line}");
        let mut line = format!("{:<22} {:>16}", "  ms per layer (GEMMs)", "");
        for secs in &layer {
            line += &format!(" {:>13.2}", secs * 1e3);
        }
        println!("{line}");
        if only.is_none() {
            // For scale: the softmax over the attention scores, as the encoder runs it.
            let t = 1500;
            let mut scores = fill(t * t, 4);
            let mut line = format!("{:<39}", format!("  softmax {heads}×{t}×{t}, ms/layer"));
            for &threads in &thread_counts {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("thread pool");
                let secs = pool.install(|| {
                    time(runs, || {
                        use rayon::prelude::*;
                        scores.par_chunks_mut(t).for_each(ops::softmax_row)
                    })
                });
                line += &format!(" {:>12.2} ({threads}T)", secs * heads as f64 * 1e3);
            }
            println!("{line}");
        }
    }
    let _ = square;
}
