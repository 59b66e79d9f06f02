//! Decoder product micro-benchmark: the few-row products of decoding stream their weights once
//! per token, so their speed is a memory bandwidth. Prints, for the decoder's weight shapes of a
//! model (f16 and int8 weights, 1 and 5 rows), the achieved GB/s of weight bytes against the
//! machine's read bandwidth measured in the same run (a vectorised sum over a buffer of the
//! same size).
//!
//! ```text
//! cargo run --release --example gemv_bench -- [--model tiny|base|small] [--runs N] [--threads N]
//! ```

use std::time::Instant;

use gemm::Parallelism;
use gstwhispernpu::engine::cpu::gemv::{self, MatLow, matmul_low};
use half::f16;
use rayon::prelude::*;

const USAGE: &str = "\
usage: gemv_bench [--model tiny|base|small] [--runs N] [--threads N] [--cold]

options:
  --model NAME   decoder dimensions: tiny (d 384), base (d 512), small (d 768) [default: base]
  --runs N       timed runs per measurement, the median is reported [default: 21]
  --threads N    worker threads [default: one per core]
  --cold         read 512 MB before each timed run (weights from memory, not cache)";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..runs)
            .map(|_| {
                evict();
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

static EVICT: std::sync::OnceLock<Option<Vec<f32>>> = std::sync::OnceLock::new();

/// With `--cold`, reads a buffer larger than the last-level cache before each timed run, so
/// the weights come from memory as in a real decoder step (which reads ~100 MB between two
/// uses of the same matrix).
fn evict() {
    if let Some(Some(buf)) = EVICT.get() {
        std::hint::black_box(read_all(buf, 2));
    }
}

/// Sum of `x` in 4 × 16 lanes (AVX-512 where the CPU has it), split over the current pool's
/// threads: the rate at which the cores can read the buffer.
fn read_all(x: &[f32], threads: usize) -> f32 {
    #[inline(always)]
    fn sum(c: &[f32]) -> f32 {
        let (blocks, tail) = c.as_chunks::<64>();
        let mut acc = [0.0f32; 64];
        for b in blocks {
            for i in 0..64 {
                acc[i] += b[i];
            }
        }
        acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn sum512(c: &[f32]) -> f32 {
        sum(c)
    }
    let chunk = x.len().div_ceil(threads.max(1) * 8);
    x.par_chunks(chunk)
        .map(|c| {
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                return unsafe { sum512(c) };
            }
            sum(c)
        })
        .sum()
}

fn main() {
    let mut model = "base".to_string();
    let mut runs = 21usize;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next().unwrap_or_else(|| {
                eprintln!("gemv_bench: {name} needs a value\n\n{USAGE}");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--model" => model = value("--model"),
            "--runs" => runs = value("--runs").parse().unwrap_or(0).max(1),
            "--cold" => {
                let mb = 512;
                let _ = EVICT.set(Some(vec![1.0f32; mb << 18]));
            }
            "--threads" => threads = value("--threads").parse().unwrap_or(0).max(1),
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("gemv_bench: unknown argument {other}\n\n{USAGE}");
                std::process::exit(2)
            }
        }
    }
    let d = match model.as_str() {
        "tiny" | "tiny.en" => 384,
        "base" | "base.en" => 512,
        "small" | "small.en" => 768,
        other => {
            eprintln!("gemv_bench: unknown model {other}\n\n{USAGE}");
            std::process::exit(2)
        }
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    let vocab = 51864;
    let shapes = [
        ("self_qkv", 3 * d, d),
        ("attn_out", d, d),
        ("fc1", 4 * d, d),
        ("fc2", d, 4 * d),
        ("vocab", vocab, d),
    ];
    pool.install(|| {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        println!("cpu              {cpu}");
        println!("int8 kernel      {}", gemv::int8_kernel_name());
        println!("model dims       d {d}, threads {threads}, runs {runs} (medians)");
        // The read bandwidth over the largest weight matrix's f16 bytes.
        let big: Vec<f32> = (0..vocab * d / 2).map(|i| (i % 7) as f32).collect();
        let bytes = (big.len() * 4) as f64;
        let s = time(runs, || {
            std::hint::black_box(read_all(&big, threads));
        });
        let bw = bytes / s / 1e9;
        println!(
            "read bandwidth   {bw:.1} GB/s  (sum over {:.0} MB)",
            bytes / 1e6
        );
        println!(
            "{:<10} {:>6} {:>10} {:>10} {:>8}",
            "shape", "rows", "type", "GB/s", "of read"
        );
        for (name, n, k) in shapes {
            let w: Vec<f32> = (0..n * k)
                .map(|i| f16::from_f32(((i * 7919 % 1013) as f32 / 1013.0) - 0.5).to_f32())
                .collect();
            let mats = [
                ("f16", MatLow::lossless(&w, n, k).expect("f16-exact"), 2.0),
                (
                    "int8",
                    MatLow::int8(&w, n, k).expect("k fits the int8 kernels"),
                    1.0,
                ),
            ];
            for rows in [1usize, 5] {
                let h: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.37).sin()).collect();
                let mut out = vec![0.0f32; rows * n];
                for (ty, m, per) in &mats {
                    let s = time(runs, || {
                        matmul_low(&h, rows, m, &mut out, n, false, None, par);
                    });
                    let gbs = (n * k) as f64 * per / s / 1e9;
                    println!(
                        "{name:<10} {rows:>6} {ty:>10} {gbs:>10.1} {:>7.0}%",
                        100.0 * gbs / bw
                    );
                }
            }
        }
    });
}
