//! Safe wrappers over the host (scalar C++) builds of the AIE2 kernels in `kernels/*.cc`.
//!
//! Used by the tests only: they run each kernel on the same data as the golden model
//! (`gstwhispernpu::npu::golden`) and require identical bits. bf16 values are passed as their
//! bit patterns (`u16`). Sizes are those the kernels are compiled for ([`TM`], [`TN`], ...).

/// Rows of a GEMM tile.
pub const TM: usize = 32;
/// Columns of a GEMM tile.
pub const TN: usize = 64;
/// Queries per attention block.
pub const QB: usize = 64;
/// Keys per attention block.
pub const KB: usize = 32;
/// Head width.
pub const DH: usize = 64;

mod ffi {
    unsafe extern "C" {
        pub fn wnpu_zero_f32(c: *mut f32, n: i32);
        pub fn wnpu_mm_32x64x64(a: *const u16, b: *const u16, c: *mut f32);
        pub fn wnpu_mm_32x80x64(a: *const u16, b: *const u16, c: *mut f32);
        pub fn wnpu_bias_bf16(c: *const f32, bias: *const f32, out: *mut u16);
        pub fn wnpu_bias_gelu_bf16(c: *const f32, bias: *const f32, out: *mut u16);
        pub fn wnpu_bias_gelu_pos_f32(
            c: *const f32,
            bias: *const f32,
            pos: *const f32,
            out: *mut f32,
        );
        pub fn wnpu_bias_residual_f32(c: *const f32, bias: *const f32, x: *mut f32);
        pub fn wnpu_layer_norm_bf16(
            x: *const f32,
            gamma: *const f32,
            beta: *const f32,
            out: *mut u16,
            rows: i32,
            d: i32,
        );
        pub fn wnpu_layer_norm_f32(
            x: *const f32,
            gamma: *const f32,
            beta: *const f32,
            out: *mut f32,
            rows: i32,
            d: i32,
        );
        pub fn wnpu_attn_init(m: *mut f32, l: *mut f32, o: *mut f32);
        pub fn wnpu_attn_block(
            q: *const u16,
            k: *const u16,
            v: *const u16,
            scale: f32,
            valid: i32,
            m: *mut f32,
            l: *mut f32,
            o: *mut f32,
            s: *mut f32,
        );
        pub fn wnpu_attn_finish(l: *const f32, o: *const f32, out: *mut u16);
    }
}

fn check(name: &str, len: usize, need: usize) {
    assert!(
        len >= need,
        "{name}: {len} elements, the kernel reads or writes {need}"
    );
}

/// `c[TM][TN] = 0`.
pub fn zero(c: &mut [f32]) {
    // SAFETY: the kernel writes `c.len()` floats.
    unsafe { ffi::wnpu_zero_f32(c.as_mut_ptr(), c.len() as i32) }
}

/// `c[TM][TN] += a[TM][k] · b[k][TN]` for `k` = 64 or 80 (the two compiled tile depths).
pub fn mm(k: usize, a: &[u16], b: &[u16], c: &mut [f32]) {
    check("a", a.len(), TM * k);
    check("b", b.len(), k * TN);
    check("c", c.len(), TM * TN);
    // SAFETY: sizes checked above.
    unsafe {
        match k {
            64 => ffi::wnpu_mm_32x64x64(a.as_ptr(), b.as_ptr(), c.as_mut_ptr()),
            80 => ffi::wnpu_mm_32x80x64(a.as_ptr(), b.as_ptr(), c.as_mut_ptr()),
            _ => panic!("no kernel compiled for K = {k}"),
        }
    }
}

pub fn bias_bf16(c: &[f32], bias: &[f32], out: &mut [u16]) {
    check("c", c.len(), TM * TN);
    check("bias", bias.len(), TN);
    check("out", out.len(), TM * TN);
    // SAFETY: sizes checked above.
    unsafe { ffi::wnpu_bias_bf16(c.as_ptr(), bias.as_ptr(), out.as_mut_ptr()) }
}

pub fn bias_gelu_bf16(c: &[f32], bias: &[f32], out: &mut [u16]) {
    check("c", c.len(), TM * TN);
    check("bias", bias.len(), TN);
    check("out", out.len(), TM * TN);
    // SAFETY: sizes checked above.
    unsafe { ffi::wnpu_bias_gelu_bf16(c.as_ptr(), bias.as_ptr(), out.as_mut_ptr()) }
}

pub fn bias_gelu_pos_f32(c: &[f32], bias: &[f32], pos: &[f32], out: &mut [f32]) {
    check("c", c.len(), TM * TN);
    check("bias", bias.len(), TN);
    check("pos", pos.len(), TM * TN);
    check("out", out.len(), TM * TN);
    // SAFETY: sizes checked above.
    unsafe {
        ffi::wnpu_bias_gelu_pos_f32(c.as_ptr(), bias.as_ptr(), pos.as_ptr(), out.as_mut_ptr())
    }
}

pub fn bias_residual_f32(c: &[f32], bias: &[f32], x: &mut [f32]) {
    check("c", c.len(), TM * TN);
    check("bias", bias.len(), TN);
    check("x", x.len(), TM * TN);
    // SAFETY: sizes checked above.
    unsafe { ffi::wnpu_bias_residual_f32(c.as_ptr(), bias.as_ptr(), x.as_mut_ptr()) }
}

pub fn layer_norm_bf16(x: &[f32], gamma: &[f32], beta: &[f32], out: &mut [u16]) {
    let d = gamma.len();
    let rows = x.len() / d;
    check("beta", beta.len(), d);
    check("out", out.len(), rows * d);
    // SAFETY: sizes checked above.
    unsafe {
        ffi::wnpu_layer_norm_bf16(
            x.as_ptr(),
            gamma.as_ptr(),
            beta.as_ptr(),
            out.as_mut_ptr(),
            rows as i32,
            d as i32,
        )
    }
}

pub fn layer_norm_f32(x: &[f32], gamma: &[f32], beta: &[f32], out: &mut [f32]) {
    let d = gamma.len();
    let rows = x.len() / d;
    check("beta", beta.len(), d);
    check("out", out.len(), rows * d);
    // SAFETY: sizes checked above.
    unsafe {
        ffi::wnpu_layer_norm_f32(
            x.as_ptr(),
            gamma.as_ptr(),
            beta.as_ptr(),
            out.as_mut_ptr(),
            rows as i32,
            d as i32,
        )
    }
}

/// Running state of one query block's online softmax.
pub struct AttnState {
    pub m: Vec<f32>,
    pub l: Vec<f32>,
    pub o: Vec<f32>,
    s: Vec<f32>,
}

impl AttnState {
    pub fn new() -> Self {
        let mut st = Self {
            m: vec![0.0; QB],
            l: vec![0.0; QB],
            o: vec![0.0; QB * DH],
            s: vec![0.0; QB * KB],
        };
        // SAFETY: buffers sized as the kernel expects.
        unsafe { ffi::wnpu_attn_init(st.m.as_mut_ptr(), st.l.as_mut_ptr(), st.o.as_mut_ptr()) };
        st
    }

    /// One block of [`KB`] keys, the first `valid` of which count.
    pub fn block(&mut self, q: &[u16], k: &[u16], v: &[u16], scale: f32, valid: usize) {
        check("q", q.len(), QB * DH);
        check("k", k.len(), KB * DH);
        check("v", v.len(), KB * DH);
        // SAFETY: sizes checked above.
        unsafe {
            ffi::wnpu_attn_block(
                q.as_ptr(),
                k.as_ptr(),
                v.as_ptr(),
                scale,
                valid as i32,
                self.m.as_mut_ptr(),
                self.l.as_mut_ptr(),
                self.o.as_mut_ptr(),
                self.s.as_mut_ptr(),
            )
        }
    }

    /// `out[QB][DH] = bf16(o / l)`.
    pub fn finish(&self, out: &mut [u16]) {
        check("out", out.len(), QB * DH);
        // SAFETY: sizes checked above.
        unsafe { ffi::wnpu_attn_finish(self.l.as_ptr(), self.o.as_ptr(), out.as_mut_ptr()) }
    }
}

impl Default for AttnState {
    fn default() -> Self {
        Self::new()
    }
}
