//! Cache-blocked f32 GEMM with an AVX-512 microkernel, selected at run time.
//!
//! Computes `C[m][n] = alpha · A[m][k] · B[k][n] (+ bias[n]) (+ C)`, where `B` is held in a
//! [`PackedB`]: column panels of [`NR`] columns, each stored k-major (`[k][NR]`, zero padded past
//! `n`), the layout the microkernels stream. Weights (`B = Wᵀ` of a `[n][k]` row-major matrix,
//! the `Linear` layout) are packed once at load; other operands can be packed per call
//! ([`sgemm_strided`]) into a thread-local buffer.
//!
//! Blocking (BLIS style): each task owns a range of rows (or, for few rows, of column panels);
//! for every `kc`-deep slice of K it packs its `mc × kc` block of `A` into a thread-local buffer
//! (micro-panels of `mr` rows, `[kc][mr]`, kept in L2), then for every `kc × NR` micro-panel of
//! `B` runs the microkernel over all row micro-panels of the block. The `mr × NR` accumulator
//! tile lives in registers for the whole `kc` loop; C is touched once per K slice, its tile
//! prefetched while the kernel runs. When B has at most two panels (attention's `P · V`, `n` =
//! head width) packing A would cost as much as the product, so the AVX-512 kernel reads A in
//! place instead.
//!
//! Kernels, fastest available first: AVX-512F (`14 × 32`: 28 zmm accumulators, two B vectors,
//! broadcast A), AVX2+FMA (`6 × 16`, run twice per 32-wide panel), portable Rust (`4 × 32`).
//! Every path reads the same `PackedB`, so weights are packed once whatever the CPU. Threads:
//! the tasks run on the current rayon pool.
//!
//! On the Zen 4 machines this was tuned on, 512-bit FMAs issue at one per cycle (two 256-bit
//! halves), so the AVX-512 peak equals the AVX2 peak (32 flop/cycle/core); the wider kernel's
//! gain is fewer instructions and loads per FMA, not twice the throughput. On cores with two
//! 512-bit FMA units (Intel server parts) the AVX-512 kernel's headroom is twice the AVX2 one.

use std::cell::{Cell, RefCell};
use std::sync::OnceLock;

use gemm::Parallelism;
use rayon::prelude::*;

/// Columns per B panel (two zmm, four ymm).
pub const NR: usize = 32;
/// Rows of the AVX-512 microkernel.
const MR_512: usize = 14;
/// Rows of the AVX2 microkernel (16 columns each pass).
const MR_256: usize = 6;
/// Rows of the portable microkernel.
const MR_PORTABLE: usize = 4;
/// Depth of a K slice (K is cut into equal slices of at most this). Measured on Zen 4 (32 KiB
/// L1d, 1 MiB L2): deep slices win: the `KC × NR` B micro-panel (64 KiB) streams from L2 well
/// enough for a kernel doing 28 FMAs per 184 bytes loaded, and C is re-read once per slice;
/// 128–256 (B micro-panel in L1, the textbook choice) were 5–15 % slower.
const KC: usize = 512;
/// Rows of A packed at once: `MC × KC` floats is 400 KiB, for L2.
const MC: usize = 196;

/// Instruction set of the microkernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F, 14 × 32 tile.
    Avx512,
    /// AVX2 + FMA, 6 × 16 tile.
    Avx2,
    /// Plain Rust (auto-vectorised for the baseline target), 4 × 32 tile.
    Portable,
}

impl Isa {
    /// The best kernel this CPU runs (detected once).
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx512f") {
                    return Isa::Avx512;
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    return Isa::Avx2;
                }
            }
            Isa::Portable
        })
    }

    /// Whether this CPU can run the kernel.
    pub fn supported(self) -> bool {
        match self {
            Isa::Portable => true,
            Isa::Avx2 => matches!(Isa::detected(), Isa::Avx2 | Isa::Avx512),
            Isa::Avx512 => Isa::detected() == Isa::Avx512,
        }
    }

    fn mr(self) -> usize {
        match self {
            Isa::Avx512 => MR_512,
            Isa::Avx2 => MR_256,
            Isa::Portable => MR_PORTABLE,
        }
    }
}

thread_local! {
    static ISA_OVERRIDE: Cell<Option<Isa>> = const { Cell::new(None) };
    /// Packed A blocks of the tasks this thread runs.
    static PACK_A: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::new()) };
    /// B packed per call by [`sgemm_strided`].
    static PACK_B: RefCell<PackedB> = const { RefCell::new(PackedB::empty()) };
}

/// Runs `f` with the GEMMs *called from this thread* using kernel `isa` instead of the detected
/// one (for tests and benchmarks: e.g. to exercise the AVX2 path on an AVX-512 machine).
/// Panics if the CPU cannot run `isa`.
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    assert!(isa.supported(), "this CPU cannot run the {isa:?} kernel");
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ISA_OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(ISA_OVERRIDE.with(|o| o.replace(Some(isa))));
    f()
}

/// The kernel GEMMs called from this thread use.
pub fn current_isa() -> Isa {
    ISA_OVERRIDE.with(|o| o.get()).unwrap_or_else(Isa::detected)
}

/// 64-byte aligned storage for f32 (one cache line, one zmm per element).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

struct AlignedBuf {
    lines: Vec<Line>,
}

impl AlignedBuf {
    const fn new() -> Self {
        Self { lines: Vec::new() }
    }

    /// Grows (never shrinks) to hold `len` floats; returns them (contents unspecified).
    fn reserve(&mut self, len: usize) -> &mut [f32] {
        let lines = len.div_ceil(16);
        if self.lines.len() < lines {
            self.lines.resize(lines, Line([0.0; 16]));
        }
        // SAFETY: `Line` is 16 plain f32 with no padding.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), len) }
    }

    fn as_slice(&self, len: usize) -> &[f32] {
        assert!(len <= self.lines.len() * 16);
        // SAFETY: as above; `len` is within the allocation.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), len) }
    }
}

/// The `B` operand (`k × n`) in panel layout: panel `j` holds columns `j*NR .. j*NR + NR` as
/// `[k][NR]`, columns past `n` zero.
pub struct PackedB {
    n: usize,
    k: usize,
    buf: AlignedBuf,
}

impl PackedB {
    const fn empty() -> Self {
        Self {
            n: 0,
            k: 0,
            buf: AlignedBuf::new(),
        }
    }

    /// Packs the weight matrix `w[n][k]` (row-major, the `Linear` layout) as `B = wᵀ`, so
    /// that the GEMM computes `x · wᵀ`.
    pub fn from_rows(w: &[f32], n: usize, k: usize) -> Self {
        assert!(w.len() >= n * k);
        let mut p = Self::empty();
        p.pack(w, k, n, 1, k);
        p
    }

    /// Packs `B[p][j] = b.data[p * b.rs + j * b.cs]` (`k × n`, e.g. the keys of one attention
    /// head as `Kᵀ`), reusing this operand's buffer.
    pub fn pack_from(&mut self, b: MatRef<'_>, k: usize, n: usize) {
        assert!(
            k == 0 || n == 0 || b.data.len() > (k - 1) * b.rs + (n - 1) * b.cs,
            "B too small"
        );
        self.pack(b.data, k, n, b.rs, b.cs);
    }

    /// Packs `B[p][j] = b[p * rs + j * cs]` (`k × n`), reusing this buffer.
    fn pack(&mut self, b: &[f32], k: usize, n: usize, rs: usize, cs: usize) {
        self.n = n;
        self.k = k;
        let panels = n.div_ceil(NR);
        let dst = self.buf.reserve(panels * k * NR);
        for jp in 0..panels {
            let panel = &mut dst[jp * k * NR..(jp + 1) * k * NR];
            let cols = NR.min(n - jp * NR);
            if cs == 1 {
                // Rows of B are contiguous: copy row slices.
                for (p, row) in panel.chunks_exact_mut(NR).enumerate() {
                    let src = &b[p * rs + jp * NR..][..cols];
                    row[..cols].copy_from_slice(src);
                    row[cols..].fill(0.0);
                }
            } else {
                // Columns of B (rows of W) are contiguous when rs == 1: read each along k.
                for jj in 0..NR {
                    if jj < cols {
                        let base = (jp * NR + jj) * cs;
                        for p in 0..k {
                            panel[p * NR + jj] = b[base + p * rs];
                        }
                    } else {
                        for p in 0..k {
                            panel[p * NR + jj] = 0.0;
                        }
                    }
                }
            }
        }
    }

    /// Replaces every stored value `v` by `f(v)` (the zero padding too: `f(0)` should be 0),
    /// e.g. to round the operand to a lower precision.
    pub fn map_in_place(&mut self, f: impl Fn(f32) -> f32) {
        let len = self.n.div_ceil(NR) * self.k * NR;
        self.buf.reserve(len).iter_mut().for_each(|v| *v = f(*v));
    }

    /// Columns (`n`).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Depth (`k`).
    pub fn k(&self) -> usize {
        self.k
    }

    fn data(&self) -> &[f32] {
        self.buf.as_slice(self.n.div_ceil(NR) * self.k * NR)
    }

    /// `B[p][j]`.
    pub fn get(&self, p: usize, j: usize) -> f32 {
        assert!(p < self.k && j < self.n);
        self.data()[(j / NR) * self.k * NR + p * NR + j % NR]
    }
}

impl Default for PackedB {
    /// An empty operand, for [`pack_from`](Self::pack_from) to fill.
    fn default() -> Self {
        Self::empty()
    }
}

/// What to do with the product before storing it.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    /// Scale of the product.
    pub alpha: f32,
    /// Add the previous contents of C (`C += ...`) instead of overwriting it.
    pub accumulate: bool,
    /// Added to every row (length `n`).
    pub bias: Option<&'a [f32]>,
}

impl Default for Epilogue<'_> {
    fn default() -> Self {
        Self {
            alpha: 1.0,
            accumulate: false,
            bias: None,
        }
    }
}

/// Row-major `A` with general strides: `A[i][p] = a[i * rs + p * cs]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// `C[m][n] = alpha · A[m][k] · B (+ bias) (+ C)`, `C` row stride `ldc`, `n`, `k` from `b`.
pub fn sgemm(
    m: usize,
    a: MatRef<'_>,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue<'_>,
    par: Parallelism,
) {
    let (n, k) = (b.n, b.k);
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "C too small");
    assert!(
        k == 0 || a.data.len() > (m - 1) * a.rs + (k - 1) * a.cs,
        "A too small"
    );
    if let Some(bias) = ep.bias {
        assert!(bias.len() >= n, "bias too short");
    }
    let threads = threads_of(par);
    let job = Job {
        m,
        n,
        k,
        a: a.data.as_ptr(),
        a_rs: a.rs,
        a_cs: a.cs,
        b: b.data().as_ptr(),
        c: c.as_mut_ptr(),
        ldc,
        alpha: ep.alpha,
        accumulate: ep.accumulate,
        bias: ep.bias.map_or(std::ptr::null(), |b| b.as_ptr()),
        isa: current_isa(),
    };
    job.run(threads);
}

/// The thread count `par` asks for (`Rayon(0)`: the current pool's).
pub(crate) fn threads_of(par: Parallelism) -> usize {
    match par {
        Parallelism::None => 1,
        Parallelism::Rayon(0) => rayon::current_num_threads(),
        Parallelism::Rayon(t) => t,
    }
}

/// General strided GEMM like [`gemm::gemm`]'s: `C[m][n] = alpha · A · B (+ C if accumulate)`
/// with `A[i][p] = a[i * a_rs + p * a_cs]` and `B[p][j] = b[p * b_rs + j * b_cs]`. `B` is packed
/// per call into a thread-local buffer, which pays off when `m` is large.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_strided(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    ldc: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    accumulate: bool,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        k == 0 || b.data.len() > (k - 1) * b.rs + (n - 1) * b.cs,
        "B too small"
    );
    with_scratch(&PACK_B, PackedB::empty, |pb| {
        pb.pack(b.data, k, n, b.rs, b.cs);
        let ep = Epilogue {
            alpha,
            accumulate,
            bias: None,
        };
        sgemm(m, a, pb, c, ldc, ep, par);
    });
}

/// Runs `f` on this thread's scratch buffer `key`, or on a fresh one (`fresh()`) when it is
/// already borrowed: a product called from inside another product's task on the same thread.
pub(crate) fn with_scratch<T: 'static, R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<T>>,
    fresh: impl FnOnce() -> T,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut fresh()),
    })
}

/// Runs a product of `m` rows and `col_panels` column panels as `task(rows, panels)` calls on
/// `threads` threads: split by rows, in whole blocks of `mr`, when there are at least two
/// blocks per thread (every task streams all of B and prepares its own A), else by column
/// panels (few rows, e.g. the decoder; each task prepares the small A); one call when `small`
/// or on one thread. Shared by the f32, bf16 and int8 GEMMs.
pub(crate) fn split_tasks(
    m: usize,
    mr: usize,
    col_panels: usize,
    threads: usize,
    small: bool,
    task: impl Fn(std::ops::Range<usize>, std::ops::Range<usize>) + Sync,
) {
    let row_blocks = m.div_ceil(mr);
    if threads <= 1 || small {
        task(0..m, 0..col_panels);
    } else if row_blocks >= 2 * threads {
        let per = row_blocks.div_ceil(threads) * mr;
        (0..m.div_ceil(per))
            .into_par_iter()
            .for_each(|t| task(t * per..m.min((t + 1) * per), 0..col_panels));
    } else {
        let per = col_panels.div_ceil(threads);
        (0..col_panels.div_ceil(per))
            .into_par_iter()
            .for_each(|t| task(0..m, t * per..col_panels.min((t + 1) * per)));
    }
}

/// One GEMM call, as raw parts shared by its tasks.
#[derive(Clone, Copy)]
struct Job {
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
    bias: *const f32,
    isa: Isa,
}

// SAFETY: tasks write disjoint tiles of C and only read A, B and bias, which outlive the call.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    fn run(&self, threads: usize) {
        // Too little work to be worth a fork (m·n·k below 2¹⁷: about 2.6 · 10⁵ flops).
        let small = self.m * self.n * self.k < (1 << 17);
        let col_panels = self.n.div_ceil(NR);
        split_tasks(
            self.m,
            self.isa.mr(),
            col_panels,
            threads,
            small,
            |rows, panels| self.task(rows, panels),
        );
    }

    /// Rows `rows` × column panels `panels` of C.
    fn task(&self, rows: std::ops::Range<usize>, panels: std::ops::Range<usize>) {
        let mr = self.isa.mr();
        let k = self.k;
        if k == 0 {
            self.scale_only(rows, panels);
            return;
        }
        let k_blocks = k.div_ceil(KC);
        let kc_max = k.div_ceil(k_blocks);
        let mc_max = MC.div_ceil(mr) * mr;
        with_scratch(&PACK_A, AlignedBuf::new, |buf| {
            let direct = self.direct();
            let packed = if direct {
                &mut [][..]
            } else {
                buf.reserve(mc_max * kc_max)
            };
            let mut i0 = rows.start;
            while i0 < rows.end {
                let mc = mc_max.min(rows.end - i0);
                let mut p0 = 0;
                while p0 < k {
                    let kc = kc_max.min(k - p0);
                    if !direct {
                        self.pack_a(i0, mc, p0, kc, mr, packed);
                    }
                    let last = p0 + kc == k;
                    let tile = Tile {
                        kc,
                        lda: self.a_rs,
                        ldc: self.ldc,
                        alpha: self.alpha,
                        load_c: self.accumulate || p0 > 0,
                        bias: if last { self.bias } else { std::ptr::null() },
                    };
                    for jp in panels.clone() {
                        let cols = NR.min(self.n - jp * NR);
                        // SAFETY: panel jp of B has k * NR floats; we read rows p0..p0+kc.
                        let b = unsafe { self.b.add(jp * k * NR + p0 * NR) };
                        let mut ip = 0;
                        while ip < mc {
                            let r = mr.min(mc - ip);
                            // SAFETY: rows i0+ip .. +r and columns jp*NR .. +cols are inside C
                            // (asserted by `sgemm`) and owned by this task; the A micro-panel
                            // holds kc * mr floats.
                            unsafe {
                                let c = self.c.add((i0 + ip) * self.ldc + jp * NR);
                                let bias = if tile.bias.is_null() {
                                    tile.bias
                                } else {
                                    tile.bias.add(jp * NR)
                                };
                                let t = Tile { bias, ..tile };
                                let a = if direct {
                                    self.a.add((i0 + ip) * self.a_rs + p0)
                                } else {
                                    packed.as_ptr().add(ip * kc)
                                };
                                microkernel(self.isa, direct, r, cols, a, b, c, &t);
                            }
                            ip += mr;
                        }
                    }
                    p0 += kc;
                }
                i0 += mc;
            }
        });
    }

    /// Whether the kernel reads A in place instead of packing it: packing costs about as much
    /// as a few panels of FMAs per element, so it is skipped when there are at most two column
    /// panels, A's rows are contiguous and their stride is not a multiple of 4 KiB (rows that
    /// would all map to the same L1 sets).
    fn direct(&self) -> bool {
        self.isa == Isa::Avx512
            && self.a_cs == 1
            && self.n <= 2 * NR
            && !(self.a_rs * 4).is_multiple_of(4096)
    }

    /// Packs `A[i0..i0+mc][p0..p0+kc]` as micro-panels of `mr` rows, `[kc][mr]` each (rows past
    /// the end zero).
    fn pack_a(&self, i0: usize, mc: usize, p0: usize, kc: usize, mr: usize, dst: &mut [f32]) {
        let (rs, cs) = (self.a_rs, self.a_cs);
        for (ip, panel) in dst[..mc.div_ceil(mr) * mr * kc]
            .chunks_exact_mut(mr * kc)
            .enumerate()
        {
            let r = mr.min(mc - ip * mr);
            for i in 0..r {
                // SAFETY: row i0 + ip*mr + i < m and columns p0 .. p0+kc ≤ k (asserted by sgemm).
                let row = unsafe { self.a.add((i0 + ip * mr + i) * rs + p0 * cs) };
                if cs == 1 {
                    for p in 0..kc {
                        panel[p * mr + i] = unsafe { *row.add(p) };
                    }
                } else {
                    for p in 0..kc {
                        panel[p * mr + i] = unsafe { *row.add(p * cs) };
                    }
                }
            }
            for i in r..mr {
                for p in 0..kc {
                    panel[p * mr + i] = 0.0;
                }
            }
        }
    }

    /// k == 0: the product is zero; C = bias (+ C).
    fn scale_only(&self, rows: std::ops::Range<usize>, panels: std::ops::Range<usize>) {
        for i in rows {
            for j in panels.start * NR..self.n.min(panels.end * NR) {
                // SAFETY: inside C, owned by this task.
                unsafe {
                    let c = self.c.add(i * self.ldc + j);
                    let mut v = if self.bias.is_null() {
                        0.0
                    } else {
                        *self.bias.add(j)
                    };
                    if self.accumulate {
                        v += *c;
                    }
                    *c = v;
                }
            }
        }
    }
}

/// Parameters of one microkernel call besides the operands.
#[derive(Clone, Copy)]
struct Tile {
    kc: usize,
    /// Row stride of A when the kernel reads A in place (`direct`), unused otherwise.
    lda: usize,
    ldc: usize,
    alpha: f32,
    /// Add to C rather than overwrite.
    load_c: bool,
    /// Bias for this tile's first column, or null.
    bias: *const f32,
}

/// The `kc`-deep loop of the x86 microkernels over `R` rows: `step(acc, a, b)` adds one k step
/// (A advancing by `a_step` floats, B by one `NR`-wide row) into two vectors per row. With at
/// most two rows there are too few independent FMA chains to hide the FMA latency, so a second
/// set of accumulators takes the odd k and is merged with `add` at the end.
///
/// # Safety
/// `a` and `b` hold `kc` steps.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn k_loop<V: Copy, const R: usize>(
    kc: usize,
    a: *const f32,
    a_step: usize,
    b: *const f32,
    zero: V,
    step: impl Fn(&mut [[V; 2]; R], *const f32, *const f32),
    add: impl Fn(V, V) -> V,
) -> [[V; 2]; R] {
    let mut acc = [[zero; 2]; R];
    let (mut a, mut b) = (a, b);
    // SAFETY: every pointer stays within the kc steps the caller guarantees.
    unsafe {
        if R <= 2 {
            let mut odd = [[zero; 2]; R];
            for _ in 0..kc / 2 {
                step(&mut acc, a, b);
                step(&mut odd, a.add(a_step), b.add(NR));
                a = a.add(2 * a_step);
                b = b.add(2 * NR);
            }
            if kc % 2 == 1 {
                step(&mut acc, a, b);
            }
            for (acc, odd) in acc.iter_mut().zip(&odd) {
                acc[0] = add(acc[0], odd[0]);
                acc[1] = add(acc[1], odd[1]);
            }
        } else {
            for _ in 0..kc {
                step(&mut acc, a, b);
                a = a.add(a_step);
                b = b.add(NR);
            }
        }
    }
    acc
}

/// `C[r][cols] (+)= alpha · Apanel[kc][mr] · Bpanel[kc][NR] (+ bias)`; with `direct` (AVX-512
/// only) A is read in place: `r` rows of stride `t.lda`.
///
/// # Safety
/// `a` holds `kc * isa.mr()` floats (direct: `r` rows of `kc` floats, stride `t.lda`), `b` `kc`
/// rows of stride `NR` (64-byte aligned), `c` `r` rows of stride `t.ldc` with `cols` writable
/// floats each, `t.bias` (if not null) `cols` floats; `isa` runs on this CPU.
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn microkernel(
    isa: Isa,
    direct: bool,
    r: usize,
    cols: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    t: &Tile,
) {
    macro_rules! dispatch {
        ($kernel:ident; $($r:literal)*) => {
            match r {
                $($r => $kernel::<$r>(a, b, c, cols, t),)*
                _ => unreachable!(),
            }
        };
        ($kernel:ident, $g:expr; $($r:literal)*) => {
            match r {
                $($r => $kernel::<$r, $g>(a, b, c, cols, t),)*
                _ => unreachable!(),
            }
        };
    }
    // SAFETY: forwarded from the caller; `isa` was checked by `with_isa` or detected.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if direct => {
                dispatch!(kernel_avx512, true; 1 2 3 4 5 6 7 8 9 10 11 12 13 14)
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => dispatch!(kernel_avx512, false; 1 2 3 4 5 6 7 8 9 10 11 12 13 14),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                for half in 0..2 {
                    let off = half * 16;
                    if cols > off {
                        let t2 = Tile {
                            bias: if t.bias.is_null() {
                                t.bias
                            } else {
                                t.bias.add(off)
                            },
                            ..*t
                        };
                        let (b, c, cols) = (b.add(off), c.add(off), (cols - off).min(16));
                        match r {
                            1 => kernel_avx2::<1>(a, b, c, cols, &t2),
                            2 => kernel_avx2::<2>(a, b, c, cols, &t2),
                            3 => kernel_avx2::<3>(a, b, c, cols, &t2),
                            4 => kernel_avx2::<4>(a, b, c, cols, &t2),
                            5 => kernel_avx2::<5>(a, b, c, cols, &t2),
                            6 => kernel_avx2::<6>(a, b, c, cols, &t2),
                            _ => unreachable!(),
                        }
                    }
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512 | Isa::Avx2 => unreachable!(),
            Isa::Portable => dispatch!(kernel_portable; 1 2 3 4),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512<const R: usize, const DIRECT: bool>(
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    cols: usize,
    t: &Tile,
) {
    use std::arch::x86_64::*;
    // SAFETY: bounds per `microkernel`; masked loads/stores touch only the `cols` valid columns.
    unsafe {
        // C is needed only after the k loop: start fetching it now.
        for i in 0..R {
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * t.ldc).cast());
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * t.ldc + 16).cast());
        }
        // Packed A: micro-panel `[kc][MR_512]`; direct: rows of stride `lda`.
        let (a_rs, a_cs) = if DIRECT { (t.lda, 1) } else { (1, MR_512) };
        let step = |acc: &mut [[__m512; 2]; R], a: *const f32, b: *const f32| {
            let b0 = _mm512_load_ps(b);
            let b1 = _mm512_load_ps(b.add(16));
            for (i, acc) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*a.add(i * a_rs));
                acc[0] = _mm512_fmadd_ps(ai, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(ai, b1, acc[1]);
            }
        };
        let acc = k_loop(t.kc, a, a_cs, b, _mm512_setzero_ps(), step, |x, y| {
            _mm512_add_ps(x, y)
        });
        let masks: [__mmask16; 2] = [
            (((1u32 << cols.min(16)) - 1) & 0xffff) as __mmask16,
            (((1u32 << cols.saturating_sub(16)) - 1) & 0xffff) as __mmask16,
        ];
        let alpha = _mm512_set1_ps(t.alpha);
        let scale = t.alpha != 1.0;
        for (i, acc) in acc.iter().enumerate() {
            let row = c.add(i * t.ldc);
            for v in 0..2 {
                let mask = masks[v];
                let mut x = acc[v];
                if scale {
                    x = _mm512_mul_ps(x, alpha);
                }
                if !t.bias.is_null() {
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, t.bias.add(16 * v)));
                }
                if t.load_c {
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, row.add(16 * v)));
                }
                _mm512_mask_storeu_ps(row.add(16 * v), mask, x);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2<const R: usize>(
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    cols: usize,
    t: &Tile,
) {
    use std::arch::x86_64::*;
    // SAFETY: bounds per `microkernel`; masked loads/stores touch only the `cols` valid columns.
    unsafe {
        for i in 0..R {
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * t.ldc).cast());
        }
        let step = |acc: &mut [[__m256; 2]; R], a: *const f32, b: *const f32| {
            let b0 = _mm256_load_ps(b);
            let b1 = _mm256_load_ps(b.add(8));
            for (i, acc) in acc.iter_mut().enumerate() {
                let ai = _mm256_set1_ps(*a.add(i));
                acc[0] = _mm256_fmadd_ps(ai, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(ai, b1, acc[1]);
            }
        };
        let acc = k_loop(t.kc, a, MR_256, b, _mm256_setzero_ps(), step, |x, y| {
            _mm256_add_ps(x, y)
        });
        // Lane j of mask v is set (all ones) when column 8v + j < cols.
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let masks = [0, 8].map(|off| {
            let valid = _mm256_set1_epi32(cols.saturating_sub(off).min(8) as i32);
            _mm256_cmpgt_epi32(valid, lane)
        });
        let full = cols == 16;
        let alpha = _mm256_set1_ps(t.alpha);
        let scale = t.alpha != 1.0;
        for (i, acc) in acc.iter().enumerate() {
            let row = c.add(i * t.ldc);
            for v in 0..2 {
                let (mask, dst) = (masks[v], row.add(8 * v));
                let mut x = acc[v];
                if scale {
                    x = _mm256_mul_ps(x, alpha);
                }
                if !t.bias.is_null() {
                    x = _mm256_add_ps(x, _mm256_maskload_ps(t.bias.add(8 * v), mask));
                }
                if full {
                    if t.load_c {
                        x = _mm256_add_ps(x, _mm256_loadu_ps(dst));
                    }
                    _mm256_storeu_ps(dst, x);
                } else {
                    if t.load_c {
                        x = _mm256_add_ps(x, _mm256_maskload_ps(dst, mask));
                    }
                    _mm256_maskstore_ps(dst, mask, x);
                }
            }
        }
    }
}

unsafe fn kernel_portable<const R: usize>(
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    cols: usize,
    t: &Tile,
) {
    // SAFETY: bounds per `microkernel`.
    unsafe {
        let mut acc = [[0.0f32; NR]; R];
        for p in 0..t.kc {
            let bp = &*b.add(p * NR).cast::<[f32; NR]>();
            for (i, acc) in acc.iter_mut().enumerate() {
                let ai = *a.add(p * MR_PORTABLE + i);
                for j in 0..NR {
                    acc[j] += ai * bp[j];
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            let row = c.add(i * t.ldc);
            for (j, &v) in acc.iter().enumerate().take(cols) {
                let mut x = v * t.alpha;
                if !t.bias.is_null() {
                    x += *t.bias.add(j);
                }
                if t.load_c {
                    x += *row.add(j);
                }
                *row.add(j) = x;
            }
        }
    }
}

/// Peak fp32 FMA throughput of one thread, in GFLOP/s, from a register-only loop of
/// independent FMAs with the widest vectors this CPU has (for benchmarks).
pub fn fma_peak_gflops(duration: std::time::Duration) -> f64 {
    peak_rate(duration, || fma_burst(1 << 20))
}

/// Runs `burst` (which returns the operations it did and a value to keep alive) for about
/// `duration`, and returns its rate in G operations per second: the shared timing of the
/// instruction-loop peaks (FMA here, `vdpbf16ps` and `vpdpbusd` in the bf16 and int8 GEMMs).
pub(crate) fn peak_rate(
    duration: std::time::Duration,
    mut burst: impl FnMut() -> (u64, f32),
) -> f64 {
    let start = std::time::Instant::now();
    let mut ops = 0u64;
    let mut sink = 0.0f32;
    while start.elapsed() < duration {
        let (n, s) = burst();
        ops += n;
        sink += s;
    }
    std::hint::black_box(sink);
    ops as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// Runs `iters` rounds of 12 independent vector FMAs; returns (flops, a value to keep).
fn fma_burst(iters: u64) -> (u64, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if Isa::detected() == Isa::Avx512 {
            // SAFETY: AVX-512F detected.
            return unsafe { fma_burst_avx512(iters) };
        }
        if Isa::detected() == Isa::Avx2 {
            // SAFETY: AVX2 and FMA detected.
            return unsafe { fma_burst_avx2(iters) };
        }
    }
    let mut acc = [1.0f32; 32];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = *v * 0.999_999 + 1e-7;
        }
        std::hint::black_box(&mut acc);
    }
    (iters * 64, acc.iter().sum())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_burst_avx512(iters: u64) -> (u64, f32) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(1.0); 12];
    let x = _mm512_set1_ps(std::hint::black_box(0.999_999));
    let y = _mm512_set1_ps(std::hint::black_box(1e-7));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, x, y);
        }
    }
    let mut s = _mm512_setzero_ps();
    for a in acc {
        s = _mm512_add_ps(s, a);
    }
    (iters * 12 * 32, _mm512_reduce_add_ps(s))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_burst_avx2(iters: u64) -> (u64, f32) {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(1.0); 12];
    let x = _mm256_set1_ps(std::hint::black_box(0.999_999));
    let y = _mm256_set1_ps(std::hint::black_box(1e-7));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, x, y);
        }
    }
    let mut out = [0.0f32; 8];
    let mut s = _mm256_setzero_ps();
    for a in acc {
        s = _mm256_add_ps(s, a);
    }
    // SAFETY: `out` holds 8 floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    (iters * 12 * 16, out.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn fill(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Checks `sgemm` against an f64 reference for `C = alpha · A · wᵀ (+ bias) (+ C0)`: every
    /// element within 1e-5 of the magnitude its terms sum to.
    #[allow(clippy::too_many_arguments)]
    fn check(
        isa: Isa,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
        bias: bool,
        alpha: f32,
        par: Parallelism,
    ) {
        let lda = k + 3; // A rows padded, to exercise the stride
        let ldc = n + 5;
        let a = fill(m * lda, (m * 31 + n * 7 + k) as u64);
        let w = fill(n * k, (m + n * 13 + k * 5) as u64 + 1);
        let bias_v = fill(n, 99);
        let c0 = fill(m * ldc, 7);
        let packed = PackedB::from_rows(&w, n, k);
        let mut c = c0.clone();
        with_isa(isa, || {
            sgemm(
                m,
                MatRef {
                    data: &a,
                    rs: lda,
                    cs: 1,
                },
                &packed,
                &mut c,
                ldc,
                Epilogue {
                    alpha,
                    accumulate,
                    bias: bias.then_some(&bias_v[..]),
                },
                par,
            )
        });
        for i in 0..m {
            for j in 0..ldc {
                let got = c[i * ldc + j];
                if j >= n {
                    assert_eq!(got, c0[i * ldc + j], "wrote outside C at ({i},{j})");
                    continue;
                }
                let (mut want, mut mag) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let t = a[i * lda + p] as f64 * w[j * k + p] as f64;
                    want += t;
                    mag += t.abs();
                }
                want *= alpha as f64;
                mag *= (alpha as f64).abs();
                if bias {
                    want += bias_v[j] as f64;
                    mag += (bias_v[j] as f64).abs();
                }
                if accumulate {
                    want += c0[i * ldc + j] as f64;
                    mag += (c0[i * ldc + j] as f64).abs();
                }
                let err = (got as f64 - want).abs();
                assert!(
                    err <= 1e-5 * mag.max(1e-30),
                    "{isa:?} m={m} n={n} k={k} acc={accumulate} ({i},{j}): {got} vs {want} (scale {mag})"
                );
            }
        }
    }

    fn isas() -> Vec<Isa> {
        [Isa::Avx512, Isa::Avx2, Isa::Portable]
            .into_iter()
            .filter(|i| i.supported())
            .collect()
    }

    #[test]
    fn odd_shapes_all_kernels() {
        let shapes = [
            (1, 1, 1),
            (1, 1, 7),
            (1, 33, 5),
            (2, 1, 9),
            (3, 5, 1),
            (13, 31, 17),
            (14, 32, 16),
            (15, 33, 191),
            (29, 65, 193),
            (7, 100, 385),
            (57, 47, 64),
            (337, 70, 30),
            (5, 512, 384),
        ];
        for isa in isas() {
            for &(m, n, k) in &shapes {
                for accumulate in [false, true] {
                    check(isa, m, n, k, accumulate, false, 1.0, Parallelism::None);
                }
                check(isa, m, n, k, true, true, 0.5, Parallelism::Rayon(2));
                check(isa, m, n, k, false, true, 1.0, Parallelism::Rayon(3));
            }
        }
    }

    #[test]
    fn encoder_shapes() {
        // tiny (d = 384) and base (d = 512) at T = 1500: qkv, fc1, fc2; decoder-like few rows.
        for isa in isas() {
            for &(m, n, k) in &[(1500, 1152, 384), (1500, 512, 2048), (3, 1536, 512)] {
                check(isa, m, n, k, true, true, 1.0, Parallelism::Rayon(2));
            }
        }
        check(
            Isa::detected(),
            1500,
            2048,
            512,
            false,
            true,
            1.0,
            Parallelism::Rayon(2),
        );
        check(
            Isa::detected(),
            1500,
            1536,
            512,
            false,
            false,
            1.0,
            Parallelism::None,
        );
    }

    #[test]
    fn strided_matches_reference() {
        // Attention-like: scores = q · kᵀ (B transposed, strided) and out = p · v (B row-major).
        let (t, d, dh) = (203, 96, 16);
        let qkv = fill(t * 3 * d, 5);
        for isa in isas() {
            let mut s = vec![0.0f32; t * t];
            with_isa(isa, || {
                sgemm_strided(
                    t,
                    t,
                    dh,
                    &mut s,
                    t,
                    MatRef {
                        data: &qkv[dh..],
                        rs: 3 * d,
                        cs: 1,
                    },
                    MatRef {
                        data: &qkv[d + dh..],
                        rs: 1,
                        cs: 3 * d,
                    },
                    0.25,
                    false,
                    Parallelism::Rayon(2),
                )
            });
            for i in 0..t {
                for j in 0..t {
                    let want: f64 = (0..dh)
                        .map(|p| {
                            qkv[i * 3 * d + dh + p] as f64 * qkv[j * 3 * d + d + dh + p] as f64
                        })
                        .sum::<f64>()
                        * 0.25;
                    assert!(
                        (s[i * t + j] as f64 - want).abs() < 1e-5,
                        "{isa:?} scores ({i},{j})"
                    );
                }
            }
            let mut out = fill(t * d, 3);
            let before = out.clone();
            with_isa(isa, || {
                sgemm_strided(
                    t,
                    dh,
                    t,
                    &mut out[dh..],
                    d,
                    MatRef {
                        data: &s,
                        rs: t,
                        cs: 1,
                    },
                    MatRef {
                        data: &qkv[2 * d + dh..],
                        rs: 3 * d,
                        cs: 1,
                    },
                    1.0,
                    true,
                    Parallelism::None,
                )
            });
            for i in 0..t {
                for j in 0..d {
                    let got = out[i * d + j] as f64;
                    if !(dh..2 * dh).contains(&j) {
                        assert_eq!(got as f32, before[i * d + j]);
                        continue;
                    }
                    let jj = j - dh;
                    let (mut want, mut mag) =
                        (before[i * d + j] as f64, before[i * d + j].abs() as f64);
                    for p in 0..t {
                        let x = s[i * t + p] as f64 * qkv[p * 3 * d + 2 * d + dh + jj] as f64;
                        want += x;
                        mag += x.abs();
                    }
                    assert!((got - want).abs() <= 1e-5 * mag, "{isa:?} pv ({i},{j})");
                }
            }
        }
    }

    #[test]
    fn k_zero_and_override() {
        let packed = PackedB::from_rows(&[], 3, 0);
        let mut c = vec![1.0f32; 6];
        let bias = [1.0, 2.0, 3.0];
        sgemm(
            2,
            MatRef {
                data: &[],
                rs: 0,
                cs: 1,
            },
            &packed,
            &mut c,
            3,
            Epilogue {
                alpha: 1.0,
                accumulate: true,
                bias: Some(&bias),
            },
            Parallelism::None,
        );
        assert_eq!(c, [2.0, 3.0, 4.0, 2.0, 3.0, 4.0]);
        let outer = current_isa();
        with_isa(Isa::Portable, || assert_eq!(current_isa(), Isa::Portable));
        assert_eq!(current_isa(), outer);
        assert!(Isa::detected().supported());
        let w: Vec<f32> = (0..5 * 3).map(|i| i as f32).collect();
        let p = PackedB::from_rows(&w, 5, 3);
        assert_eq!((p.n(), p.k()), (5, 3));
        assert_eq!(p.get(2, 4), w[4 * 3 + 2]);
    }
}
