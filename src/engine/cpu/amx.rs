//! bf16 GEMM on Intel AMX tiles (`tdpbf16ps`), for the encoder with `ComputeType::Bf16`.
//!
//! Computes `C[m][n] = alpha · A[m][k] · B[k][n] (+ bias[n]) (+ C)` like [`sgemm::sgemm`], with
//! `A` (f32, converted on the fly) and `B` (a [`PackedBf16`], packed once) rounded to bf16 (round
//! to nearest even) and the products accumulated in f32. A bf16 × bf16 product is exact in f32,
//! so the result is an f32 GEMM on bf16-rounded inputs up to the order of accumulation.
//!
//! Two backends compute the same numbers:
//! - [`Backend::Amx`]: `B` in the tile layout `tdpbf16ps` reads (VNNI pairs: each 64-byte tile
//!   row holds, for 16 columns, the two values of consecutive `k`), zero padded to multiples of
//!   32 in `k` and `n`. Each task converts its rows of `A` into 16 × 32 tiles in a thread-local
//!   buffer, then runs a 32 × 32 microkernel (4 accumulator tiles, 2 A and 2 B tiles per
//!   32-deep step) over the whole depth; the accumulators go through a 4 KiB f32 scratch to the
//!   AVX-512 epilogue (alpha, bias, accumulate, masked at the edges).
//! - [`Backend::Emulated`], where the CPU (or the kernel) has no AMX, or `WHISPERNPU_NO_AMX` is
//!   set: the f32 [`sgemm`](super::sgemm) kernels on bf16-rounded weights and activations. The
//!   same bf16 inputs, so the same results up to f32 summation order, at f32 speed.
//!
//! AMX needs the process to ask Linux for the tile data state once (`arch_prctl(
//! ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), done by [`Backend::detected`] before any tile
//! instruction runs; the tile configuration is per thread, so every task loads it first.
//! AMX intrinsics are not stable in Rust: the tile instructions are written with `asm!`.

use std::cell::RefCell;
use std::sync::OnceLock;

use gemm::Parallelism;
use rayon::prelude::*;

use super::sgemm::{self, Epilogue, MatRef, PackedB, threads_of};

/// Depth of one tile step: a 64-byte tile row holds 32 bf16.
const KB: usize = 32;
/// Rows (and columns) of the microkernel's C block: two 16-row tiles by two 16-column tiles.
const MB: usize = 32;
/// bf16 values per tile (16 rows × 32).
const TILE: usize = 16 * KB;
/// Bytes of `A` tiles a task converts at once (kept in L2).
const A_BLOCK_BYTES: usize = 768 << 10;

/// f32 → bf16 bits, rounding to nearest even (NaN stays a quiet NaN, overflow gives ±inf).
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        ((b >> 16) | 0x40) as u16
    } else {
        (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
    }
}

/// `x` rounded to the nearest bf16 (ties to even), as f32.
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits((to_bf16(x) as u32) << 16)
}

/// How the bf16 products are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// AMX tiles (`tdpbf16ps`).
    Amx,
    /// The f32 kernels on bf16-rounded operands.
    Emulated,
}

impl Backend {
    /// AMX when the CPU has AMX-TILE and AMX-BF16 (and AVX-512F, for the epilogue), Linux grants
    /// the tile data state, and `WHISPERNPU_NO_AMX` is unset (or `0`); `Emulated` otherwise.
    /// Detected once per process.
    pub fn detected() -> Backend {
        static DETECTED: OnceLock<Backend> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let disabled = std::env::var_os("WHISPERNPU_NO_AMX").is_some_and(|v| v != "0");
            if !disabled && amx_usable() {
                Backend::Amx
            } else {
                Backend::Emulated
            }
        })
    }

    /// Whether this process can run the backend.
    pub fn supported(self) -> bool {
        match self {
            Backend::Emulated => true,
            Backend::Amx => amx_usable(),
        }
    }
}

/// CPUID reports AMX-TILE and AMX-BF16, the CPU has AVX-512F, and the kernel granted this
/// process the tile data state (asked once).
fn amx_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            use std::arch::x86_64::{__cpuid_count, __get_cpuid_max};
            let (max_leaf, _) = __get_cpuid_max(0);
            if max_leaf < 7 || !is_x86_feature_detected!("avx512f") {
                return false;
            }
            let edx = __cpuid_count(7, 0).edx;
            let (amx_tile, amx_bf16) = (edx & (1 << 24) != 0, edx & (1 << 22) != 0);
            amx_tile && amx_bf16 && request_tile_data()
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: permission for this process (all its
/// threads) to use the AMX tile data state; without it the first tile instruction faults.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_data() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: a plain system call; it reads no memory of ours and clobbers rcx and r11.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

/// One 64-byte tile row: 32 bf16.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct TileRow([u16; KB]);

const ZERO_ROW: TileRow = TileRow([0; KB]);

/// 64-byte aligned bf16 storage that grows and never shrinks.
struct TileBuf {
    rows: Vec<TileRow>,
}

impl TileBuf {
    const fn new() -> Self {
        Self { rows: Vec::new() }
    }

    /// At least `rows` tile rows (contents unspecified).
    fn reserve(&mut self, rows: usize) -> &mut [TileRow] {
        if self.rows.len() < rows {
            self.rows.resize(rows, ZERO_ROW);
        }
        &mut self.rows[..rows]
    }
}

/// The `B` operand (`k × n`) rounded to bf16, in the layout of its [`Backend`]: for AMX, panels
/// of 32 columns, each a sequence of 32-deep steps of two 16 × 32 tiles (columns 0–15, 16–31 of
/// the panel; tile row `r`, entries `2c`, `2c + 1` = `B[2r][c]`, `B[2r + 1][c]`); emulated, a
/// [`PackedB`] of the rounded values.
pub struct PackedBf16 {
    n: usize,
    k: usize,
    backend: Backend,
    tiles: TileBuf,
    f32: PackedB,
}

impl PackedBf16 {
    /// An empty operand for `backend`, for [`pack_from`](Self::pack_from) to fill.
    pub fn empty(backend: Backend) -> Self {
        assert!(
            backend.supported(),
            "this CPU cannot run the {backend:?} backend"
        );
        Self {
            n: 0,
            k: 0,
            backend,
            tiles: TileBuf::new(),
            f32: PackedB::default(),
        }
    }

    /// Packs the weight matrix `w[n][k]` (row-major, the `Linear` layout) as `B = wᵀ` for the
    /// detected backend.
    pub fn from_rows(w: &[f32], n: usize, k: usize) -> Self {
        Self::from_rows_with(Backend::detected(), w, n, k)
    }

    /// [`from_rows`](Self::from_rows) for a given backend.
    pub fn from_rows_with(backend: Backend, w: &[f32], n: usize, k: usize) -> Self {
        assert!(w.len() >= n * k);
        let mut p = Self::empty(backend);
        p.pack_from(
            MatRef {
                data: w,
                rs: 1,
                cs: k,
            },
            k,
            n,
        );
        p
    }

    /// Packs `B[p][j] = b.data[p * b.rs + j * b.cs]` (`k × n`), rounded to bf16, reusing this
    /// operand's buffer.
    pub fn pack_from(&mut self, b: MatRef<'_>, k: usize, n: usize) {
        assert!(
            k == 0 || n == 0 || b.data.len() > (k - 1) * b.rs + (n - 1) * b.cs,
            "B too small"
        );
        self.n = n;
        self.k = k;
        match self.backend {
            Backend::Amx => pack_b_tiles(&mut self.tiles, b, k, n),
            Backend::Emulated => {
                self.f32.pack_from(b, k, n);
                self.f32.map_in_place(round_bf16);
            }
        }
    }

    /// Columns (`n`).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Depth (`k`).
    pub fn k(&self) -> usize {
        self.k
    }

    /// The backend the operand is packed for.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `B[p][j]` (bf16-rounded).
    pub fn get(&self, p: usize, j: usize) -> f32 {
        assert!(p < self.k && j < self.n);
        match self.backend {
            Backend::Amx => {
                let (row, idx) = tile_index(p, j, self.k.div_ceil(KB));
                f32::from_bits((self.tiles.rows[row].0[idx] as u32) << 16)
            }
            Backend::Emulated => self.f32.get(p, j),
        }
    }
}

impl Default for PackedBf16 {
    /// An empty operand for the detected backend.
    fn default() -> Self {
        Self::empty(Backend::detected())
    }
}

/// Tile row and entry of `B[p][j]` in the AMX layout (`kb` = 32-deep steps).
#[inline(always)]
fn tile_index(p: usize, j: usize, kb: usize) -> (usize, usize) {
    let row = (((j / MB) * kb + p / KB) * 2 + (j % MB) / 16) * 16 + (p % KB) / 2;
    (row, (j % 16) * 2 + p % 2)
}

/// Packs `B[p][j] = b[p * rs + j * cs]` (`k × n`) into the AMX tile layout.
fn pack_b_tiles(dst: &mut TileBuf, b: MatRef<'_>, k: usize, n: usize) {
    let kb = k.div_ceil(KB);
    let panels = n.div_ceil(MB);
    let rows = dst.reserve(panels * kb * 2 * 16);
    if !k.is_multiple_of(KB) || !n.is_multiple_of(MB) {
        rows.fill(ZERO_ROW);
    }
    let (data, rs, cs) = (b.data, b.rs, b.cs);
    if cs == 1 && rs != 1 {
        // Rows of B contiguous: each tile row interleaves 16 columns of rows 2r and 2r + 1.
        for p in (0..k).step_by(2) {
            let r0 = &data[p * rs..][..n];
            let r1 = (p + 1 < k).then(|| &data[(p + 1) * rs..][..n]);
            for j0 in (0..n).step_by(16) {
                let cols = 16.min(n - j0);
                let (row, _) = tile_index(p, j0, kb);
                let out = &mut rows[row].0;
                for c in 0..cols {
                    out[2 * c] = to_bf16(r0[j0 + c]);
                    out[2 * c + 1] = r1.map_or(0, |r1| to_bf16(r1[j0 + c]));
                }
            }
        }
    } else {
        // Columns of B contiguous when rs == 1 (weights `W[n][k]`, keys as `Kᵀ`).
        for j in 0..n {
            for p in 0..k {
                let (row, idx) = tile_index(p, j, kb);
                rows[row].0[idx] = to_bf16(data[p * rs + j * cs]);
            }
        }
    }
}

thread_local! {
    /// `A` tiles of the tasks this thread runs.
    static A_TILES: RefCell<TileBuf> = const { RefCell::new(TileBuf::new()) };
    /// `A` rounded to bf16 (as f32) for the emulated backend.
    static A_ROUNDED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `C[m][n] = alpha · A[m][k] · B (+ bias) (+ C)` in bf16 (see the module doc), `C` row stride
/// `ldc`, `n`, `k` from `b`; the same contract as [`sgemm::sgemm`].
pub fn gemm(
    m: usize,
    a: MatRef<'_>,
    b: &PackedBf16,
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
    match b.backend {
        Backend::Emulated => gemm_emulated(m, a, &b.f32, c, ldc, ep, par),
        Backend::Amx => {
            let job = Job {
                m,
                n,
                k,
                a: a.data.as_ptr(),
                a_rs: a.rs,
                a_cs: a.cs,
                b: b.tiles.rows.as_ptr().cast(),
                c: c.as_mut_ptr(),
                ldc,
                alpha: ep.alpha,
                accumulate: ep.accumulate,
                bias: ep.bias.map_or(std::ptr::null(), |b| b.as_ptr()),
            };
            job.run(threads_of(par));
        }
    }
}

/// The emulated backend: `A` rounded into a thread-local buffer, then the f32 kernel.
fn gemm_emulated(
    m: usize,
    a: MatRef<'_>,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue<'_>,
    par: Parallelism,
) {
    let k = b.k();
    A_ROUNDED.with(|buf| {
        let mut own;
        let mut guard = buf.try_borrow_mut();
        let buf: &mut Vec<f32> = match guard.as_deref_mut() {
            Ok(b) => b,
            Err(_) => {
                own = Vec::new();
                &mut own
            }
        };
        if buf.len() < m * k {
            buf.resize(m * k, 0.0);
        }
        let rounded = &mut buf[..m * k];
        if k > 0 {
            let round_row = |(i, row): (usize, &mut [f32])| {
                for (p, v) in row.iter_mut().enumerate() {
                    *v = round_bf16(a.data[i * a.rs + p * a.cs]);
                }
            };
            if threads_of(par) > 1 && m * k >= 1 << 16 {
                rounded.par_chunks_mut(k).enumerate().for_each(round_row);
            } else {
                rounded.chunks_mut(k).enumerate().for_each(round_row);
            }
        }
        let a = MatRef {
            data: rounded,
            rs: k,
            cs: 1,
        };
        sgemm::sgemm(m, a, b, c, ldc, ep, par);
    });
}

/// One AMX GEMM call, as raw parts shared by its tasks.
#[derive(Clone, Copy)]
struct Job {
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    /// Tile layout of [`PackedBf16`].
    b: *const u16,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
    bias: *const f32,
}

// SAFETY: tasks write disjoint blocks of C and only read A, B and bias, which outlive the call.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    fn run(&self, threads: usize) {
        let row_panels = self.m.div_ceil(MB);
        let col_panels = self.n.div_ceil(MB);
        // Too little work to be worth a fork.
        let small = self.m * self.n * self.k < (1 << 20);
        if threads <= 1 || small {
            self.task(0..self.m, 0..col_panels);
        } else if row_panels >= 2 * threads {
            let per = row_panels.div_ceil(threads) * MB;
            let tasks = self.m.div_ceil(per);
            (0..tasks).into_par_iter().for_each(|t| {
                self.task(t * per..self.m.min((t + 1) * per), 0..col_panels);
            });
        } else {
            let per = col_panels.div_ceil(threads);
            let tasks = col_panels.div_ceil(per);
            (0..tasks).into_par_iter().for_each(|t| {
                self.task(0..self.m, t * per..col_panels.min((t + 1) * per));
            });
        }
    }

    /// Rows `rows` × column panels `panels` of C.
    fn task(&self, rows: std::ops::Range<usize>, panels: std::ops::Range<usize>) {
        if self.k == 0 {
            self.scale_only(rows, panels);
            return;
        }
        let kb = self.k.div_ceil(KB);
        // Rows of A converted at once: a multiple of 32 holding at most A_BLOCK_BYTES.
        let mc_max = (A_BLOCK_BYTES / (kb * KB * 2) / MB * MB).max(MB);
        A_TILES.with(|buf| {
            let mut own;
            let mut guard = buf.try_borrow_mut();
            let buf: &mut TileBuf = match guard.as_deref_mut() {
                Ok(b) => b,
                Err(_) => {
                    own = TileBuf::new();
                    &mut own
                }
            };
            let a_tiles = buf.reserve(mc_max.min(rows.len().next_multiple_of(MB)) * kb);
            // SAFETY: AMX is usable (the operand was packed for it) and so is AVX-512F.
            unsafe {
                configure_tiles();
                let mut i0 = rows.start;
                while i0 < rows.end {
                    let mc = mc_max.min(rows.end - i0);
                    self.pack_a(i0, mc, kb, a_tiles);
                    self.block(i0, mc, kb, a_tiles, panels.clone());
                    i0 += mc;
                }
            }
        });
    }

    /// C rows `i0 .. i0 + mc` × `panels`, A tiles of those rows in `a_tiles`.
    ///
    /// # Safety
    /// Tiles configured on this thread; AVX-512F; rows and panels inside C, owned by the task.
    #[cfg(target_arch = "x86_64")]
    unsafe fn block(
        &self,
        i0: usize,
        mc: usize,
        kb: usize,
        a_tiles: &[TileRow],
        panels: std::ops::Range<usize>,
    ) {
        let mut acc = Acc([0.0; MB * MB]);
        for jp in panels {
            let cols = MB.min(self.n - jp * MB);
            // SAFETY: panel jp holds kb steps of two tiles.
            let b = unsafe { self.b.add(jp * kb * 2 * TILE) };
            for ip in (0..mc).step_by(MB) {
                let rows = MB.min(mc - ip);
                let a0 = a_tiles[(ip / 16) * kb * 16..].as_ptr().cast::<u16>();
                // SAFETY: A tiles of rows ip .. ip + 32 (zero padded) and B panel jp both hold
                // kb steps; C rows/columns in range (see `gemm`'s asserts).
                unsafe {
                    kernel_32x32(a0, a0.add(kb * TILE), b, kb, acc.0.as_mut_ptr());
                    let c = self.c.add((i0 + ip) * self.ldc + jp * MB);
                    let bias = if self.bias.is_null() {
                        self.bias
                    } else {
                        self.bias.add(jp * MB)
                    };
                    epilogue(
                        &acc,
                        rows,
                        cols,
                        c,
                        self.ldc,
                        self.alpha,
                        bias,
                        self.accumulate,
                    );
                }
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn block(&self, _: usize, _: usize, _: usize, _: &[TileRow], _: std::ops::Range<usize>) {
        unreachable!("AMX backend on a non-x86_64 target")
    }

    /// Converts rows `i0 .. i0 + mc` of A to bf16 tiles: 16-row blocks of `kb` tiles each, rows
    /// up to the next multiple of 32 and depth up to `32 kb` zero.
    fn pack_a(&self, i0: usize, mc: usize, kb: usize, dst: &mut [TileRow]) {
        let k = self.k;
        for ii in 0..mc.next_multiple_of(MB) {
            let base = (ii / 16) * kb * 16 + ii % 16;
            if ii >= mc {
                for s in 0..kb {
                    dst[base + s * 16] = ZERO_ROW;
                }
                continue;
            }
            // SAFETY: row i0 + ii < m, columns < k (asserted by `gemm`).
            let row = unsafe { self.a.add((i0 + ii) * self.a_rs) };
            if self.a_cs == 1 {
                for s in 0..kb {
                    let len = KB.min(k - s * KB);
                    // SAFETY: `len` floats of the row from column 32 s.
                    unsafe { convert_row(row.add(s * KB), len, &mut dst[base + s * 16]) };
                }
            } else {
                for s in 0..kb {
                    let out = &mut dst[base + s * 16].0;
                    for (p, o) in out.iter_mut().enumerate() {
                        let col = s * KB + p;
                        // SAFETY: column col < k of row i0 + ii.
                        *o = if col < k {
                            to_bf16(unsafe { *row.add(col * self.a_cs) })
                        } else {
                            0
                        };
                    }
                }
            }
        }
    }

    /// k == 0: the product is zero; C = bias (+ C).
    fn scale_only(&self, rows: std::ops::Range<usize>, panels: std::ops::Range<usize>) {
        for i in rows {
            for j in panels.start * MB..self.n.min(panels.end * MB) {
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

/// The microkernel's 32 × 32 f32 accumulators, row-major, as stored from the tiles.
#[repr(C, align(64))]
struct Acc([f32; MB * MB]);

/// Loads the tile configuration of the microkernel on this thread: palette 1, all eight tiles
/// 16 rows × 64 bytes.
///
/// # Safety
/// AMX usable in this process.
#[cfg(target_arch = "x86_64")]
unsafe fn configure_tiles() {
    #[repr(C, align(64))]
    struct Config([u8; 64]);
    let mut cfg = Config([0; 64]);
    cfg.0[0] = 1;
    for t in 0..8 {
        cfg.0[16 + 2 * t] = 64;
        cfg.0[48 + t] = 16;
    }
    // SAFETY: a valid palette-1 configuration; AMX usable (caller).
    unsafe {
        std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn configure_tiles() {
    unreachable!("AMX backend on a non-x86_64 target")
}

/// `acc[32][32] = A · B` over `kb` 32-deep steps: `a0`, `a1` the tiles of rows 0–15 and 16–31
/// (`kb` consecutive 1 KiB tiles each), `b` a panel (`kb` steps of two consecutive tiles).
///
/// # Safety
/// Tiles configured as by [`configure_tiles`]; the pointers hold `kb` steps; `kb >= 1`;
/// `acc` is 64-byte aligned with 1024 floats.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn kernel_32x32(a0: *const u16, a1: *const u16, b: *const u16, kb: usize, acc: *mut f32) {
    // SAFETY: per the contract; tmm0–3 accumulate, tmm4–5 hold A, tmm6–7 hold B.
    unsafe {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a0} + {s64}*1]",
            "tileloadd tmm6, [{b} + {s64}*1]",
            "tileloadd tmm7, [{b} + {s64}*1 + 1024]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm5, [{a1} + {s64}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 1024",
            "add {a1}, 1024",
            "add {b}, 2048",
            "dec {kb}",
            "jnz 2b",
            "tilestored [{c} + {s128}*1], tmm0",
            "tilestored [{c} + {s128}*1 + 64], tmm1",
            "tilestored [{c} + {s128}*1 + 2048], tmm2",
            "tilestored [{c} + {s128}*1 + 2112], tmm3",
            a0 = inout(reg) a0 => _,
            a1 = inout(reg) a1 => _,
            b = inout(reg) b => _,
            kb = inout(reg) kb => _,
            c = in(reg) acc,
            s64 = in(reg) 64usize,
            s128 = in(reg) 128usize,
            options(nostack),
        );
    }
}

/// `C[rows][cols] = alpha · acc (+ bias) (+ C)`, for the valid part of a 32 × 32 block.
///
/// # Safety
/// AVX-512F; `c` holds `rows` rows of `cols` floats at stride `ldc`; `bias` null or `cols` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn epilogue(
    acc: &Acc,
    rows: usize,
    cols: usize,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    bias: *const f32,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let masks: [__mmask16; 2] = [0, 16].map(|off| {
        let valid = cols.saturating_sub(off).min(16);
        ((1u32 << valid) - 1) as __mmask16
    });
    let scale = alpha != 1.0;
    let alpha = _mm512_set1_ps(alpha);
    // SAFETY: per the contract; masked loads and stores touch only the valid columns.
    unsafe {
        let bias_v = [0, 1].map(|v| {
            if bias.is_null() {
                _mm512_setzero_ps()
            } else {
                _mm512_maskz_loadu_ps(masks[v], bias.add(16 * v))
            }
        });
        for i in 0..rows {
            let row = c.add(i * ldc);
            for v in 0..2 {
                let mut x = _mm512_load_ps(acc.0.as_ptr().add(i * MB + 16 * v));
                if scale {
                    x = _mm512_mul_ps(x, alpha);
                }
                x = _mm512_add_ps(x, bias_v[v]);
                if accumulate {
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(masks[v], row.add(16 * v)));
                }
                _mm512_mask_storeu_ps(row.add(16 * v), masks[v], x);
            }
        }
    }
}

/// `len` (≤ 32) floats from `src` rounded to bf16 into a tile row, the rest zero.
///
/// # Safety
/// `src` holds `len` floats; AVX-512F (the AMX backend implies it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn convert_row(src: *const f32, len: usize, dst: &mut TileRow) {
    use std::arch::x86_64::*;
    let half = |x: __m512| -> __m256i {
        let bits = _mm512_castps_si512(x);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(
            bits,
            _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)),
        ));
        // NaN: keep it, quiet.
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(0x40));
        _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, nan, quiet))
    };
    let m0 = ((1u32 << len.min(16)) - 1) as __mmask16;
    let m1 = ((1u32 << len.saturating_sub(16)) - 1) as __mmask16;
    // SAFETY: masked loads read only `len` floats; `dst` is 64 aligned bytes.
    unsafe {
        let lo = half(_mm512_maskz_loadu_ps(m0, src));
        let hi = half(_mm512_maskz_loadu_ps(m1, src.add(16)));
        let out = dst.0.as_mut_ptr().cast::<__m256i>();
        _mm256_store_si256(out, lo);
        _mm256_store_si256(out.add(1), hi);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn convert_row(src: *const f32, len: usize, dst: &mut TileRow) {
    for (p, o) in dst.0.iter_mut().enumerate() {
        // SAFETY: `src` holds `len` floats.
        *o = if p < len {
            to_bf16(unsafe { *src.add(p) })
        } else {
            0
        };
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn epilogue(
    _: &Acc,
    _: usize,
    _: usize,
    _: *mut f32,
    _: usize,
    _: f32,
    _: *const f32,
    _: bool,
) {
    unreachable!("AMX backend on a non-x86_64 target")
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

    fn backends() -> Vec<Backend> {
        [Backend::Amx, Backend::Emulated]
            .into_iter()
            .filter(|b| b.supported())
            .collect()
    }

    #[test]
    fn rounding_is_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3 · 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6).
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0 + 1e-6), 1.0 + 1.0 / 128.0);
        assert_eq!(round_bf16(-2.5), -2.5);
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
        assert!(round_bf16(f32::NAN).is_nan());
        assert_eq!(round_bf16(f32::NEG_INFINITY), f32::NEG_INFINITY);
        // The vector conversion agrees with the scalar one, tails zero.
        #[cfg(target_arch = "x86_64")]
        if Backend::Amx.supported() {
            let mut src = fill(32, 11);
            src[3] = f32::NAN;
            src[4] = 1.0 + 1.0 / 256.0;
            src[5] = f32::MAX;
            for len in [32, 31, 17, 16, 5, 1] {
                let mut row = ZERO_ROW;
                row.0.fill(0xffff);
                // SAFETY: AVX-512F (implied by AMX); src holds 32 floats.
                unsafe { convert_row(src.as_ptr(), len, &mut row) };
                for (p, (&got, &x)) in row.0.iter().zip(&src).enumerate() {
                    let want = if p < len { to_bf16(x) } else { 0 };
                    assert_eq!(got, want, "len {len} p {p}");
                }
            }
        }
    }

    /// Checks `gemm` against an f64 reference on bf16-rounded inputs for
    /// `C = alpha · A · wᵀ (+ bias) (+ C0)`: every element within 1e-5 of the magnitude its
    /// terms sum to (only the order of accumulation differs).
    #[allow(clippy::too_many_arguments)]
    fn check(
        backend: Backend,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
        bias: bool,
        alpha: f32,
        par: Parallelism,
    ) {
        let lda = k + 3;
        let ldc = n + 5;
        let a = fill(m * lda, (m * 31 + n * 7 + k) as u64);
        let w = fill(n * k, (m + n * 13 + k * 5) as u64 + 1);
        let bias_v = fill(n, 99);
        let c0 = fill(m * ldc, 7);
        let packed = PackedBf16::from_rows_with(backend, &w, n, k);
        assert_eq!((packed.n(), packed.k(), packed.backend()), (n, k, backend));
        let mut c = c0.clone();
        gemm(
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
        );
        for i in 0..m {
            for j in 0..ldc {
                let got = c[i * ldc + j];
                if j >= n {
                    assert_eq!(got, c0[i * ldc + j], "wrote outside C at ({i},{j})");
                    continue;
                }
                let (mut want, mut mag) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let t = round_bf16(a[i * lda + p]) as f64 * round_bf16(w[j * k + p]) as f64;
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
                    "{backend:?} m={m} n={n} k={k} acc={accumulate} ({i},{j}): {got} vs {want} (scale {mag})"
                );
            }
        }
    }

    #[test]
    fn packed_layout_roundtrips() {
        let (n, k) = (37, 45);
        let w = fill(n * k, 3);
        for backend in backends() {
            let p = PackedBf16::from_rows_with(backend, &w, n, k);
            for j in 0..n {
                for q in 0..k {
                    assert_eq!(
                        p.get(q, j),
                        round_bf16(w[j * k + q]),
                        "{backend:?} ({q},{j})"
                    );
                }
            }
            // Row-contiguous source (B = V, rows of stride 50).
            let v = fill(k * 50, 4);
            let mut pv = PackedBf16::empty(backend);
            pv.pack_from(
                MatRef {
                    data: &v,
                    rs: 50,
                    cs: 1,
                },
                k,
                n,
            );
            for q in 0..k {
                for j in 0..n {
                    assert_eq!(
                        pv.get(q, j),
                        round_bf16(v[q * 50 + j]),
                        "{backend:?} V ({q},{j})"
                    );
                }
            }
        }
    }

    #[test]
    fn odd_shapes_match_reference() {
        let shapes = [
            (1, 1, 1),
            (1, 1, 7),
            (1, 33, 5),
            (2, 1, 9),
            (3, 5, 1),
            (13, 31, 17),
            (16, 16, 32),
            (32, 32, 32),
            (15, 33, 191),
            (29, 65, 193),
            (7, 100, 385),
            (57, 47, 64),
            (337, 70, 30),
            (5, 512, 384),
            (100, 64, 1500),
        ];
        for backend in backends() {
            for &(m, n, k) in &shapes {
                for accumulate in [false, true] {
                    check(backend, m, n, k, accumulate, false, 1.0, Parallelism::None);
                }
                check(backend, m, n, k, true, true, 0.5, Parallelism::Rayon(2));
                check(backend, m, n, k, false, true, 1.0, Parallelism::Rayon(3));
            }
        }
    }

    #[test]
    fn encoder_shapes_match_reference() {
        for backend in backends() {
            for &(m, n, k) in &[(1500, 1152, 384), (1500, 512, 2048), (3000, 512, 240)] {
                check(backend, m, n, k, true, true, 1.0, Parallelism::Rayon(2));
            }
        }
    }

    #[test]
    fn strided_a_and_k_zero() {
        // A read with a column stride (A = Mᵀ for a row-major M).
        let (m, n, k) = (41, 35, 70);
        let mt = fill(k * m, 5);
        let w = fill(n * k, 6);
        for backend in backends() {
            let packed = PackedBf16::from_rows_with(backend, &w, n, k);
            let mut c = vec![0.0f32; m * n];
            gemm(
                m,
                MatRef {
                    data: &mt,
                    rs: 1,
                    cs: m,
                },
                &packed,
                &mut c,
                n,
                Epilogue::default(),
                Parallelism::Rayon(2),
            );
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| round_bf16(mt[p * m + i]) as f64 * round_bf16(w[j * k + p]) as f64)
                        .sum();
                    assert!(
                        (c[i * n + j] as f64 - want).abs() < 1e-5,
                        "{backend:?} ({i},{j})"
                    );
                }
            }
            let empty = PackedBf16::from_rows_with(backend, &[], 3, 0);
            let mut c = vec![1.0f32; 6];
            gemm(
                2,
                MatRef {
                    data: &[],
                    rs: 0,
                    cs: 1,
                },
                &empty,
                &mut c,
                3,
                Epilogue {
                    alpha: 1.0,
                    accumulate: true,
                    bias: Some(&[1.0, 2.0, 3.0]),
                },
                Parallelism::None,
            );
            assert_eq!(c, [2.0, 3.0, 4.0, 2.0, 3.0, 4.0]);
        }
    }

    #[test]
    fn backends_agree() {
        // Both backends compute on the same bf16 inputs: equal up to f32 summation order.
        if !Backend::Amx.supported() {
            return;
        }
        let (m, n, k) = (97, 130, 300);
        let a = fill(m * k, 8);
        let w = fill(n * k, 9);
        let run = |backend| {
            let packed = PackedBf16::from_rows_with(backend, &w, n, k);
            let mut c = vec![0.0f32; m * n];
            gemm(
                m,
                MatRef {
                    data: &a,
                    rs: k,
                    cs: 1,
                },
                &packed,
                &mut c,
                n,
                Epilogue::default(),
                Parallelism::None,
            );
            c
        };
        let (amx, emu) = (run(Backend::Amx), run(Backend::Emulated));
        for (x, y) in amx.iter().zip(&emu) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }
}
