//! bf16 GEMM and attention on Intel AMX tiles (`tdpbf16ps`), for the encoder with
//! `ComputeType::Bf16`.
//!
//! [`gemm()`] computes `C[m][n] = alpha · A[m][k] · B[k][n] (+ bias[n]) (+ C)` like
//! [`sgemm::sgemm`], with `A` (f32, converted on the fly) and `B` (a [`PackedBf16`], packed once)
//! rounded to bf16 (round to nearest even) and the products accumulated in f32. A bf16 × bf16
//! product is exact in f32, so the result is an f32 GEMM on bf16-rounded inputs up to the order
//! of accumulation. [`gemm_act`] fuses GELU into the store; [`attention`] runs one head's
//! `softmax(q Kᵀ) V` with Q, K, V and the probabilities in bf16, scores and softmax in f32.
//!
//! Three backends compute nearly the same numbers:
//! - [`Backend::Amx`]: `B` in the tile layout `tdpbf16ps` reads (VNNI pairs: each 64-byte tile
//!   row holds, for 16 columns, the two values of consecutive `k`), zero padded to multiples of
//!   32 in `k` and `n`. Each task converts its rows of `A` into 16 × 32 tiles in a thread-local
//!   buffer (`vcvtne2ps2bf16`, which also flushes subnormals, as `tdpbf16ps` treats them), then
//!   runs a 32 × 32 microkernel (4 accumulator tiles, 2 A and 2 B tiles per 32-deep step) over
//!   slices of 256 in depth, B's slice in L1 while A's stream from L2, partial sums in f32
//!   blocks; the AVX-512 epilogue applies alpha, bias, GELU and accumulate, masked at the edges.
//! - [`Backend::Avx512Bf16`], on AMD CPUs with AVX512_BF16 and no AMX (Zen 4, Zen 5): the
//!   same packed operands and tasks as AMX, with the 32 × 32 microkernel written in `vdpbf16ps`
//!   (a B tile row is one vector of 16 columns × 2 depths; A pairs broadcast; 8 rows of C in 16
//!   accumulators at a time). Twice the flops per instruction of an f32 FMA: about 1.9× the f32
//!   kernel on the encoder's products on Zen 4.
//! - [`Backend::Emulated`] elsewhere (no AMX usable or `WHISPERNPU_NO_AMX` set to anything but
//!   `0`, and no AMD AVX512_BF16 or `WHISPERNPU_NO_AVX512BF16` set): the f32 [`sgemm`] kernels on bf16-rounded weights
//!   and activations, at about f32 speed. The same bf16 inputs, so each product agrees with the
//!   AMX one up to f32 summation order (GELU and the exponentials within 1e-6). Through a whole
//!   encoder such differences occasionally round a value to the other neighbouring bf16 and
//!   grow, so the two backends' encoder outputs differ by about half as much as either differs
//!   from f32 (measured on jfk.wav, base: 0.3 % against 0.56 % relative RMS).
//!
//! AMX needs the process to ask Linux for the tile data state once (`arch_prctl(
//! ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), done by [`Backend::detected`] before any tile
//! instruction runs; the tile configuration is per thread, so every task loads it first.
//! AMX intrinsics are not stable in Rust: the tile instructions are written with `asm!`.

use std::cell::RefCell;
use std::sync::OnceLock;

use gemm::Parallelism;
use rayon::prelude::*;

use super::math::{self, simd_dispatch};
use super::sgemm::{self, Epilogue, MatRef, PackedB, threads_of};

/// Depth of one tile step: a 64-byte tile row holds 32 bf16.
const KB: usize = 32;
/// Rows (and columns) of the microkernel's C block: two 16-row tiles by two 16-column tiles.
pub(super) const MB: usize = 32;
/// bf16 values per tile (16 rows × 32).
const TILE: usize = 16 * KB;
/// Bytes of `A` tiles a task converts at once (kept in L2).
const A_BLOCK_BYTES: usize = 768 << 10;
/// Depth steps (of 32) per slice of K.
const KC_STEPS: usize = 8;

/// f32 → bf16 bits, rounding to nearest even (NaN stays a quiet NaN, overflow gives ±inf).
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    bf16_bits(x.to_bits()) as u16
}

/// `x` rounded to the nearest bf16 (ties to even), as f32.
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits(bf16_bits(x.to_bits()) << 16)
}

/// [`to_bf16`] on the bits of an f32, branch-free so loops over it vectorise.
#[inline(always)]
fn bf16_bits(b: u32) -> u32 {
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    if nan { (b >> 16) | 0x40 } else { rounded }
}

simd_dispatch! {
    /// `dst[i] = round_bf16(src[i])`.
    fn round_slice(src: &[f32], dst: &mut [f32]) => round_slice_body
}

#[inline(always)]
fn round_slice_body(src: &[f32], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = round_bf16(s);
    }
}

simd_dispatch! {
    /// One row of the emulated attention: `e_j = round_bf16(exp(scale · (s_j - max)))` in
    /// place; returns the sum of the `e_j`.
    fn softmax_round_row(row: &mut [f32], scale: f32) -> f32 => softmax_round_row_body
}

#[inline(always)]
fn softmax_round_row_body(row: &mut [f32], scale: f32) -> f32 {
    const L: usize = 16;
    let mut m = [f32::NEG_INFINITY; L];
    let (chunks, tail) = row.as_chunks::<L>();
    for c in chunks {
        for i in 0..L {
            m[i] = m[i].max(c[i]);
        }
    }
    let max = m
        .iter()
        .chain(tail)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let e = |x: f32| round_bf16(math::exp_nonpositive((x - max) * scale));
    let mut sums = [0.0f32; L];
    let (chunks, tail) = row.as_chunks_mut::<L>();
    for c in chunks {
        for i in 0..L {
            c[i] = e(c[i]);
            sums[i] += c[i];
        }
    }
    let mut sum = sums.iter().sum::<f32>();
    for x in tail {
        *x = e(*x);
        sum += *x;
    }
    sum
}

/// How the bf16 products are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// AMX tiles (`tdpbf16ps`).
    Amx,
    /// AVX-512 `vdpbf16ps` (AVX512_BF16, e.g. AMD Zen 4 and 5) on the AMX tile layouts.
    Avx512Bf16,
    /// The f32 kernels on bf16-rounded operands.
    Emulated,
}

impl Backend {
    /// AMX when the CPU has AMX-TILE and AMX-BF16 (and AVX-512F/BW and AVX512-BF16, which every
    /// AMX CPU has, for conversions and epilogues), Linux grants the tile data state, and
    /// `WHISPERNPU_NO_AMX` is unset (or `0`); else `Avx512Bf16` when an AMD CPU has AVX-512F/BW
    /// and AVX512-BF16 and `WHISPERNPU_NO_AVX512BF16` is unset (or `0`); `Emulated` otherwise.
    /// Only AMD's: on AMD Zen 4 `vdpbf16ps` runs at twice the f32 FMA rate (a GEMM at 1.9× the
    /// f32 kernel's speed), while on the Intel Xeon measured (Emerald Rapids) it ran at 0.6×
    /// the f32 FMAs: there the emulated backend (f32 speed) is the faster fallback. Detected
    /// once per process.
    pub fn detected() -> Backend {
        static DETECTED: OnceLock<Backend> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let off = |var: &str| std::env::var_os(var).is_some_and(|v| v != "0");
            if !off("WHISPERNPU_NO_AMX") && amx_usable() {
                Backend::Amx
            } else if !off("WHISPERNPU_NO_AVX512BF16") && avx512bf16_usable() && is_amd() {
                Backend::Avx512Bf16
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
            Backend::Avx512Bf16 => avx512bf16_usable(),
        }
    }
}

/// The CPU's vendor is AMD (CPUID leaf 0: "AuthenticAMD").
fn is_amd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let id = std::arch::x86_64::__cpuid(0);
        let mut v = [0u8; 12];
        v[..4].copy_from_slice(&id.ebx.to_le_bytes());
        v[4..8].copy_from_slice(&id.edx.to_le_bytes());
        v[8..].copy_from_slice(&id.ecx.to_le_bytes());
        &v == b"AuthenticAMD"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The CPU family of an AMD CPU (CPUID leaf 1: base family plus extended family, as
/// `/proc/cpuinfo`'s `cpu family`: 25 for Zen 3 and 4, 26 for Zen 5); `None` on other vendors.
pub fn amd_family() -> Option<u32> {
    if !is_amd() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let eax = std::arch::x86_64::__cpuid(1).eax;
        let base = (eax >> 8) & 0xf;
        let extended = (eax >> 20) & 0xff;
        Some(if base == 0xf { base + extended } else { base })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// The `vdpbf16ps` peak of one thread in GFLOP/s (a loop of 12 independent `vdpbf16ps`, 64
/// flops each, for about `duration`), the yardstick of the [`Backend::Avx512Bf16`] GEMM as
/// [`sgemm::fma_peak_gflops`] is of the f32 kernels; `None` without AVX512_BF16.
pub fn dpbf16_peak_gflops(duration: std::time::Duration) -> Option<f64> {
    if !avx512bf16_usable() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx512f,avx512bf16")]
        fn burst(iters: u64) -> f32 {
            let mut acc = [_mm512_set1_ps(1.0); 12];
            let one = _mm512_cvtne2ps_pbh(
                _mm512_set1_ps(std::hint::black_box(1e-3)),
                _mm512_set1_ps(std::hint::black_box(1e-3)),
            );
            for _ in 0..iters {
                for a in acc.iter_mut() {
                    *a = _mm512_dpbf16_ps(*a, one, one);
                }
            }
            acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
        }
        let iters = 1 << 18;
        // SAFETY: AVX-512F and AVX512-BF16 checked above.
        Some(sgemm::peak_rate(duration, || {
            (iters * 12 * 64, unsafe { burst(iters) })
        }))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = duration;
        None
    }
}

/// The CPU has AVX-512F/BW and AVX512-BF16 (`vdpbf16ps`, `vcvtne2ps2bf16`).
fn avx512bf16_usable() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// CPUID reports AMX-TILE and AMX-BF16, the CPU has AVX-512F/BW and AVX512-BF16, and the
/// kernel granted this process the tile data state (asked once).
fn amx_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            use std::arch::x86_64::{__cpuid_count, __get_cpuid_max};
            let (max_leaf, _) = __get_cpuid_max(0);
            if max_leaf < 7 || !avx512bf16_usable() {
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

/// Tile rows of a packed `k × n` operand: per 32-column panel, per 32-deep step, two 16-row
/// tiles.
fn tile_rows(k: usize, n: usize) -> usize {
    n.div_ceil(MB) * k.div_ceil(KB) * 2 * 16
}

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

    /// [`empty`](Self::empty) with the tile rows of a `k × n` operand already resident, so that
    /// packing one later writes no fresh pages (see [`super::resident`]).
    pub fn for_shape(backend: Backend, k: usize, n: usize) -> Self {
        let mut me = Self::empty(backend);
        if backend != Backend::Emulated {
            me.tiles.reserve(tile_rows(k, n));
        }
        me
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
            // SAFETY: AMX usable (checked at construction), so are the AVX-512 extensions; `b`
            // checked above.
            Backend::Amx | Backend::Avx512Bf16 => unsafe { pack_b_tiles(&mut self.tiles, b, k, n) },
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
            Backend::Amx | Backend::Avx512Bf16 => {
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
///
/// # Safety
/// `b` holds the `k × n` elements; AVX-512F, AVX-512BW and AVX512-BF16 (implied by the AMX
/// backend).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_b_tiles(dst: &mut TileBuf, b: MatRef<'_>, k: usize, n: usize) {
    use std::arch::x86_64::*;
    let kb = k.div_ceil(KB);
    let rows = dst.reserve(tile_rows(k, n));
    if !k.is_multiple_of(KB) || !n.is_multiple_of(MB) {
        rows.fill(ZERO_ROW);
    }
    let (data, rs, cs) = (b.data.as_ptr(), b.rs, b.cs);
    let rows = rows.as_mut_ptr();
    // SAFETY: reads stay inside the k × n elements (caller), writes inside the panels.
    unsafe {
        if cs == 1 && rs != 1 {
            // Rows of B contiguous (V): a tile row interleaves 16 columns of rows 2r, 2r + 1.
            let idx = _mm512_set_epi16(
                31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5,
                20, 4, 19, 3, 18, 2, 17, 1, 16, 0,
            );
            for p in (0..k).step_by(2) {
                let r0 = data.add(p * rs);
                let r1 = (p + 1 < k).then(|| data.add((p + 1) * rs));
                for j0 in (0..n).step_by(16) {
                    let mask = ((1u32 << (n - j0).min(16)) - 1) as __mmask16;
                    let lo = _mm512_maskz_loadu_ps(mask, r0.add(j0));
                    let hi = r1.map_or(_mm512_setzero_ps(), |r1| {
                        _mm512_maskz_loadu_ps(mask, r1.add(j0))
                    });
                    let bf = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
                    let (row, _) = tile_index(p, j0, kb);
                    _mm512_store_si512(rows.add(row).cast(), _mm512_permutexvar_epi16(idx, bf));
                }
            }
        } else if rs == 1 {
            // Columns of B contiguous (weights `W[n][k]`, keys as `Kᵀ`): 32 values of a column
            // are 16 pairs, one 32-bit word in each of the 16 rows of a tile.
            let mut tmp = ZERO_ROW;
            for j in 0..n {
                let col = data.add(j * cs);
                for s in 0..kb {
                    convert_row(col.add(s * KB), KB.min(k - s * KB), &mut tmp);
                    let words = tmp.0.as_ptr().cast::<u32>();
                    let (base, _) = tile_index(s * KB, j, kb);
                    for r in 0..16 {
                        let dst = rows.add(base + r).cast::<u32>().add(j % 16);
                        dst.write(*words.add(r));
                    }
                }
            }
        } else {
            for j in 0..n {
                for p in 0..k {
                    let (row, idx) = tile_index(p, j, kb);
                    (*rows.add(row)).0[idx] = to_bf16(*data.add(p * rs + j * cs));
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_b_tiles(_: &mut TileBuf, _: MatRef<'_>, _: usize, _: usize) {
    unreachable!("AMX backend on a non-x86_64 target")
}

thread_local! {
    /// `A` tiles of the tasks this thread runs.
    static A_TILES: RefCell<TileBuf> = const { RefCell::new(TileBuf::new()) };
    /// Accumulator blocks of the tasks this thread runs.
    static ACC: std::cell::Cell<Vec<Acc>> = const { std::cell::Cell::new(Vec::new()) };
    /// `A` rounded to bf16 (as f32) for the emulated backend.
    static A_ROUNDED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A function applied to the product (after alpha and bias) before it is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activation {
    #[default]
    None,
    /// GELU, erf form: [`math::gelu`] (emulated backend: `math::gelu_inplace` on
    /// the product; AMX: a faster evaluation of the same formula, within a few ulp).
    Gelu,
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
    gemm_act(m, a, b, c, ldc, ep, Activation::None, par);
}

/// [`gemm()`] with `C = act(alpha · A · B + bias)` (`act` fused into the store; no accumulate
/// with an activation).
#[allow(clippy::too_many_arguments)]
pub fn gemm_act(
    m: usize,
    a: MatRef<'_>,
    b: &PackedBf16,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue<'_>,
    act: Activation,
    par: Parallelism,
) {
    assert!(
        act == Activation::None || !ep.accumulate,
        "an activation cannot be fused with accumulate"
    );
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
        Backend::Emulated => {
            gemm_emulated(m, a, &b.f32, c, ldc, ep, par);
            if act == Activation::Gelu {
                if ldc == n {
                    math::gelu_inplace(&mut c[..m * n]);
                } else {
                    c.chunks_mut(ldc)
                        .take(m)
                        .for_each(|row| math::gelu_inplace(&mut row[..n]));
                }
            }
        }
        backend @ (Backend::Amx | Backend::Avx512Bf16) => {
            let job = Job {
                backend,
                m,
                n,
                k,
                a: a.data.as_ptr(),
                a_rs: a.rs,
                a_cs: a.cs,
                b: b.tiles.rows.as_ptr().cast(),
                out: Out::new(c, ldc, ep, act),
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
    sgemm::with_scratch(&A_ROUNDED, Vec::new, |buf| {
        if buf.len() < m * k {
            buf.resize(m * k, 0.0);
        }
        let rounded = &mut buf[..m * k];
        if k > 0 {
            let round_row = |(i, row): (usize, &mut [f32])| {
                if a.cs == 1 {
                    round_slice(&a.data[i * a.rs..][..k], row);
                } else {
                    for (p, v) in row.iter_mut().enumerate() {
                        *v = round_bf16(a.data[i * a.rs + p * a.cs]);
                    }
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

/// Scratch of one thread's [`attention`] calls.
struct AttnScratch {
    /// AMX: query tiles (32 rows), probability tiles (32 rows × all keys).
    q: TileBuf,
    p: TileBuf,
    /// Scores (AMX: 32 rows; emulated: all rows of the call).
    s: Vec<Acc>,
    /// Per row: the sum of the (rounded) probabilities.
    sums: Vec<f32>,
}

thread_local! {
    static ATTN: RefCell<AttnScratch> = const {
        RefCell::new(AttnScratch {
            q: TileBuf::new(),
            p: TileBuf::new(),
            s: Vec::new(),
            sums: Vec::new(),
        })
    };
}

/// Single-head attention of `rows` queries on the calling thread:
/// `out[i][..dh] = softmax(scale · q_i · Kᵀ) · V`, with `kt` = `Kᵀ` (`dh × keys`) and `v`
/// (`keys × dh`) packed by [`PackedBf16::pack_from`] for the same backend, `q` rows of `dh`
/// values, `out` row stride `ldo`.
///
/// Q, K, V and the probabilities go through bf16; scores, softmax and sums stay f32. The
/// probabilities are rounded before normalisation (`e_j = exp(scale · (s_j - max))`, rounded to
/// bf16) and the output row is divided by the sum of the rounded `e_j`, so the weights applied
/// to V sum to one. AMX: per 32 queries, the scores go straight from the tiles to a scratch
/// block, the exponentials straight into bf16 tiles for `P · V`.
pub fn attention(
    q: MatRef<'_>,
    rows: usize,
    kt: &PackedBf16,
    v: &PackedBf16,
    scale: f32,
    out: &mut [f32],
    ldo: usize,
) {
    let (dh, keys) = (kt.k, kt.n);
    assert!(v.k == keys && v.n == dh, "K and V shapes differ");
    assert!(
        kt.backend == v.backend,
        "K and V packed for different backends"
    );
    if rows == 0 || dh == 0 {
        return;
    }
    assert!(keys > 0, "attention over no keys");
    assert!(
        ldo >= dh && out.len() >= (rows - 1) * ldo + dh,
        "out too small"
    );
    assert!(
        q.data.len() > (rows - 1) * q.rs + (dh - 1) * q.cs,
        "Q too small"
    );
    ATTN.with(|sc| {
        let mut sc = sc.borrow_mut();
        match kt.backend {
            // SAFETY: AMX usable (the operands were packed for it); shapes asserted above.
            backend @ (Backend::Amx | Backend::Avx512Bf16) => unsafe {
                attention_amx(backend, q, rows, kt, v, scale, out, ldo, &mut sc)
            },
            Backend::Emulated => attention_emulated(q, rows, kt, v, scale, out, ldo, &mut sc),
        }
    });
}

/// [`attention`] with the f32 kernels on bf16-rounded operands.
#[allow(clippy::too_many_arguments)]
fn attention_emulated(
    q: MatRef<'_>,
    rows: usize,
    kt: &PackedBf16,
    v: &PackedBf16,
    scale: f32,
    out: &mut [f32],
    ldo: usize,
    sc: &mut AttnScratch,
) {
    let (dh, keys) = (kt.k, kt.n);
    let len = rows * keys;
    if sc.s.len() * MB * MB < len {
        sc.s.resize(len.div_ceil(MB * MB), Acc([0.0; MB * MB]));
    }
    sc.sums.resize(rows, 0.0);
    // SAFETY: `Acc` is plain f32 without padding; `len` floats are inside the buffer.
    let s = unsafe { std::slice::from_raw_parts_mut(sc.s.as_mut_ptr().cast::<f32>(), len) };
    let none = Parallelism::None;
    gemm_emulated(rows, q, &kt.f32, s, keys, Epilogue::default(), none);
    for (row, sum) in s.chunks_exact_mut(keys).zip(sc.sums.iter_mut()) {
        *sum = softmax_round_row(row, scale);
    }
    let p = MatRef {
        data: s,
        rs: keys,
        cs: 1,
    };
    // P is already bf16-exact: straight to the f32 kernel.
    sgemm::sgemm(rows, p, &v.f32, out, ldo, Epilogue::default(), none);
    for (i, &sum) in sc.sums.iter().enumerate() {
        let inv = 1.0 / sum;
        out[i * ldo..i * ldo + dh]
            .iter_mut()
            .for_each(|o| *o *= inv);
    }
}

/// [`attention`] on the tile layouts (AMX tiles or `vdpbf16ps`), 32 queries at a time.
///
/// # Safety
/// `backend` (tiled) is usable; `kt`, `v` packed for it; shapes as asserted by [`attention`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_amx(
    backend: Backend,
    q: MatRef<'_>,
    rows: usize,
    kt: &PackedBf16,
    v: &PackedBf16,
    scale: f32,
    out: &mut [f32],
    ldo: usize,
    sc: &mut AttnScratch,
) {
    let (dh, keys) = (kt.k, kt.n);
    // Depth steps of Q · Kᵀ (over dh) and of P · V (over keys); key panels of Kᵀ = kbp.
    let (kbq, kbp) = (dh.div_ceil(KB), keys.div_ceil(KB));
    // Scores of 32 queries, block-major: key panel jp is a 32 × 32 block (so each tile store
    // writes 4 KiB of consecutive memory).
    let s_blocks = kbp;
    let q_tiles = sc.q.reserve(MB * kbq);
    let p_tiles = sc.p.reserve(MB * kbp);
    if sc.s.len() < s_blocks {
        sc.s.resize(s_blocks, Acc([0.0; MB * MB]));
    }
    let s = sc.s.as_mut_ptr().cast::<f32>();
    let mut sums = [0.0f32; MB];
    let mut acc = Acc([0.0; MB * MB]);
    let kt_tiles = kt.tiles.rows.as_ptr().cast::<u16>();
    let v_tiles = v.tiles.rows.as_ptr().cast::<u16>();
    // SAFETY: per the contract: every pointer below stays inside its buffer (tile counts from
    // the shapes), tiles are configured on this thread first.
    unsafe {
        if backend == Backend::Amx {
            configure_tiles();
        }
        for r0 in (0..rows).step_by(MB) {
            let r = MB.min(rows - r0);
            pack_a_tiles(
                q.data.as_ptr().add(r0 * q.rs),
                q.rs,
                q.cs,
                r,
                dh,
                kbq,
                q_tiles,
            );
            let q0 = q_tiles.as_ptr().cast::<u16>();
            for jp in 0..kbp {
                let b = kt_tiles.add(jp * kbq * 2 * TILE);
                kernel_32x32(
                    backend,
                    q0,
                    q0.add(kbq * TILE),
                    b,
                    kbq,
                    s.add(jp * MB * MB),
                    MB * 4,
                );
            }
            for (i, sum) in sums.iter_mut().enumerate().take(r) {
                let dst = p_tiles.as_mut_ptr().add((i / 16) * kbp * 16 + i % 16);
                *sum = softmax_row_to_tiles(s.add(i * MB), MB * MB, keys, scale, dst, kbp);
            }
            for i in r..MB {
                for c in 0..kbp {
                    p_tiles[(i / 16) * kbp * 16 + i % 16 + c * 16] = ZERO_ROW;
                }
            }
            let p0 = p_tiles.as_ptr().cast::<u16>();
            for jp in 0..dh.div_ceil(MB) {
                let b = v_tiles.add(jp * kbp * 2 * TILE);
                kernel_32x32(
                    backend,
                    p0,
                    p0.add(kbp * TILE),
                    b,
                    kbp,
                    acc.0.as_mut_ptr(),
                    MB * 4,
                );
                let cols = MB.min(dh - jp * MB);
                for (i, &sum) in sums.iter().enumerate().take(r) {
                    let inv = 1.0 / sum;
                    let src = &acc.0[i * MB..i * MB + cols];
                    let dst = &mut out[(r0 + i) * ldo + jp * MB..][..cols];
                    for (o, &x) in dst.iter_mut().zip(src) {
                        *o = x * inv;
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_amx(
    _: Backend,
    _: MatRef<'_>,
    _: usize,
    _: &PackedBf16,
    _: &PackedBf16,
    _: f32,
    _: &mut [f32],
    _: usize,
    _: &mut AttnScratch,
) {
    unreachable!("AMX backend on a non-x86_64 target")
}

/// One row of scores to probability tiles: `e_j = exp(scale · (s_j - max))` rounded to bf16 into
/// tile rows `dst`, `dst + 16`, ... (`chunks` of 32 keys, keys past `keys` zero); returns the sum
/// of the rounded `e_j`. The row is stored in chunks of 32 scores, `stride` floats apart.
///
/// # Safety
/// `s` holds the `chunks` chunks (scores past `keys` are ignored); `dst` holds the tile rows;
/// AVX-512F and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn softmax_row_to_tiles(
    s: *const f32,
    stride: usize,
    keys: usize,
    scale: f32,
    dst: *mut TileRow,
    chunks: usize,
) -> f32 {
    use std::arch::x86_64::*;
    let mask = |from: usize| -> __mmask16 {
        let valid = keys.saturating_sub(from).min(16);
        ((1u32 << valid) - 1) as __mmask16
    };
    // Scores j .. j + 16 (j a multiple of 16).
    let at = |j: usize| s.wrapping_add((j / KB) * stride + j % KB);
    // SAFETY: per the contract; masked loads read only the `keys` valid scores.
    unsafe {
        // Four independent maxima (a single chain would wait on vmaxps latency).
        let mut m = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
        let full = keys / 64 * 64;
        for j in (0..full).step_by(64) {
            for (u, m) in m.iter_mut().enumerate() {
                *m = _mm512_max_ps(*m, _mm512_loadu_ps(at(j + 16 * u)));
            }
        }
        for j in (full..keys).step_by(16) {
            m[0] = _mm512_max_ps(m[0], _mm512_mask_loadu_ps(m[0], mask(j), at(j)));
        }
        let m = _mm512_max_ps(_mm512_max_ps(m[0], m[1]), _mm512_max_ps(m[2], m[3]));
        // exp(scale (x - max)) = 2^y, y = x c - max c ≤ 0 with c = scale · log2(e): y = n + f,
        // n an integer, |f| ≤ 1/2, 2^f by its degree-5 Taylor polynomial (relative error below
        // 2.5e-6, far under bf16's 2^-9), times 2^n by vscalefps.
        let c = _mm512_set1_ps(scale * std::f32::consts::LOG2_E);
        let max_c = _mm512_mul_ps(_mm512_set1_ps(_mm512_reduce_max_ps(m)), c);
        // y ≥ -125 keeps 2^y normal (a subnormal result costs a microcode assist); as in
        // `math::exp_nonpositive`, which clamps at e^-87.
        let floor = _mm512_set1_ps(-125.0);
        let exp = |x: __m512| -> __m512 {
            let y = _mm512_max_ps(_mm512_fmsub_ps(x, c, max_c), floor);
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(y);
            let f = _mm512_sub_ps(y, n);
            let mut p = _mm512_set1_ps(1.333_355_8e-3);
            for k in [
                9.618_129e-3,
                5.550_411e-2,
                2.402_265e-1,
                std::f32::consts::LN_2,
                1.0,
            ] {
                p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(k));
            }
            _mm512_scalef_ps(p, n)
        };
        let hi_mask = _mm512_set1_epi32(0xffff_0000u32 as i32);
        let mut total = _mm512_setzero_ps();
        for ch in 0..chunks {
            let j = ch * KB;
            let (e0, e1) = if j + KB <= keys {
                (
                    exp(_mm512_loadu_ps(at(j))),
                    exp(_mm512_loadu_ps(at(j + 16))),
                )
            } else {
                let (m0, m1) = (mask(j), mask(j + 16));
                (
                    _mm512_maskz_mov_ps(m0, exp(_mm512_maskz_loadu_ps(m0, at(j)))),
                    _mm512_maskz_mov_ps(m1, exp(_mm512_maskz_loadu_ps(m1, at(j + 16)))),
                )
            };
            let bf = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(e1, e0));
            _mm512_store_si512(dst.add(ch * 16).cast(), bf);
            // The 32 rounded values as f32: even entries shifted up, odd entries masked.
            let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bf));
            let odd = _mm512_castsi512_ps(_mm512_and_si512(bf, hi_mask));
            total = _mm512_add_ps(total, _mm512_add_ps(even, odd));
        }
        _mm512_reduce_add_ps(total)
    }
}

/// One GEMM call on the tile layouts, as raw parts shared by its tasks.
#[derive(Clone, Copy)]
struct Job {
    /// Amx or Avx512Bf16.
    backend: Backend,
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    /// Tile layout of [`PackedBf16`].
    b: *const u16,
    out: Out,
}

// SAFETY: tasks write disjoint blocks of C and only read A, B and bias, which outlive the call.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    fn run(&self, threads: usize) {
        // Too little work to be worth a fork.
        let small = self.m * self.n * self.k < (1 << 20);
        let col_panels = self.n.div_ceil(MB);
        sgemm::split_tasks(self.m, MB, col_panels, threads, small, |rows, panels| {
            self.task(rows, panels)
        });
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
        sgemm::with_scratch(&A_TILES, TileBuf::new, |buf| {
            let a_tiles = buf.reserve(mc_max.min(rows.len().next_multiple_of(MB)) * kb);
            // SAFETY: the backend is usable (the operand was packed for it) and so is AVX-512F.
            unsafe {
                if self.backend == Backend::Amx {
                    configure_tiles();
                }
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
        // Depth slices of at most KC_STEPS steps: the panel's slice of B (16 KiB) stays in L1
        // while the row blocks' A slices stream from L2; partial sums wait in `acc` blocks.
        let slices = kb.div_ceil(KC_STEPS);
        let per = kb.div_ceil(slices);
        let mut acc = ACC.with(|a| a.take());
        acc.resize(mc.div_ceil(MB), Acc([0.0; MB * MB]));
        for jp in panels {
            let cols = MB.min(self.n - jp * MB);
            for s0 in (0..kb).step_by(per) {
                let steps = per.min(kb - s0);
                let last = s0 + steps == kb;
                // SAFETY: panel jp holds kb steps of two tiles.
                let b = unsafe { self.b.add((jp * kb + s0) * 2 * TILE) };
                for (ip, acc) in (0..mc).step_by(MB).zip(acc.iter_mut()) {
                    let a0 = a_tiles[(ip / 16) * kb * 16 + s0 * 16..]
                        .as_ptr()
                        .cast::<u16>();
                    // SAFETY: A tiles of rows ip .. ip + 32 (zero padded) and B panel jp both
                    // hold kb steps; C rows/columns in range (see `gemm`'s asserts).
                    unsafe {
                        let a1 = a0.add(kb * TILE);
                        let c = acc.0.as_mut_ptr();
                        kernel_32x32_from(self.backend, a0, a1, b, steps, c, MB * 4, s0 > 0);
                        if last {
                            self.out.store(acc, i0 + ip, MB.min(mc - ip), jp, cols);
                        }
                    }
                }
            }
        }
        ACC.with(|a| a.replace(acc));
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn block(&self, _: usize, _: usize, _: usize, _: &[TileRow], _: std::ops::Range<usize>) {
        unreachable!("AMX backend on a non-x86_64 target")
    }

    /// Converts rows `i0 .. i0 + mc` of A to bf16 tiles (see [`pack_a_tiles`]).
    fn pack_a(&self, i0: usize, mc: usize, kb: usize, dst: &mut [TileRow]) {
        // SAFETY: rows i0 .. i0 + mc < m and columns < k are inside A (asserted by `gemm`).
        unsafe {
            let a = self.a.add(i0 * self.a_rs);
            pack_a_tiles(a, self.a_rs, self.a_cs, mc, self.k, kb, dst);
        }
    }

    /// k == 0: the product is zero; C = bias (+ C).
    fn scale_only(&self, rows: std::ops::Range<usize>, panels: std::ops::Range<usize>) {
        for i in rows {
            for j in panels.start * MB..self.n.min(panels.end * MB) {
                // SAFETY: inside C, owned by this task.
                unsafe {
                    let out = &self.out;
                    let c = out.c.add(i * out.ldc + j);
                    let mut v = if out.bias.is_null() {
                        0.0
                    } else {
                        *out.bias.add(j)
                    };
                    if out.act == Activation::Gelu {
                        v = math::gelu(v);
                    }
                    if out.accumulate {
                        v += *c;
                    }
                    *c = v;
                }
            }
        }
    }
}

/// Converts `mc` rows of `A[i][p] = a[i * rs + p * cs]` (`k` columns) to bf16 tiles: 16-row
/// blocks of `kb` tiles each (tile row `i % 16` of tile `(i / 16) * kb + p / 32`), rows up to
/// the next multiple of 32 and depth up to `32 kb` zero.
///
/// # Safety
/// `a` holds the `mc × k` elements; `dst` holds `mc.next_multiple_of(32) * kb` rows; the AMX
/// backend is usable (AVX-512F, AVX512-BF16).
unsafe fn pack_a_tiles(
    a: *const f32,
    rs: usize,
    cs: usize,
    mc: usize,
    k: usize,
    kb: usize,
    dst: &mut [TileRow],
) {
    for ii in 0..mc.next_multiple_of(MB) {
        let base = (ii / 16) * kb * 16 + ii % 16;
        if ii >= mc {
            for s in 0..kb {
                dst[base + s * 16] = ZERO_ROW;
            }
            continue;
        }
        // SAFETY: row ii < mc of A (caller).
        let row = unsafe { a.add(ii * rs) };
        if cs == 1 {
            for s in 0..kb {
                let len = KB.min(k - s * KB);
                // SAFETY: `len` floats of the row from column 32 s; AVX-512 (caller).
                unsafe { convert_row(row.add(s * KB), len, &mut dst[base + s * 16]) };
            }
        } else {
            for s in 0..kb {
                let out = &mut dst[base + s * 16].0;
                for (p, o) in out.iter_mut().enumerate() {
                    let col = s * KB + p;
                    // SAFETY: column col < k of the row (caller).
                    *o = if col < k {
                        to_bf16(unsafe { *row.add(col * cs) })
                    } else {
                        0
                    };
                }
            }
        }
    }
}

/// The microkernel's 32 × 32 f32 accumulators, row-major, as stored from the tiles.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Acc(pub(super) [f32; MB * MB]);

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

/// `C[32][32] = A · B` over `kb` 32-deep steps: `a0`, `a1` the tiles of rows 0–15 and 16–31
/// (`kb` consecutive 1 KiB tiles each), `b` a panel (`kb` steps of two consecutive tiles); C
/// f32 with a row stride of `ldc` bytes.
///
/// # Safety
/// Tiles configured as by [`configure_tiles`]; the pointers hold `kb` steps; `kb >= 1`;
/// `c` holds 32 rows of 32 floats at stride `ldc` bytes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_32x32(
    backend: Backend,
    a0: *const u16,
    a1: *const u16,
    b: *const u16,
    kb: usize,
    c: *mut f32,
    ldc: usize,
) {
    // SAFETY: the caller's contract.
    unsafe { kernel_32x32_from(backend, a0, a1, b, kb, c, ldc, false) }
}

/// Where a GEMM's products go and how they are stored, `C = act(alpha · A · B + bias) (+ C)`:
/// the part of a call its tasks share, in the bf16 GEMM and the int8 one
/// ([`super::vnni::gemm`]).
#[derive(Clone, Copy)]
pub(super) struct Out {
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
    /// Null, or `n` values.
    bias: *const f32,
    act: Activation,
}

impl Out {
    pub(super) fn new(c: &mut [f32], ldc: usize, ep: Epilogue<'_>, act: Activation) -> Self {
        Self {
            c: c.as_mut_ptr(),
            ldc,
            alpha: ep.alpha,
            accumulate: ep.accumulate,
            bias: ep.bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
            act,
        }
    }

    /// Stores the finished block `acc` to C rows `i .. i + rows`, panel `jp` (`cols` columns).
    ///
    /// # Safety
    /// AVX-512F; those rows and columns inside C (the GEMM's asserts), owned by the caller's
    /// task.
    pub(super) unsafe fn store(
        &self,
        acc: &mut Acc,
        i: usize,
        rows: usize,
        jp: usize,
        cols: usize,
    ) {
        // SAFETY: C rows/columns in range, the bias has n values (caller).
        let (c, bias) = unsafe {
            let bias = if self.bias.is_null() {
                self.bias
            } else {
                self.bias.add(jp * MB)
            };
            (self.c.add(i * self.ldc + jp * MB), bias)
        };
        let store = Store {
            rows,
            cols,
            c,
            ldc: self.ldc,
            alpha: self.alpha,
            bias,
            accumulate: self.accumulate,
            gelu: self.act == Activation::Gelu,
        };
        // SAFETY: AVX-512F (caller); `store` describes C as its contract asks.
        unsafe { epilogue(acc, &store) };
    }
}

/// Where and how a 32 × 32 block of products is stored.
#[derive(Clone, Copy)]
struct Store {
    /// Valid rows and columns of the block.
    rows: usize,
    cols: usize,
    /// The block's first element in C, and C's row stride.
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    /// Null, or the block's `cols` bias values.
    bias: *const f32,
    accumulate: bool,
    gelu: bool,
}

/// `C[rows][cols] = act(alpha · acc + bias) (+ C)`, for the valid part of a 32 × 32 block.
///
/// # Safety
/// AVX-512F; the pointers of `st` valid as documented there.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn epilogue(acc: &mut Acc, st: &Store) {
    use std::arch::x86_64::*;
    let Store {
        rows,
        cols,
        c,
        ldc,
        mut alpha,
        mut bias,
        accumulate,
        gelu,
    } = *st;
    if gelu {
        // `math::gelu` (erf by Abramowitz–Stegun 7.1.26) with FMAs, a reciprocal estimate refined
        // by one Newton step instead of a division, and exp(-a²) as 2^y (degree-6 polynomial
        // for 2^f, |f| ≤ 1/2, and vscalefps): within a few ulp of `math::gelu`, twice as fast.
        let k = _mm512_set1_ps;
        let sign = _mm512_set1_epi32(i32::MIN);
        let gelu = |x: __m512| -> __m512 {
            let z = _mm512_mul_ps(x, k(std::f32::consts::FRAC_1_SQRT_2));
            let a = _mm512_abs_ps(z);
            let d = _mm512_fmadd_ps(a, k(0.327_591_1), k(1.0));
            let r = _mm512_rcp14_ps(d);
            let t = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, k(2.0)));
            let mut p = k(1.061_405_4);
            for c in [-1.453_152_1, 1.421_413_7, -0.284_496_74, 0.254_829_6] {
                p = _mm512_fmadd_ps(p, t, k(c));
            }
            p = _mm512_mul_ps(p, t);
            // Clamped so that no intermediate is subnormal (microcode assists cost ~100 cycles):
            // erf(a) is 1 in f32 long before a² log2(e) reaches 100.
            let y = _mm512_mul_ps(_mm512_mul_ps(a, a), k(-std::f32::consts::LOG2_E));
            let y = _mm512_max_ps(y, k(-100.0));
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(y);
            let f = _mm512_sub_ps(y, n);
            let mut q = k(1.535_336_2e-4);
            for c in [
                1.339_887_4e-3,
                9.618_437e-3,
                5.550_332_5e-2,
                2.402_264_8e-1,
                6.931_472e-1,
            ] {
                q = _mm512_fmadd_ps(q, f, k(c));
            }
            q = _mm512_fmadd_ps(q, f, k(1.0));
            let erf_abs = _mm512_fnmadd_ps(p, _mm512_scalef_ps(q, n), k(1.0));
            let z_sign = _mm512_and_si512(_mm512_castps_si512(z), sign);
            let erf = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(erf_abs), z_sign));
            let half = _mm512_mul_ps(x, k(0.5));
            _mm512_fmadd_ps(half, erf, half)
        };
        // SAFETY: `cols` bias values (caller).
        let b = [0, 16].map(|off| unsafe {
            let m = ((1u32 << cols.saturating_sub(off).min(16)) - 1) as __mmask16;
            if bias.is_null() {
                _mm512_setzero_ps()
            } else {
                _mm512_maskz_loadu_ps(m, bias.add(off))
            }
        });
        let al = k(alpha);
        for row in acc.0.chunks_exact_mut(MB).take(rows) {
            for (v, b) in b.iter().enumerate() {
                // SAFETY: 16 floats of the 64-byte aligned accumulator row.
                unsafe {
                    let p = row.as_mut_ptr().add(16 * v);
                    let x = _mm512_fmadd_ps(_mm512_load_ps(p), al, *b);
                    _mm512_store_ps(p, gelu(x));
                }
            }
        }
        (alpha, bias) = (1.0, std::ptr::null());
    }
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

/// [`kernel_32x32`], adding to C's previous contents when `load` (one loop for both), on
/// `backend` (Amx: tiles configured; Avx512Bf16: [`kernel_32x32_dpbf16`]).
///
/// # Safety
/// As for [`kernel_32x32`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_32x32_from(
    backend: Backend,
    a0: *const u16,
    a1: *const u16,
    b: *const u16,
    kb: usize,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    // SAFETY: the caller's contract; the backend is usable.
    unsafe {
        if backend == Backend::Amx {
            kernel_32x32_tiles(a0, a1, b, kb, c, ldc, load)
        } else {
            kernel_32x32_dpbf16(a0, a1, b, kb, c, ldc, load)
        }
    }
}

/// [`kernel_32x32_from`] with `vdpbf16ps`: the same tiles read as vectors. A tile row of B
/// (64 bytes) is one vector of 16 columns × a pair of depths, exactly the operand
/// `vdpbf16ps` multiplies with a broadcast pair of A (`C[i][c] += A[i][2r] B[2r][c] + A[i][2r+1]
/// B[2r+1][c]`, as `tdpbf16ps` computes). Eight rows of C at a time (16 accumulators), the B
/// step re-read from L1 for each eight.
///
/// # Safety
/// As for [`kernel_32x32`] without the tile configuration; AVX-512F and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel_32x32_dpbf16(
    a0: *const u16,
    a1: *const u16,
    b: *const u16,
    kb: usize,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    use std::arch::x86_64::*;
    const G: usize = 8;
    let bh = |v: __m512i| -> __m512bh {
        // SAFETY: same size, any bits are a valid bf16 vector.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    };
    // SAFETY (whole body): A tiles of rows 0–15 (a0) and 16–31 (a1) and the B panel hold `kb`
    // steps (1 KiB per A tile, 2 KiB per B step); C holds 32 rows of 32 floats, `ldc` bytes
    // apart.
    unsafe {
        for g in 0..MB / G {
            let a = if g < 2 { a0 } else { a1 }.add((g % 2) * G * KB);
            let crow = |i: usize| c.cast::<u8>().add((g * G + i) * ldc).cast::<f32>();
            let mut acc = [[_mm512_setzero_ps(); 2]; G];
            if load {
                for (i, acc) in acc.iter_mut().enumerate() {
                    acc[0] = _mm512_loadu_ps(crow(i));
                    acc[1] = _mm512_loadu_ps(crow(i).add(16));
                }
            }
            for s in 0..kb {
                let bt = b.add(s * 2 * TILE);
                let at = a.add(s * TILE).cast::<i32>();
                for r in 0..16 {
                    let b0 = bh(_mm512_load_si512(bt.add(r * KB).cast()));
                    let b1 = bh(_mm512_load_si512(bt.add(TILE + r * KB).cast()));
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let av = bh(_mm512_set1_epi32(*at.add(i * 16 + r)));
                        acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                        acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(crow(i), acc[0]);
                _mm512_storeu_ps(crow(i).add(16), acc[1]);
            }
        }
    }
}

/// [`kernel_32x32_from`] on AMX tiles.
///
/// # Safety
/// As for [`kernel_32x32`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn kernel_32x32_tiles(
    a0: *const u16,
    a1: *const u16,
    b: *const u16,
    kb: usize,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    // SAFETY: per the contract (C read as well as written when `load`); tmm0–3 accumulate,
    // tmm4–5 hold A, tmm6–7 hold B. Tile registers keep their contents between the two asm
    // blocks (the compiler never uses them).
    unsafe {
        let c2 = c.cast::<u8>().add(16 * ldc);
        if load {
            std::arch::asm!(
                "tileloadd tmm0, [{c} + {ldc}*1]",
                "tileloadd tmm1, [{c} + {ldc}*1 + 64]",
                "tileloadd tmm2, [{c2} + {ldc}*1]",
                "tileloadd tmm3, [{c2} + {ldc}*1 + 64]",
                c = in(reg) c,
                c2 = in(reg) c2,
                ldc = in(reg) ldc,
                options(nostack, readonly),
            );
        } else {
            std::arch::asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem),
            );
        }
        std::arch::asm!(
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
            "tilestored [{c} + {ldc}*1], tmm0",
            "tilestored [{c} + {ldc}*1 + 64], tmm1",
            "tilestored [{c2} + {ldc}*1], tmm2",
            "tilestored [{c2} + {ldc}*1 + 64], tmm3",
            a0 = inout(reg) a0 => _,
            a1 = inout(reg) a1 => _,
            b = inout(reg) b => _,
            kb = inout(reg) kb => _,
            c = in(reg) c,
            c2 = in(reg) c2,
            s64 = in(reg) 64usize,
            ldc = in(reg) ldc,
            options(nostack),
        );
    }
}

/// `len` (≤ 32) floats from `src` rounded to bf16 into a tile row, the rest zero.
/// (`vcvtne2ps2bf16`: round to nearest even like [`to_bf16`], but denormals flushed to zero, as
/// `tdpbf16ps` would treat them anyway.)
///
/// # Safety
/// `src` holds `len` floats; AVX-512F and AVX512-BF16 (the AMX backend implies them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn convert_row(src: *const f32, len: usize, dst: &mut TileRow) {
    use std::arch::x86_64::*;
    let m0 = ((1u32 << len.min(16)) - 1) as __mmask16;
    let m1 = ((1u32 << len.saturating_sub(16)) - 1) as __mmask16;
    // SAFETY: masked loads read only `len` floats; `dst` is 64 aligned bytes.
    unsafe {
        let lo = _mm512_maskz_loadu_ps(m0, src);
        let hi = _mm512_maskz_loadu_ps(m1, src.add(16));
        let bf = _mm512_cvtne2ps_pbh(hi, lo);
        _mm512_store_si512(
            dst.0.as_mut_ptr().cast(),
            std::mem::transmute::<__m512bh, __m512i>(bf),
        );
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
unsafe fn epilogue(_: &mut Acc, _: &Store) {
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
        [Backend::Amx, Backend::Avx512Bf16, Backend::Emulated]
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
        if avx512bf16_usable() {
            let mut src = fill(32, 11);
            src[3] = f32::NAN;
            src[4] = 1.0 + 1.0 / 256.0;
            src[5] = f32::MAX;
            for len in [32, 31, 17, 16, 5, 1] {
                let mut row = ZERO_ROW;
                row.0.fill(0xffff);
                // SAFETY: AVX-512F and AVX512-BF16 (checked); src holds 32 floats.
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
    fn attention_backends_agree_with_reference() {
        // One head of Whisper's shape (dh 64) over ragged key and query counts; Q with a row
        // stride, as in the fused QKV buffer.
        let (rows, keys, dh, ld) = (75, 203, 64, 3 * 64 + 5);
        let q = fill(rows * ld, 21);
        let k = fill(keys * dh, 22);
        let v = fill(keys * dh, 23);
        let scale = 0.125;
        let r = |x: f32| round_bf16(x) as f64;
        let want = |i: usize, c: usize| -> f64 {
            let s: Vec<f64> = (0..keys)
                .map(|j| (0..dh).map(|p| r(q[i * ld + p]) * r(k[j * dh + p])).sum())
                .collect();
            let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s
                .iter()
                .map(|x| r(((x - max) * scale as f64).exp() as f32))
                .collect();
            let sum: f64 = e.iter().sum();
            (0..keys).map(|j| e[j] * r(v[j * dh + c])).sum::<f64>() / sum
        };
        let mut outs = Vec::new();
        for backend in backends() {
            let mut kt = PackedBf16::empty(backend);
            kt.pack_from(
                MatRef {
                    data: &k,
                    rs: 1,
                    cs: dh,
                },
                dh,
                keys,
            );
            let mut vp = PackedBf16::empty(backend);
            vp.pack_from(
                MatRef {
                    data: &v,
                    rs: dh,
                    cs: 1,
                },
                keys,
                dh,
            );
            let ldo = dh + 3;
            let mut out = vec![7.0f32; rows * ldo];
            let qm = MatRef {
                data: &q,
                rs: ld,
                cs: 1,
            };
            attention(qm, rows, &kt, &vp, scale, &mut out, ldo);
            for i in 0..rows {
                for c in 0..ldo {
                    let got = out[i * ldo + c];
                    if c >= dh {
                        assert_eq!(got, 7.0, "{backend:?} wrote outside out at ({i},{c})");
                    } else if i % 7 == 0 || i == rows - 1 {
                        let w = want(i, c);
                        assert!(
                            (got as f64 - w).abs() < 1e-3,
                            "{backend:?} ({i},{c}): {got} vs {w}"
                        );
                    }
                }
            }
            outs.push(out);
        }
        // The emulated backend comes last: every tiled one against it.
        if let [tiled @ .., emu] = &outs[..] {
            for out in tiled {
                for (x, y) in out.iter().zip(emu) {
                    // Same bf16 inputs, exponentials within 1e-6: rarely a different rounding.
                    assert!((x - y).abs() < 1e-5, "backends differ: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn fused_gelu_matches_gelu_after() {
        // The fused activation gives what `gelu_inplace` on the stored product gives (bit for
        // bit when emulated; within a few ulp on AMX).
        let (m, n, k) = (70, 45, 100);
        let a = fill(m * k, 12);
        let w = fill(n * k, 13);
        let bias = fill(n, 14);
        for backend in backends() {
            let packed = PackedBf16::from_rows_with(backend, &w, n, k);
            let am = MatRef {
                data: &a,
                rs: k,
                cs: 1,
            };
            let ep = Epilogue {
                alpha: 1.0,
                accumulate: false,
                bias: Some(&bias),
            };
            let par = Parallelism::Rayon(2);
            let mut want = vec![0.0f32; m * n];
            gemm(m, am, &packed, &mut want, n, ep, par);
            crate::engine::cpu::math::gelu_inplace(&mut want);
            let mut got = vec![0.0f32; m * n];
            gemm_act(m, am, &packed, &mut got, n, ep, Activation::Gelu, par);
            match backend {
                Backend::Emulated => assert_eq!(got, want),
                Backend::Amx | Backend::Avx512Bf16 => {
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() <= 1e-6 * (1.0 + w.abs()), "{g} vs {w}");
                    }
                }
            }
            // Over GELU's whole range, the extremes included.
            if backend != Backend::Emulated {
                let xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.006).collect();
                let (m, k, n) = (xs.len(), 1, 1);
                let one = PackedBf16::from_rows_with(backend, &[1.0], n, k);
                let mut got = vec![0.0f32; m];
                let am = MatRef {
                    data: &xs,
                    rs: 1,
                    cs: 1,
                };
                let ep = Epilogue::default();
                gemm_act(m, am, &one, &mut got, 1, ep, Activation::Gelu, par);
                for (&x, &g) in xs.iter().zip(&got) {
                    let w = crate::engine::cpu::math::gelu(round_bf16(x));
                    assert!(
                        (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                        "gelu({x}): {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn backends_agree() {
        // The backends compute on the same bf16 inputs: equal up to f32 summation order.
        let tiled: Vec<Backend> = [Backend::Amx, Backend::Avx512Bf16]
            .into_iter()
            .filter(|b| b.supported())
            .collect();
        if tiled.is_empty() {
            crate::test_support::skip(
                "this CPU has neither AMX nor AVX512_BF16: only one backend to compare",
            );
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
        let emu = run(Backend::Emulated);
        for backend in tiled {
            for (x, y) in run(backend).iter().zip(&emu) {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "{backend:?}: {x} vs {y}"
                );
            }
        }
    }
}
