//! Golden model of the NPU encoder: executes the design's tile schedule ([`super::tiling::Plan`])
//! with the kernels' exact arithmetic ([`super::golden_kernels`], the Rust mirror of the host
//! paths of `kernels/*.cc`), on buffer objects laid out as the device's:
//!
//! - weights BO: every matrix packed once ([`pack_weights`]) into the kernels' tiled bf16 layout
//!   (tile `(j, p)` of `Wᵀ` contiguous), biases, LayerNorm parameters and positional
//!   embeddings in fp32;
//! - input BO: the window's log-mel, time-major, bf16, one zero row of padding before and
//!   after the 3000 frames (written by the host, [`super::host::NpuEncoder::encode`]);
//! - scratch BO: conv1's output, the residual stream (fp32), LayerNorm output, Q/K/V,
//!   attention output, FC1 output (bf16), zeroed once;
//! - output BO: the encoder output `[1500][d]` fp32.
//!
//! [`Machine::run`] is what the device does in one dispatch: the whole encoder of one window
//! (convolutions, every layer, final LayerNorm). The simulated device
//! ([`super::sim::SimDevice`]) calls it when the host starts a run, so the golden model sits
//! behind the same buffer-object interface as the XRT path.
//!
//! The order in which output tiles are visited differs from the per-core order on the device
//! (tiles run in parallel on the host's threads), but every tile's arithmetic is the kernel's,
//! in the kernel's order, so the values are the same.

use std::path::PathBuf;

use rayon::prelude::*;

use super::golden_kernels::{self as k, AttnState};
use super::tiling::{BoId, Epilogue, Gemm, KB, Matrix, Norm, Plan, QB, Region, Step, TM, TN};
use crate::engine::WhisperModel;
use crate::error::ModelError;
use crate::model::ct2::Ct2File;

/// Errors of the golden encoder.
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: {source}")]
    Unsupported {
        path: PathBuf,
        source: super::tiling::Unsupported,
    },
    #[error("{what}: {found} values, expected {expected}")]
    BadLength {
        what: &'static str,
        found: usize,
        expected: usize,
    },
}

/// A buffer object: 4-byte words (the shim DMA's granularity), viewed as bf16 or fp32.
#[derive(Clone, Default)]
pub struct Bo {
    words: Vec<u32>,
}

fn as_f32(w: &[u32]) -> &[f32] {
    // SAFETY: u32 and f32 have the same size and alignment, and every bit pattern is an f32.
    unsafe { std::slice::from_raw_parts(w.as_ptr().cast(), w.len()) }
}
fn as_f32_mut(w: &mut [u32]) -> &mut [f32] {
    // SAFETY: as in `as_f32`; the borrow is unique.
    unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast(), w.len()) }
}
fn as_u16(w: &[u32]) -> &[u16] {
    // SAFETY: a u32 is two u16 (alignment 4 ≥ 2), every bit pattern valid.
    unsafe { std::slice::from_raw_parts(w.as_ptr().cast(), w.len() * 2) }
}
fn as_u16_mut(w: &mut [u32]) -> &mut [u16] {
    // SAFETY: as in `as_u16`; the borrow is unique.
    unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast(), w.len() * 2) }
}

fn word_range(r: Region) -> std::ops::Range<usize> {
    r.offset / 4..r.end().div_ceil(4)
}

impl Bo {
    /// A zeroed buffer object of `bytes` bytes.
    pub fn new(bytes: usize) -> Self {
        Self {
            words: vec![0; bytes.div_ceil(4)],
        }
    }
    pub fn bytes(&self) -> usize {
        self.words.len() * 4
    }
    /// The buffer as bytes (native endianness, as a device mapping shows it).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: a u32 is four bytes, every bit pattern valid, alignment 4 ≥ 1.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.words.len() * 4) }
    }
    /// The buffer as bytes, writable.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_bytes`; the borrow is unique.
        unsafe {
            std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast(), self.words.len() * 4)
        }
    }
    pub fn f32(&self, r: Region) -> &[f32] {
        &as_f32(&self.words[word_range(r)])[..r.len]
    }
    pub fn f32_mut(&mut self, r: Region) -> &mut [f32] {
        &mut as_f32_mut(&mut self.words[word_range(r)])[..r.len]
    }
    pub fn bf16(&self, r: Region) -> &[u16] {
        &as_u16(&self.words[word_range(r)])[..r.len]
    }
    pub fn bf16_mut(&mut self, r: Region) -> &mut [u16] {
        &mut as_u16_mut(&mut self.words[word_range(r)])[..r.len]
    }
    /// Words of `read` (shared) and `write` (unique), two disjoint regions of this BO.
    fn split(&mut self, read: Region, write: Region) -> (&[u32], &mut [u32]) {
        let (r, w) = (word_range(read), word_range(write));
        assert!(r.end <= w.start || w.end <= r.start, "regions overlap");
        if r.end <= w.start {
            let (lo, hi) = self.words.split_at_mut(w.start);
            (&lo[r], &mut hi[..w.end - w.start])
        } else {
            let (lo, hi) = self.words.split_at_mut(r.start);
            (&hi[..r.end - r.start], &mut lo[w])
        }
    }
}

/// The encoder weights of `model` (read again from its `model.bin`) packed into the layout of
/// `plan`'s weights BO: matrices as the kernels' bf16 tiles, biases, LayerNorm parameters and
/// positional embeddings in fp32. The host copies this once into the device's weights BO.
pub fn pack_weights(model: &WhisperModel, plan: &Plan) -> Result<Bo, GoldenError> {
    let path = model.dir.join("model.bin");
    let file = Ct2File::open(&path)?;
    let mut weights = Bo::new(plan.weights_bytes);
    let (d, n_mels) = (plan.d, plan.n_mels);

    let tensor = |name: &str, shape: &[usize]| file.tensor(name, shape);
    let bias_or_zero = |name: &str, n: usize| -> Result<Vec<f32>, ModelError> {
        if file.contains(name) {
            file.tensor(name, &[n])
        } else {
            Ok(vec![0.0; n])
        }
    };
    // conv weights [o][c][tap] as B[tap * c_in + c][o].
    let conv = |w: &mut Bo, m: Matrix, prefix: &str, c_in: usize| -> Result<(), ModelError> {
        let wt = tensor(&format!("{prefix}/weight"), &[d, c_in, 3])?;
        pack(w, m, |kk, o| wt[(o * c_in + kk % c_in) * 3 + kk / c_in]);
        w.f32_mut(m.bias)
            .copy_from_slice(&tensor(&format!("{prefix}/bias"), &[d])?);
        Ok(())
    };
    conv(&mut weights, plan.conv1, "encoder/conv1", n_mels)?;
    conv(&mut weights, plan.conv2, "encoder/conv2", d)?;
    let pos = tensor("encoder/position_encodings/encodings", &[plan.t, d])?;
    weights.f32_mut(plan.pos)[..plan.t * d].copy_from_slice(&pos);
    // Linear weights [n][k] as B[k][n] = Wᵀ.
    let linear = |w: &mut Bo, m: Matrix, prefix: &str| -> Result<(), ModelError> {
        let wt = tensor(&format!("{prefix}/weight"), &[m.n, m.k])?;
        pack(w, m, |kk, jj| wt[jj * m.k + kk]);
        w.f32_mut(m.bias)
            .copy_from_slice(&bias_or_zero(&format!("{prefix}/bias"), m.n)?);
        Ok(())
    };
    let ln = |w: &mut Bo, g: Region, b: Region, prefix: &str| -> Result<(), ModelError> {
        w.f32_mut(g)
            .copy_from_slice(&tensor(&format!("{prefix}/gamma"), &[d])?);
        w.f32_mut(b)
            .copy_from_slice(&tensor(&format!("{prefix}/beta"), &[d])?);
        Ok(())
    };
    for (i, lw) in plan.layer_weights.iter().enumerate() {
        let p = format!("encoder/layer_{i}");
        ln(
            &mut weights,
            lw.ln1_gamma,
            lw.ln1_beta,
            &format!("{p}/self_attention/layer_norm"),
        )?;
        linear(
            &mut weights,
            lw.qkv,
            &format!("{p}/self_attention/linear_0"),
        )?;
        linear(
            &mut weights,
            lw.out,
            &format!("{p}/self_attention/linear_1"),
        )?;
        ln(
            &mut weights,
            lw.ln2_gamma,
            lw.ln2_beta,
            &format!("{p}/ffn/layer_norm"),
        )?;
        linear(&mut weights, lw.fc1, &format!("{p}/ffn/linear_0"))?;
        linear(&mut weights, lw.fc2, &format!("{p}/ffn/linear_1"))?;
    }
    ln(
        &mut weights,
        plan.ln_post_gamma,
        plan.ln_post_beta,
        "encoder/layer_norm",
    )?;
    Ok(weights)
}

/// The design's plan for `model`, or why the design cannot run it.
pub fn plan_for(model: &WhisperModel) -> Result<Plan, GoldenError> {
    let dims = &model.dims;
    Plan::new(
        dims.n_mels,
        dims.n_audio_state,
        dims.n_audio_head,
        dims.n_audio_layer,
        dims.n_audio_ctx,
    )
    .map_err(|source| GoldenError::Unsupported {
        path: model.dir.join("model.bin"),
        source,
    })
}

/// Executes the plan's steps on the four data BOs: what the device does in one dispatch.
pub struct Machine {
    plan: Plan,
    /// One weight matrix widened to f32 for the step running (exact: bf16 → f32).
    b_f32: Vec<f32>,
}

impl Machine {
    pub fn new(plan: Plan) -> Self {
        let max_b = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Gemm(g) => Some(g.b.k * g.b.n),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        Self {
            b_f32: vec![0.0; max_b],
            plan,
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// One dispatch: every step of the plan, in order, calling `probe(layer, x)` with the
    /// residual stream (first 1500 rows) after each layer (a debugging view the device does not
    /// offer: the scratch BO is overwritten by the next layer within the same dispatch).
    pub fn run(
        &mut self,
        weights: &Bo,
        input: &Bo,
        scratch: &mut Bo,
        output: &mut Bo,
        probe: &mut dyn FnMut(usize, &[f32]),
    ) {
        let mut run = Run {
            b_f32: &mut self.b_f32,
            weights,
            input,
            scratch,
            output,
        };
        let mut layer = 0;
        for step in &self.plan.steps {
            match step {
                Step::Gemm(g) => {
                    run.gemm(g);
                    if g.name == "fc2" {
                        let x = run.scratch.f32(self.plan.x);
                        probe(layer, &x[..self.plan.t * self.plan.d]);
                        layer += 1;
                    }
                }
                Step::Norm(n) => run.norm(n),
                Step::Attention(a) => run.attention(a),
            }
        }
    }
}

/// The BOs of one dispatch.
struct Run<'a> {
    b_f32: &'a mut Vec<f32>,
    weights: &'a Bo,
    input: &'a Bo,
    scratch: &'a mut Bo,
    output: &'a mut Bo,
}

impl Run<'_> {
    fn gemm(&mut self, g: &Gemm) {
        let b = &g.b;
        let (kt, tk, nt) = (b.k_tiles(), b.tk, b.n_tiles());
        // The weight matrix widened to f32, in its tiled layout (exact).
        for (dst, &src) in self.b_f32.iter_mut().zip(self.weights.bf16(b.w)) {
            *dst = k::from_bf16(src);
        }
        let b_f32 = &self.b_f32[..b.k * b.n];
        let bias = self.weights.f32(b.bias);
        let pos = match g.epilogue {
            Epilogue::BiasGeluPosF32 { pos } => Some(self.weights.f32(pos)),
            _ => None,
        };
        // A comes from the input BO (conv1) or the scratch BO (everything else); the output
        // always goes to the scratch BO.
        assert_eq!(g.out.bo, BoId::Scratch);
        let (a_words, out_words) = if g.a.bo == BoId::Scratch {
            self.scratch.split(g.a, g.out)
        } else {
            let a = &self.input.words[word_range(g.a)];
            (a, &mut self.scratch.words[word_range(g.out)])
        };
        let a = &as_u16(a_words)[..g.a.len];
        let rows_len = TM * g.ldo;
        let run_rows = |i: usize, rows_out: RowsOut<'_>| {
            let mut a_tiles = vec![0.0f32; kt * TM * tk];
            for p in 0..kt {
                for r in 0..TM {
                    for c in 0..tk {
                        a_tiles[(p * TM + r) * tk + c] =
                            k::from_bf16(a[g.a_index(i * TM + r, p * tk + c)]);
                    }
                }
            }
            let mut acc = vec![0.0f32; TM * TN];
            let mut tile_f32 = vec![0.0f32; TM * TN];
            let mut tile_bf16 = vec![0u16; TM * TN];
            let mut rows_out = rows_out;
            for j in 0..nt {
                acc.fill(0.0);
                for p in 0..kt {
                    let bt = &b_f32[(j * kt + p) * tk * TN..(j * kt + p + 1) * tk * TN];
                    k::mm_f32(tk, &a_tiles[p * TM * tk..(p + 1) * TM * tk], bt, &mut acc);
                }
                let bias_j = &bias[j * TN..(j + 1) * TN];
                match (g.epilogue, &mut rows_out) {
                    (Epilogue::BiasBf16, RowsOut::Bf16(o)) => {
                        k::bias_bf16(&acc, bias_j, &mut tile_bf16);
                        scatter(&tile_bf16, o, g.ldo, j);
                    }
                    (Epilogue::BiasGeluBf16, RowsOut::Bf16(o)) => {
                        k::bias_gelu_bf16(&acc, bias_j, &mut tile_bf16);
                        scatter(&tile_bf16, o, g.ldo, j);
                    }
                    (Epilogue::BiasGeluPosF32 { .. }, RowsOut::F32(o)) => {
                        let pos = pos.unwrap_or(&[]);
                        let mut pos_tile = vec![0.0f32; TM * TN];
                        gather(&pos[i * TM * g.ldo..], &mut pos_tile, g.ldo, j);
                        k::bias_gelu_pos_f32(&acc, bias_j, &pos_tile, &mut tile_f32);
                        scatter(&tile_f32, o, g.ldo, j);
                    }
                    (Epilogue::BiasResidualF32, RowsOut::F32(o)) => {
                        gather(o, &mut tile_f32, g.ldo, j);
                        k::bias_residual_f32(&acc, bias_j, &mut tile_f32);
                        scatter(&tile_f32, o, g.ldo, j);
                    }
                    _ => unreachable!("epilogue {:?} with the wrong output type", g.epilogue),
                }
            }
        };
        let m = g.m;
        match g.out.elem {
            super::tiling::Elem::Bf16 => {
                let out = &mut as_u16_mut(out_words)[g.out_offset..g.out_offset + m * g.ldo];
                out.par_chunks_mut(rows_len)
                    .enumerate()
                    .for_each(|(i, o)| run_rows(i, RowsOut::Bf16(o)));
            }
            super::tiling::Elem::F32 => {
                let out = &mut as_f32_mut(out_words)[g.out_offset..g.out_offset + m * g.ldo];
                out.par_chunks_mut(rows_len)
                    .enumerate()
                    .for_each(|(i, o)| run_rows(i, RowsOut::F32(o)));
            }
        }
    }

    fn norm(&mut self, n: &Norm) {
        let d = n.d;
        let (gamma, beta) = (
            self.weights.f32(n.gamma).to_vec(),
            self.weights.f32(n.beta).to_vec(),
        );
        let rows = n.rows;
        match n.out.bo {
            BoId::Scratch => {
                let (xw, ow) = self.scratch.split(n.x, n.out);
                let x = &as_f32(xw)[..rows * d];
                let out = &mut as_u16_mut(ow)[..rows * d];
                x.par_chunks(super::tiling::LR * d)
                    .zip(out.par_chunks_mut(super::tiling::LR * d))
                    .for_each(|(x, o)| k::layer_norm_bf16(x, &gamma, &beta, o));
            }
            _ => {
                let x = &self.scratch.f32(n.x)[..rows * d];
                let out = self.output.f32_mut(n.out);
                x.par_chunks(super::tiling::LR * d)
                    .zip(out.par_chunks_mut(super::tiling::LR * d))
                    .for_each(|(x, o)| k::layer_norm_f32(x, &gamma, &beta, o));
            }
        }
    }

    fn attention(&mut self, a: &super::tiling::Attention) {
        let (d, ld) = (a.d, 3 * a.d);
        let (qkv_w, out_w) = self.scratch.split(a.qkv, a.out);
        let qkv = &as_u16(qkv_w)[..a.qkv.len];
        let out = &mut as_u16_mut(out_w)[..a.out.len];
        let nkb = a.key_blocks();
        out.par_chunks_mut(QB * d).enumerate().for_each(|(qb, o)| {
            let mut st = AttnState::new();
            for h in 0..a.heads {
                let hc = h * super::tiling::DH;
                st.init(&qkv[qb * QB * ld + hc..], ld);
                for kb in 0..nkb {
                    let r0 = kb * KB * ld;
                    st.block(
                        &qkv[r0 + d + hc..],
                        &qkv[r0 + 2 * d + hc..],
                        ld,
                        a.scale,
                        a.valid(kb),
                    );
                }
                st.finish(&mut o[hc..], d);
            }
        });
    }
}

/// The output rows of one row tile, typed.
enum RowsOut<'a> {
    Bf16(&'a mut [u16]),
    F32(&'a mut [f32]),
}

/// Writes tile `[TM][TN]` into column tile `j` of rows with stride `ld`.
fn scatter<T: Copy>(tile: &[T], rows: &mut [T], ld: usize, j: usize) {
    for r in 0..TM {
        rows[r * ld + j * TN..r * ld + (j + 1) * TN].copy_from_slice(&tile[r * TN..(r + 1) * TN]);
    }
}

/// Reads column tile `j` of rows with stride `ld` into tile `[TM][TN]`.
fn gather<T: Copy>(rows: &[T], tile: &mut [T], ld: usize, j: usize) {
    for r in 0..TM {
        tile[r * TN..(r + 1) * TN].copy_from_slice(&rows[r * ld + j * TN..r * ld + (j + 1) * TN]);
    }
}

/// Packs `B[kk][jj] = value(kk, jj)` into the tiled bf16 layout of `m`.
fn pack(w: &mut Bo, m: Matrix, value: impl Fn(usize, usize) -> f32) {
    let dst = w.bf16_mut(m.w);
    for kk in 0..m.k {
        for jj in 0..m.n {
            dst[m.index(kk, jj)] = k::to_bf16(value(kk, jj));
        }
    }
}
