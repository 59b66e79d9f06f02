//! The NPU encoder design's tile schedule, buffer layout and DMA access patterns, as data.
//!
//! One window (1500 positions) runs as one dispatch: conv1, conv2 (+ positions), then per layer
//! the phases LN1 + QKV → attention → out-proj + residual → LN2 + FC1 + GELU → FC2 + residual,
//! then the final LayerNorm; every intermediate result is spilled to a DDR scratch buffer
//! object. The same [`Plan`] drives the golden model ([`super::golden`]), the checks in the
//! tests (every access pattern in bounds, within the AIE2 buffer-descriptor limits, covering its
//! buffer the expected number of times; per-core and memory-tile budgets) and
//! `kernels/whisper_encoder.py` (which mirrors these numbers by hand: keep them in step).
//!
//! Sequence positions are padded from 1500 to [`Plan::t_pad`] = 1536 so that every GEMM tile
//! ([`TM`] rows) and attention query block ([`QB`]) is whole; the padded rows carry finite
//! values that never reach a valid row (attention masks keys ≥ 1500).
//!
//! Access patterns ([`Bd`]) are written as mlir-aie's `npu_dma_memcpy_nd` takes them: four
//! sizes and strides, outermost first, in elements of the buffer; [`Bd::check_limits`] converts
//! to the 32-bit words the shim DMA counts in. Each pattern is the end-to-end stream one core
//! consumes from (or produces into) a DDR buffer; in the design it passes through the column's
//! memory tile, whose staging buffers [`memtile_bytes`] accounts for.

/// Rows of a GEMM tile.
pub const TM: usize = 32;
/// Columns of a GEMM tile.
pub const TN: usize = 64;
/// Depth of a GEMM tile (conv1 uses [`TK_CONV1`]: one tap of 80 mel bins).
pub const TK: usize = 64;
/// Depth of conv1's tiles: one kernel tap over all 80 mel bins.
pub const TK_CONV1: usize = 80;
/// Queries per attention block.
pub const QB: usize = 64;
/// Keys per attention block.
pub const KB: usize = 32;
/// Head width the attention kernel is compiled for.
pub const DH: usize = 64;
/// Rows per LayerNorm call.
pub const LR: usize = 2;
/// Compute tiles: 4 columns × 4 rows (Phoenix). Each core runs one program for the whole
/// dispatch, so cores specialise: in every column rows 0..3 are GEMM cores (12 in all) and
/// row 3 is the column's attention + LayerNorm core (4 in all). Their buffers are the union of
/// what their steps need ([`program_core_bytes`]).
pub const COLS: usize = 4;
pub const ROWS: usize = 4;
/// GEMM cores per column.
pub const GEMM_ROWS: usize = 3;
pub const GEMM_CORES: usize = COLS * GEMM_ROWS;
/// Attention / LayerNorm cores (one per column).
pub const AUX_CORES: usize = COLS;
/// Data memory of a compute tile, bytes.
pub const CORE_MEM_BYTES: usize = 64 * 1024;
/// Stack reserved in each compute tile (mlir-aie's default).
pub const CORE_STACK_BYTES: usize = 1024;
/// Memory of a memory tile, bytes.
pub const MEMTILE_BYTES: usize = 512 * 1024;

/// AIE2 shim DMA buffer-descriptor limits (mlir-aie `NpuDmaMemcpyNdOp::verify`), in 32-bit
/// words: sizes of the two inner dimensions ≤ 1023, the repeat (outermost) ≤ 64, strides ≤ 2^20.
pub const BD_MAX_INNER: usize = 1023;
pub const BD_MAX_REPEAT: usize = 64;
pub const BD_MAX_STRIDE_WORDS: usize = 1 << 20;

/// Element type of a buffer region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    Bf16,
    F32,
}

impl Elem {
    pub fn bytes(self) -> usize {
        match self {
            Elem::Bf16 => 2,
            Elem::F32 => 4,
        }
    }
}

/// Which buffer object a region lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BoId {
    Weights,
    Input,
    Scratch,
    Output,
}

/// A typed region of a buffer object: `len` elements from byte `offset` (4-byte aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub bo: BoId,
    pub offset: usize,
    pub len: usize,
    pub elem: Elem,
}

impl Region {
    pub fn bytes(&self) -> usize {
        self.len * self.elem.bytes()
    }
    pub fn end(&self) -> usize {
        self.offset + self.bytes()
    }
}

/// Allocates consecutive 64-byte aligned regions of one buffer object.
struct Allocator {
    bo: BoId,
    next: usize,
}

impl Allocator {
    fn new(bo: BoId) -> Self {
        Self { bo, next: 0 }
    }
    fn take(&mut self, len: usize, elem: Elem) -> Region {
        let r = Region {
            bo: self.bo,
            offset: self.next,
            len,
            elem,
        };
        self.next = (r.end() + 63) & !63;
        r
    }
}

/// A weight matrix `B[K][N]` (= `Wᵀ` of a `[N][K]` layer) in the kernels' tiled layout: tile
/// `(j, p)` (`N` block `j`, `K` block `p`) is `tk × TN` bf16 row-major at
/// `((j * k_tiles) + p) * tk * TN`; with its fp32 bias.
#[derive(Debug, Clone, Copy)]
pub struct Matrix {
    pub k: usize,
    pub n: usize,
    pub tk: usize,
    pub w: Region,
    pub bias: Region,
}

impl Matrix {
    pub fn k_tiles(&self) -> usize {
        self.k / self.tk
    }
    pub fn n_tiles(&self) -> usize {
        self.n / TN
    }
    /// Element index in `w` of `B[kk][jj]`.
    pub fn index(&self, kk: usize, jj: usize) -> usize {
        let (j, p) = (jj / TN, kk / self.tk);
        ((j * self.k_tiles() + p) * self.tk + kk % self.tk) * TN + jj % TN
    }
}

/// The weights of one layer in the weights BO.
#[derive(Debug, Clone, Copy)]
pub struct LayerRegions {
    pub ln1_gamma: Region,
    pub ln1_beta: Region,
    pub qkv: Matrix,
    pub out: Matrix,
    pub ln2_gamma: Region,
    pub ln2_beta: Region,
    pub fc1: Matrix,
    pub fc2: Matrix,
}

/// How a GEMM's `A` tile rows are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AMode {
    /// `A[t][kk]` at `t * lda + kk` (a row-major activation).
    Rows { lda: usize },
    /// conv1 as im2col over the padded time-major mel: `A[t][p * 80 + c]` at
    /// `(t + p) * 80 + c` (tap `p` of position `t` is padded row `t + p`).
    Conv1 { n_mels: usize },
    /// conv2 (stride 2) as im2col over conv1's padded output: `A[t][p * 64 + c]` at
    /// `2t * d + p * 64 + c` (tap-major columns: tap `k`, channel `c'` is column `k * d + c'`).
    Conv2 { d: usize },
}

/// What a GEMM does with a finished fp32 tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// `out = bf16(c + bias)`.
    BiasBf16,
    /// `out = bf16(gelu(c + bias))`.
    BiasGeluBf16,
    /// `out = gelu(c + bias) + pos` (fp32), `pos` from the weights BO.
    BiasGeluPosF32 { pos: Region },
    /// `x = x + (c + bias)` (fp32, in place).
    BiasResidualF32,
}

/// One GEMM step: `out[m][n] = epilogue(A[m][k] · B)`.
#[derive(Debug, Clone, Copy)]
pub struct Gemm {
    pub name: &'static str,
    pub m: usize,
    pub a: Region,
    pub a_mode: AMode,
    /// Element offset of `A`'s row 0 in `a`.
    pub a_offset: usize,
    pub b: Matrix,
    pub out: Region,
    /// Element offset of output row 0 in `out`, and its row stride.
    pub out_offset: usize,
    pub ldo: usize,
    pub epilogue: Epilogue,
}

impl Gemm {
    pub fn row_tiles(&self) -> usize {
        self.m / TM
    }
    /// Element offset in `a` of `A[t][kk]`.
    pub fn a_index(&self, t: usize, kk: usize) -> usize {
        self.a_offset
            + match self.a_mode {
                AMode::Rows { lda } => t * lda + kk,
                AMode::Conv1 { n_mels } => (t + kk / n_mels) * n_mels + kk % n_mels,
                AMode::Conv2 { d } => 2 * t * d + kk,
            }
    }
    /// The GEMM core computing output tile `(i, j)`: column `i % 4`, GEMM row `j % 3`.
    pub fn core_of(i: usize, j: usize) -> usize {
        (i % COLS) * GEMM_ROWS + j % GEMM_ROWS
    }
    /// Output tiles of GEMM core `core` in its order: its row tiles ascending, then its
    /// column tiles.
    pub fn tiles_of(&self, core: usize) -> Vec<(usize, usize)> {
        let (col, row) = (core / GEMM_ROWS, core % GEMM_ROWS);
        let mut v = Vec::new();
        for i in (col..self.row_tiles()).step_by(COLS) {
            for j in (row..self.b.n_tiles()).step_by(GEMM_ROWS) {
                v.push((i, j));
            }
        }
        v
    }
}

/// One LayerNorm step over `rows` rows of the fp32 residual stream.
#[derive(Debug, Clone, Copy)]
pub struct Norm {
    pub name: &'static str,
    pub rows: usize,
    pub d: usize,
    pub x: Region,
    pub gamma: Region,
    pub beta: Region,
    /// bf16 (the next GEMM's input) or fp32 (the encoder output).
    pub out: Region,
}

impl Norm {
    pub fn groups(&self) -> usize {
        self.rows / LR
    }
    /// Row groups of LayerNorm core `core`: `core`, `core + 4`, ...
    pub fn groups_of(&self, core: usize) -> impl Iterator<Item = usize> {
        (core..self.groups()).step_by(AUX_CORES)
    }
}

/// Self-attention of all heads over the fused QKV buffer `[t_pad][3d]`.
#[derive(Debug, Clone, Copy)]
pub struct Attention {
    pub heads: usize,
    pub d: usize,
    /// Valid positions (keys beyond are masked).
    pub t: usize,
    pub t_pad: usize,
    pub qkv: Region,
    pub out: Region,
    pub scale: f32,
}

impl Attention {
    pub fn query_blocks(&self) -> usize {
        self.t_pad / QB
    }
    pub fn key_blocks(&self) -> usize {
        self.t.div_ceil(KB)
    }
    /// Valid keys of key block `kb`.
    pub fn valid(&self, kb: usize) -> usize {
        (self.t - kb * KB).min(KB)
    }
    /// Tasks `(head, query block)` of attention core `core`: task `h * query_blocks + qb`
    /// runs on core `task % 4`.
    pub fn tasks_of(&self, core: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let qbs = self.query_blocks();
        (core..self.heads * qbs)
            .step_by(AUX_CORES)
            .map(move |task| (task / qbs, task % qbs))
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Step {
    Gemm(Gemm),
    Norm(Norm),
    Attention(Attention),
}

/// The whole design for one model size.
#[derive(Debug, Clone)]
pub struct Plan {
    pub n_mels: usize,
    pub d: usize,
    pub heads: usize,
    pub layers: usize,
    /// Valid positions (1500) and the padded count (1536).
    pub t: usize,
    pub t_pad: usize,
    /// Bytes of each buffer object.
    pub weights_bytes: usize,
    pub input_bytes: usize,
    pub scratch_bytes: usize,
    pub output_bytes: usize,
    /// Input: padded time-major mel `[2 * t_pad + 2][n_mels]` bf16; row `s` is frame `s - 1`.
    pub mel: Region,
    pub conv1: Matrix,
    pub conv2: Matrix,
    /// Positional embeddings `[t_pad][d]` fp32 (zero past `t`).
    pub pos: Region,
    pub layer_weights: Vec<LayerRegions>,
    pub ln_post_gamma: Region,
    pub ln_post_beta: Region,
    /// Scratch: conv1 output `[2 * t_pad + 1][d]` bf16, row `s` is position `s - 1` (row 0 is
    /// the zero padding, never written).
    pub conv1_out: Region,
    /// Scratch: residual stream `[t_pad][d]` fp32.
    pub x: Region,
    /// Scratch: LayerNorm output `[t_pad][d]` bf16.
    pub h: Region,
    /// Scratch: fused Q, K, V `[t_pad][3d]` bf16.
    pub qkv: Region,
    /// Scratch: attention output, heads side by side, `[t_pad][d]` bf16.
    pub attn: Region,
    /// Scratch: FC1 output `[t_pad][4d]` bf16.
    pub hidden: Region,
    /// Output: encoder output `[t][d]` fp32.
    pub out: Region,
    /// The steps of one dispatch, in order.
    pub steps: Vec<Step>,
}

/// Why a model does not fit the design.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the NPU encoder design does not support {what}")]
pub struct Unsupported {
    pub what: String,
}

impl Plan {
    /// The design for a model with `n_mels` mel bins, width `d`, `heads` heads, `layers` layers
    /// and `t` positions per window.
    pub fn new(
        n_mels: usize,
        d: usize,
        heads: usize,
        layers: usize,
        t: usize,
    ) -> Result<Self, Unsupported> {
        let bad = |what: String| Err(Unsupported { what });
        if n_mels != TK_CONV1 {
            return bad(format!("{n_mels} mel bins (conv1's tiles hold {TK_CONV1})"));
        }
        if !d.is_multiple_of(TN) || !d.is_multiple_of(16) {
            return bad(format!("width {d} (a multiple of {TN} is needed)"));
        }
        if heads == 0 || d / heads != DH || !d.is_multiple_of(heads) {
            return bad(format!(
                "{heads} heads of width {} (the kernel is built for {DH})",
                d.checked_div(heads).unwrap_or(0)
            ));
        }
        if t == 0 || !t.is_multiple_of(LR) {
            return bad(format!("{t} positions"));
        }
        let t_pad = t.next_multiple_of(QB.max(TM));
        let frames_pad = 2 * t_pad;

        let mut wa = Allocator::new(BoId::Weights);
        let matrix = |wa: &mut Allocator, k: usize, n: usize, tk: usize| Matrix {
            k,
            n,
            tk,
            w: wa.take(k * n, Elem::Bf16),
            bias: wa.take(n, Elem::F32),
        };
        let conv1 = matrix(&mut wa, 3 * n_mels, d, TK_CONV1);
        let conv2 = matrix(&mut wa, 3 * d, d, TK);
        let pos = wa.take(t_pad * d, Elem::F32);
        let layer_weights: Vec<LayerRegions> = (0..layers)
            .map(|_| LayerRegions {
                ln1_gamma: wa.take(d, Elem::F32),
                ln1_beta: wa.take(d, Elem::F32),
                qkv: matrix(&mut wa, d, 3 * d, TK),
                out: matrix(&mut wa, d, d, TK),
                ln2_gamma: wa.take(d, Elem::F32),
                ln2_beta: wa.take(d, Elem::F32),
                fc1: matrix(&mut wa, d, 4 * d, TK),
                fc2: matrix(&mut wa, 4 * d, d, TK),
            })
            .collect();
        let ln_post_gamma = wa.take(d, Elem::F32);
        let ln_post_beta = wa.take(d, Elem::F32);

        let mut ia = Allocator::new(BoId::Input);
        let mel = ia.take((frames_pad + 2) * n_mels, Elem::Bf16);
        let mut sa = Allocator::new(BoId::Scratch);
        let conv1_out = sa.take((frames_pad + 1) * d, Elem::Bf16);
        let x = sa.take(t_pad * d, Elem::F32);
        let h = sa.take(t_pad * d, Elem::Bf16);
        let qkv = sa.take(t_pad * 3 * d, Elem::Bf16);
        let attn = sa.take(t_pad * d, Elem::Bf16);
        let hidden = sa.take(t_pad * 4 * d, Elem::Bf16);
        let mut oa = Allocator::new(BoId::Output);
        let out = oa.take(t * d, Elem::F32);

        let mut steps = vec![
            Step::Gemm(Gemm {
                name: "conv1",
                m: frames_pad,
                a: mel,
                a_mode: AMode::Conv1 { n_mels },
                a_offset: 0,
                b: conv1,
                out: conv1_out,
                out_offset: d,
                ldo: d,
                epilogue: Epilogue::BiasGeluBf16,
            }),
            Step::Gemm(Gemm {
                name: "conv2",
                m: t_pad,
                a: conv1_out,
                a_mode: AMode::Conv2 { d },
                a_offset: 0,
                b: conv2,
                out: x,
                out_offset: 0,
                ldo: d,
                epilogue: Epilogue::BiasGeluPosF32 { pos },
            }),
        ];
        let gemm = |name, a: Region, lda, b: Matrix, out: Region, ldo, epilogue| Gemm {
            name,
            m: t_pad,
            a,
            a_mode: AMode::Rows { lda },
            a_offset: 0,
            b,
            out,
            out_offset: 0,
            ldo,
            epilogue,
        };
        for lw in &layer_weights {
            steps.push(Step::Norm(Norm {
                name: "ln1",
                rows: t_pad,
                d,
                x,
                gamma: lw.ln1_gamma,
                beta: lw.ln1_beta,
                out: h,
            }));
            steps.push(Step::Gemm(gemm(
                "qkv",
                h,
                d,
                lw.qkv,
                qkv,
                3 * d,
                Epilogue::BiasBf16,
            )));
            steps.push(Step::Attention(Attention {
                heads,
                d,
                t,
                t_pad,
                qkv,
                out: attn,
                scale: 1.0 / (DH as f32).sqrt(),
            }));
            steps.push(Step::Gemm(gemm(
                "out_proj",
                attn,
                d,
                lw.out,
                x,
                d,
                Epilogue::BiasResidualF32,
            )));
            steps.push(Step::Norm(Norm {
                name: "ln2",
                rows: t_pad,
                d,
                x,
                gamma: lw.ln2_gamma,
                beta: lw.ln2_beta,
                out: h,
            }));
            steps.push(Step::Gemm(gemm(
                "fc1",
                h,
                d,
                lw.fc1,
                hidden,
                4 * d,
                Epilogue::BiasGeluBf16,
            )));
            steps.push(Step::Gemm(gemm(
                "fc2",
                hidden,
                4 * d,
                lw.fc2,
                x,
                d,
                Epilogue::BiasResidualF32,
            )));
        }
        steps.push(Step::Norm(Norm {
            name: "ln_post",
            rows: t,
            d,
            x,
            gamma: ln_post_gamma,
            beta: ln_post_beta,
            out,
        }));
        Ok(Plan {
            n_mels,
            d,
            heads,
            layers,
            t,
            t_pad,
            weights_bytes: wa.next,
            input_bytes: ia.next,
            scratch_bytes: sa.next,
            output_bytes: oa.next,
            mel,
            conv1,
            conv2,
            pos,
            layer_weights,
            ln_post_gamma,
            ln_post_beta,
            conv1_out,
            x,
            h,
            qkv,
            attn,
            hidden,
            out,
            steps,
        })
    }
}

/// Whether a pattern reads or writes its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Read,
    Write,
}

/// One buffer descriptor: `sizes`/`strides` outermost first, in elements of `region`; the
/// address of index `(a, b, c, e)` is `offset + a*strides[0] + b*strides[1] + c*strides[2] +
/// e*strides[3]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bd {
    pub region: Region,
    pub dir: Dir,
    pub core: usize,
    pub offset: usize,
    pub sizes: [usize; 4],
    pub strides: [usize; 4],
}

impl Bd {
    pub fn elements(&self) -> usize {
        self.sizes.iter().product()
    }

    /// Every element address, in stream order.
    pub fn addresses(&self) -> impl Iterator<Item = usize> + '_ {
        let [s0, s1, s2, s3] = self.sizes;
        let [t0, t1, t2, t3] = self.strides;
        (0..s0).flat_map(move |a| {
            (0..s1).flat_map(move |b| {
                (0..s2).flat_map(move |c| {
                    (0..s3).map(move |e| self.offset + a * t0 + b * t1 + c * t2 + e * t3)
                })
            })
        })
    }

    /// The AIE2 shim BD limits, in 32-bit words: contiguous inner dimension of whole words,
    /// 4-byte aligned offset, inner sizes ≤ 1023, repeat ≤ 64, strides ≤ 2^20 words.
    pub fn check_limits(&self) -> Result<(), String> {
        let eb = self.region.elem.bytes();
        let words = |elems: usize| -> Result<usize, String> {
            if !(elems * eb).is_multiple_of(4) {
                return Err(format!(
                    "{elems} elements of {eb} bytes are not whole words"
                ));
            }
            Ok(elems * eb / 4)
        };
        if self.strides[3] != 1 {
            return Err(format!("inner stride {} (must be 1)", self.strides[3]));
        }
        if !(self.region.offset + self.offset * eb).is_multiple_of(4) {
            return Err(format!("offset {} not 4-byte aligned", self.offset));
        }
        let inner = words(self.sizes[3])?;
        if inner > BD_MAX_INNER {
            return Err(format!("inner size {inner} words > {BD_MAX_INNER}"));
        }
        for (dim, &size) in self.sizes[1..3].iter().enumerate() {
            if size > BD_MAX_INNER {
                return Err(format!(
                    "size {} of dimension {} > {BD_MAX_INNER}",
                    size,
                    dim + 1
                ));
            }
        }
        if self.sizes[0] > BD_MAX_REPEAT {
            return Err(format!("repeat {} > {BD_MAX_REPEAT}", self.sizes[0]));
        }
        for (dim, &stride) in self.strides[..3].iter().enumerate() {
            if self.sizes[dim] > 1 && words(stride)? > BD_MAX_STRIDE_WORDS {
                return Err(format!("stride {stride} of dimension {dim} too large"));
            }
        }
        if self.sizes.contains(&0) {
            return Err("empty dimension".into());
        }
        Ok(())
    }
}

/// The access patterns of one step: what each core streams from and to the buffer objects.
pub fn bds(step: &Step) -> Vec<Bd> {
    let mut v = Vec::new();
    let bd = |region, dir, core, offset, sizes, strides| Bd {
        region,
        dir,
        core,
        offset,
        sizes,
        strides,
    };
    match step {
        Step::Gemm(g) => {
            let (kt, tk, nt) = (g.b.k_tiles(), g.b.tk, g.b.n_tiles());
            for core in 0..GEMM_CORES {
                let (col, row) = (core / GEMM_ROWS, core % GEMM_ROWS);
                let n_j = (row..nt).step_by(GEMM_ROWS).count();
                if n_j == 0 {
                    continue;
                }
                for i in (col..g.row_tiles()).step_by(COLS) {
                    let t0 = i * TM;
                    // A: the row tile's K tiles, once per output tile of the core.
                    let (k_stride, row_stride) = match g.a_mode {
                        AMode::Rows { lda } => (tk, lda),
                        AMode::Conv1 { n_mels } => (n_mels, n_mels),
                        AMode::Conv2 { d } => (tk, 2 * d),
                    };
                    v.push(bd(
                        g.a,
                        Dir::Read,
                        core,
                        g.a_index(t0, 0),
                        [n_j, kt, TM, tk],
                        [0, k_stride, row_stride, 1],
                    ));
                    // B: the core's column tiles, each all its K tiles.
                    v.push(bd(
                        g.b.w,
                        Dir::Read,
                        core,
                        row * kt * tk * TN,
                        [n_j, kt, tk, TN],
                        [GEMM_ROWS * kt * tk * TN, tk * TN, TN, 1],
                    ));
                    v.push(bd(
                        g.b.bias,
                        Dir::Read,
                        core,
                        row * TN,
                        [1, 1, n_j, TN],
                        [0, 0, GEMM_ROWS * TN, 1],
                    ));
                    let out_offset = g.out_offset + t0 * g.ldo + row * TN;
                    let out_pattern = ([1, n_j, TM, TN], [0, GEMM_ROWS * TN, g.ldo, 1]);
                    match g.epilogue {
                        Epilogue::BiasResidualF32 => {
                            v.push(bd(
                                g.out,
                                Dir::Read,
                                core,
                                out_offset,
                                out_pattern.0,
                                out_pattern.1,
                            ));
                        }
                        Epilogue::BiasGeluPosF32 { pos } => {
                            v.push(bd(
                                pos,
                                Dir::Read,
                                core,
                                t0 * g.ldo + row * TN,
                                out_pattern.0,
                                out_pattern.1,
                            ));
                        }
                        _ => {}
                    }
                    v.push(bd(
                        g.out,
                        Dir::Write,
                        core,
                        out_offset,
                        out_pattern.0,
                        out_pattern.1,
                    ));
                }
            }
        }
        Step::Norm(n) => {
            for core in 0..AUX_CORES {
                let groups = n.groups_of(core).count();
                if groups == 0 {
                    continue;
                }
                let off = core * LR * n.d;
                let (sizes, strides) = ([1, groups, LR, n.d], [0, AUX_CORES * LR * n.d, n.d, 1]);
                v.push(bd(n.x, Dir::Read, core, off, sizes, strides));
                v.push(bd(n.out, Dir::Write, core, off, sizes, strides));
                v.push(bd(
                    n.gamma,
                    Dir::Read,
                    core,
                    0,
                    [1, 1, 1, n.d],
                    [0, 0, 0, 1],
                ));
                v.push(bd(n.beta, Dir::Read, core, 0, [1, 1, 1, n.d], [0, 0, 0, 1]));
            }
        }
        Step::Attention(a) => {
            let ld = 3 * a.d;
            for core in 0..AUX_CORES {
                for (h, qb) in a.tasks_of(core) {
                    let r0 = qb * QB;
                    v.push(bd(
                        a.qkv,
                        Dir::Read,
                        core,
                        r0 * ld + h * DH,
                        [1, 1, QB, DH],
                        [0, 0, ld, 1],
                    ));
                    let nkb = a.key_blocks();
                    for part in [1, 2] {
                        v.push(bd(
                            a.qkv,
                            Dir::Read,
                            core,
                            part * a.d + h * DH,
                            [1, nkb, KB, DH],
                            [0, KB * ld, ld, 1],
                        ));
                    }
                    v.push(bd(
                        a.out,
                        Dir::Write,
                        core,
                        r0 * a.d + h * DH,
                        [1, 1, QB, DH],
                        [0, 0, a.d, 1],
                    ));
                }
            }
        }
    }
    v
}

/// Bytes of one buffer of a core, and how many copies (object-FIFO depth) it has.
#[derive(Debug, Clone, Copy)]
pub struct CoreBuffer {
    pub name: &'static str,
    pub bytes: usize,
    pub depth: usize,
}

/// The buffers a compute tile holds for `step` (double buffers counted twice).
pub fn core_buffers(step: &Step) -> Vec<CoreBuffer> {
    let b = |name, bytes, depth| CoreBuffer { name, bytes, depth };
    match step {
        Step::Gemm(g) => {
            let tk = g.b.tk;
            let mut v = vec![
                b("a", TM * tk * 2, 2),
                b("b", tk * TN * 2, 2),
                b("acc", TM * TN * 4, 1),
                b("bias", TN * 4, 2),
            ];
            match g.epilogue {
                Epilogue::BiasBf16 | Epilogue::BiasGeluBf16 => v.push(b("out", TM * TN * 2, 2)),
                Epilogue::BiasGeluPosF32 { .. } => {
                    v.push(b("pos", TM * TN * 4, 1));
                    v.push(b("out", TM * TN * 4, 2));
                }
                Epilogue::BiasResidualF32 => {
                    v.push(b("x_in", TM * TN * 4, 1));
                    v.push(b("out", TM * TN * 4, 2));
                }
            }
            v
        }
        Step::Norm(n) => {
            let out_bytes = if n.out.elem == Elem::F32 { 4 } else { 2 };
            // `out` single-buffered: it shares the attention output's FIFO (see
            // `program_core_bytes`), which holds one 64 × 64 bf16 block.
            vec![
                b("x", LR * n.d * 4, 2),
                b("out", LR * n.d * out_bytes, 1),
                b("gamma", n.d * 4, 1),
                b("beta", n.d * 4, 1),
            ]
        }
        Step::Attention(_) => vec![
            b("q", QB * DH * 2, 1),
            b("k", KB * DH * 2, 2),
            b("v", KB * DH * 2, 2),
            b("o", QB * DH * 4, 1),
            b("scores", QB * KB * 4, 1),
            b("max_sum", 2 * QB * 4, 1),
            b("out", QB * DH * 2, 1),
        ],
    }
}

/// Total data memory of a compute tile for `step`, stack included.
pub fn core_bytes(step: &Step) -> usize {
    CORE_STACK_BYTES
        + core_buffers(step)
            .iter()
            .map(|b| b.bytes * b.depth)
            .sum::<usize>()
}

/// Memory-tile bytes of one column for `step`: the staging buffers its four cores' streams
/// pass through (double-buffered).
pub fn memtile_bytes(step: &Step) -> usize {
    match step {
        // A: one whole row tile (TM × K), shared by the column's cores; per core its B tile,
        // output tile and, for residual/position epilogues, the extra fp32 input tile.
        Step::Gemm(g) => {
            let per_core = core_buffers(step)
                .iter()
                .filter(|b| b.name != "a" && b.name != "acc")
                .map(|b| b.bytes * 2)
                .sum::<usize>();
            2 * TM * g.b.k * 2 + GEMM_ROWS * per_core
        }
        Step::Norm(n) => 2 * (LR * n.d * 4 + LR * n.d * n.out.elem.bytes()),
        Step::Attention(_) => 2 * (QB * DH * 2 + 2 * KB * DH * 2 + QB * DH * 2),
    }
}

/// Which kind of core runs a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreKind {
    Gemm,
    Aux,
}

pub fn core_kind(step: &Step) -> CoreKind {
    match step {
        Step::Gemm(_) => CoreKind::Gemm,
        _ => CoreKind::Aux,
    }
}

/// Data memory a core of `kind` needs for the whole dispatch: its object FIFOs carry every
/// step's operands, so each FIFO slot is as large as the largest use (`slot` names which FIFO
/// a buffer travels in), plus one local buffer for the largest kernel state, plus the stack.
pub fn program_core_bytes(plan: &Plan, kind: CoreKind) -> usize {
    // FIFO assignment of each buffer name: (fifo, is_local).
    fn slot(step: &Step, name: &str) -> &'static str {
        match (step, name) {
            (Step::Gemm(_), "a") | (Step::Attention(_), "k") | (Step::Norm(_), "x") => "in0",
            (Step::Gemm(_), "b") | (Step::Attention(_), "v") => "in1",
            (Step::Norm(_), "gamma") | (Step::Norm(_), "beta") => "params",
            (Step::Gemm(_), "bias") => "params",
            (Step::Gemm(_), "pos") | (Step::Gemm(_), "x_in") | (Step::Attention(_), "q") => "in2",
            (_, "out") => "out",
            _ => "local",
        }
    }
    let mut slots: std::collections::BTreeMap<&'static str, (usize, usize)> = Default::default();
    for step in plan.steps.iter().filter(|s| core_kind(s) == kind) {
        let mut per_step: std::collections::BTreeMap<&'static str, (usize, usize)> =
            Default::default();
        for b in core_buffers(step) {
            let e = per_step.entry(slot(step, b.name)).or_insert((0, 0));
            // Buffers sharing a FIFO travel as one element (gamma + beta; local state).
            e.0 += b.bytes;
            e.1 = e.1.max(b.depth);
        }
        for (name, (bytes, depth)) in per_step {
            let e = slots.entry(name).or_insert((0, 0));
            e.0 = e.0.max(bytes);
            e.1 = e.1.max(depth);
        }
    }
    CORE_STACK_BYTES + slots.values().map(|(b, d)| b * d).sum::<usize>()
}
