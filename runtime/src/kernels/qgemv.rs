//! pupil's int8 matrix-vector kernel: `u8` activations × pre-packed `i8` weights → exact `i32` sums, with
//! run-time dispatch (AVX-512 VNNI, AVX2, scalar on x86-64; NEON and NEON dotprod on aarch64).
//!
//! The weights are packed once, at load time, into panels of [`PANEL`] output columns: for each group of 4
//! consecutive `k` the panel stores 16 columns × 4 bytes (64 bytes, one AVX-512 register), so every kernel
//! streams the weights exactly once and in order. `K` is padded to a multiple of 4 and `N` to a multiple of
//! [`PANEL`] with zero weights, which contribute nothing to any sum.
//!
//! The SIMD kernels skip every quad of 4 activations that are all zero (a ReLU layer's outputs and a digit's
//! blank pixels, which quantize to 0 when the zero point is 0): their products are zero, so the sums stay
//! exact, and their 64-byte weight rows are never read (dotprod's `udot` reads the weights as `w + 128` and
//! takes `128 · Σ a` back, which a zero quad leaves unchanged). Half of a trained MLP's hidden units are often zero;
//! the int8 student's second layer skips about 60% of its quads on the benchmark's input (more on real digits,
//! whose blank pixels also spare most of the first layer's weights).

use super::gemv::WeightLayout;
use super::pages::Pages;

/// Output columns per packed panel.
pub const PANEL: usize = 16;

/// An instruction set a kernel is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Isa {
    /// Portable Rust, any CPU.
    Scalar,
    /// x86-64 AVX2 (16-bit widening multiply-add).
    Avx2,
    /// x86-64 AVX-512 with VNNI (`vpdpbusd`: u8 × i8 → i32, four products per lane).
    Avx512Vnni,
    /// aarch64 NEON (16-bit widening multiply-accumulate).
    Neon,
    /// aarch64 NEON with the dot-product extension (`sdot`: four i8 × i8 products per lane).
    NeonDotprod,
}

impl Isa {
    /// Every instruction set this CPU can run, slowest first (always starts with [`Isa::Scalar`]).
    pub fn available() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                v.push(Isa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                v.push(Isa::Avx512Vnni);
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                v.push(Isa::Neon);
                if std::arch::is_aarch64_feature_detected!("dotprod") {
                    v.push(Isa::NeonDotprod);
                }
            }
        }
        v
    }

    /// The fastest instruction set this CPU runs. `PUPIL_ISA=scalar|avx2|avx512vnni|neon|dotprod` caps it
    /// (for comparisons and for testing the slower paths); an unknown or unavailable value is ignored.
    pub fn best() -> Isa {
        let available = Isa::available();
        let best = *available.last().expect("scalar is always available");
        match std::env::var("PUPIL_ISA").ok().and_then(|s| Isa::parse(&s)) {
            Some(wanted) if available.contains(&wanted) => wanted,
            _ => best,
        }
    }

    /// Parses a name as printed by [`Isa::name`].
    pub fn parse(s: &str) -> Option<Isa> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Isa::Scalar,
            "avx2" => Isa::Avx2,
            "avx512vnni" | "vnni" => Isa::Avx512Vnni,
            "neon" => Isa::Neon,
            "dotprod" | "neondotprod" => Isa::NeonDotprod,
            _ => return None,
        })
    }

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Neon => "neon",
            Isa::NeonDotprod => "dotprod",
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An `i8` weight matrix `[K, N]` packed for the kernels, with its column sums.
#[derive(Clone, PartialEq, Eq)]
pub struct PackedI8 {
    k: usize,
    n: usize,
    /// `k` rounded up to a multiple of 4.
    kp: usize,
    /// `n` rounded up to a multiple of [`PANEL`].
    np: usize,
    data: Pages<i8>,
    /// `Σ_k w[k][n]` for every column (length `n`).
    colsum: Vec<i32>,
}

impl std::fmt::Debug for PackedI8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedI8({}x{})", self.k, self.n)
    }
}

impl PackedI8 {
    /// Packs a `K × N` matrix stored in `layout`.
    ///
    /// # Panics
    /// If `w` does not hold `K × N` values.
    pub fn pack(k: usize, n: usize, w: &[i8], layout: WeightLayout) -> PackedI8 {
        assert_eq!(w.len(), k * n, "weights must hold K × N values");
        let kp = k.div_ceil(4) * 4;
        let np = n.div_ceil(PANEL) * PANEL;
        let mut data = Pages::zeroed(kp * np);
        let mut colsum = vec![0i32; n];
        // A panel holds, for each quad of 4 inputs, PANEL columns of 4 consecutive weights.
        let panel_len = kp * PANEL;
        if k > 0 {
            for (p, panel) in data.chunks_exact_mut(panel_len).enumerate() {
                let c0 = p * PANEL;
                let width = PANEL.min(n - c0);
                match layout {
                    WeightLayout::KByN => {
                        for (row, src) in w.chunks_exact(n).enumerate() {
                            let base = (row / 4) * PANEL * 4 + row % 4;
                            for (c, &v) in src[c0..c0 + width].iter().enumerate() {
                                panel[base + c * 4] = v;
                                colsum[c0 + c] += v as i32;
                            }
                        }
                    }
                    WeightLayout::NByK => {
                        for (c, src) in w[c0 * k..(c0 + width) * k].chunks_exact(k).enumerate() {
                            // Whole quads as 4-byte moves (a `copy_from_slice` of a run-time length was a `memcpy`
                            // call per quad: most of the int8 student's load time), then the last partial one.
                            let quads = src.chunks_exact(4);
                            let tail = quads.remainder();
                            for (q, quad) in quads.enumerate() {
                                let at = q * PANEL * 4 + c * 4;
                                panel[at..at + 4].copy_from_slice(&quad[..4]);
                            }
                            if !tail.is_empty() {
                                let at = k / 4 * PANEL * 4 + c * 4;
                                panel[at..at + tail.len()].copy_from_slice(tail);
                            }
                            colsum[c0 + c] = src.iter().map(|&v| v as i32).sum();
                        }
                    }
                }
            }
        }
        PackedI8 { k, n, kp, np, data, colsum }
    }

    /// Packs a row-major `[K, N]` slice.
    pub fn from_row_major(k: usize, n: usize, w: &[i8]) -> PackedI8 {
        PackedI8::pack(k, n, w, WeightLayout::KByN)
    }

    pub fn k(&self) -> usize {
        self.k
    }
    pub fn n(&self) -> usize {
        self.n
    }
    /// `K` padded to a multiple of 4: the length the activation buffer given to [`PackedI8::gemv`] must have.
    pub fn k_padded(&self) -> usize {
        self.kp
    }
    /// `N` padded to a multiple of [`PANEL`]: the length of the output buffer given to [`PackedI8::gemv`].
    pub fn n_padded(&self) -> usize {
        self.np
    }
    /// Column sums `Σ_k w[k][n]`.
    pub fn colsum(&self) -> &[i32] {
        &self.colsum
    }
    /// Bytes of packed weights.
    pub fn packed_bytes(&self) -> usize {
        self.data.len()
    }

    /// Number of packed panels ([`n_padded`](Self::n_padded) / [`PANEL`]).
    pub fn panels(&self) -> usize {
        self.np / PANEL
    }

    /// `out[n] = Σ_k a[k] · w[k][n]` exactly, for `a` of length [`k_padded`](Self::k_padded) (entries past `K`
    /// are ignored: their weights are zero) and `out` of length [`n_padded`](Self::n_padded).
    ///
    /// # Panics
    /// If the buffers have the wrong lengths or `isa` is not available on this CPU (see [`Isa::available`]).
    pub fn gemv(&self, isa: Isa, a: &[u8], out: &mut [i32]) {
        self.gemv_panels(isa, a, 0..self.panels(), out)
    }

    /// [`gemv`](Self::gemv) for the columns of the panels `panels` only: `out` holds `panels.len()` × [`PANEL`]
    /// sums, from column `panels.start` × [`PANEL`] on (how threads split one product between them).
    ///
    /// # Panics
    /// If the buffers have the wrong lengths, the panels are out of range, or `isa` is not available on this CPU.
    pub fn gemv_panels(&self, isa: Isa, a: &[u8], panels: std::ops::Range<usize>, out: &mut [i32]) {
        assert_eq!(a.len(), self.kp, "activation buffer must be K padded to 4");
        assert!(panels.start <= panels.end && panels.end <= self.panels(), "panels {panels:?} out of range");
        assert_eq!(out.len(), panels.len() * PANEL, "output buffer must hold {PANEL} sums per panel");
        let out = Part { first: panels.start, panels: panels.len(), out };
        match isa {
            Isa::Scalar => gemv_scalar(self, a, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                assert!(std::arch::is_x86_feature_detected!("avx2"), "AVX2 is not available");
                // SAFETY: AVX2 checked above; lengths checked above.
                unsafe { x86::gemv_avx2(self, a, out) }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                assert!(
                    std::arch::is_x86_feature_detected!("avx512f")
                        && std::arch::is_x86_feature_detected!("avx512bw")
                        && std::arch::is_x86_feature_detected!("avx512vnni"),
                    "AVX-512 VNNI is not available"
                );
                // SAFETY: features checked above; lengths checked above.
                unsafe { x86::gemv_vnni(self, a, out) }
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => {
                // SAFETY: NEON is part of the aarch64 baseline; lengths checked above.
                unsafe { arm::gemv_neon(self, a, out) }
            }
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDotprod => {
                assert!(std::arch::is_aarch64_feature_detected!("dotprod"), "dotprod is not available");
                // SAFETY: dotprod checked above; lengths checked above.
                unsafe { arm::gemv_dotprod(self, a, out) }
            }
            #[allow(unreachable_patterns)]
            other => panic!("{other} kernels are not built for {}", std::env::consts::ARCH),
        }
    }
}

/// The quads of `a` that hold a non-zero byte, with their index: the ones a kernel must read (an all-zero quad adds
/// nothing to any sum). The VNNI kernel lists them with AVX-512 instead.
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
fn live_quads(a: &[u8]) -> impl Iterator<Item = (usize, [u8; 4])> + '_ {
    a.chunks_exact(4)
        .enumerate()
        .map(|(q, b)| (q, <[u8; 4]>::try_from(b).unwrap_or_default()))
        .filter(|(_, quad)| *quad != [0; 4])
}

/// The panels a kernel computes: `panels` of them from `first`, their sums into `out` (16 per panel).
struct Part<'a> {
    first: usize,
    panels: usize,
    out: &'a mut [i32],
}

fn gemv_scalar(p: &PackedI8, a: &[u8], Part { first, panels, out }: Part) {
    let quads = p.kp / 4;
    for (panel, out) in (first..first + panels).zip(out.chunks_exact_mut(PANEL)) {
        let mut acc = [0i32; PANEL];
        for q in 0..quads {
            let w = &p.data[(panel * quads + q) * PANEL * 4..][..PANEL * 4];
            let av = &a[q * 4..q * 4 + 4];
            for (c, acc) in acc.iter_mut().enumerate() {
                for j in 0..4 {
                    *acc += av[j] as i32 * w[c * 4 + j] as i32;
                }
            }
        }
        out.copy_from_slice(&acc);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PANEL, PackedI8, Part};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn gemv_vnni(p: &PackedI8, a: &[u8], Part { first, panels, out }: Part) {
        let quads = p.kp / 4;
        let stride = quads * PANEL * 4;
        let w = p.data.as_ptr().wrapping_add(first * stride);
        let a = a.as_ptr();
        let mut panel = 0;
        let mut live = LIVE.take();
        // SAFETY: `a` holds 4 × quads bytes (checked by the caller); AVX-512 F is enabled on this function.
        let n_live = unsafe { live_quads(a, quads, &mut live) };
        let live_at = live.as_ptr();
        // SAFETY (whole body): every pointer stays inside `p.data` (panels `first..first + panels`, stride bytes
        // each), `a` (4 × quads bytes), `live` (`n_live` quad indices below `quads`) and `out` (panels × 16
        // i32), as checked by the caller.
        unsafe {
            while panel + 4 <= panels {
                // 4 panels × 2 quads: 8 independent accumulators hide vpdpbusd's latency.
                let base = w.add(panel * stride);
                let z = _mm512_setzero_si512();
                let (mut c0, mut c1, mut c2, mut c3) = (z, z, z, z);
                let (mut d0, mut d1, mut d2, mut d3) = (z, z, z, z);
                let mut i = 0;
                while i + 2 <= n_live {
                    let (q, q1) = (*live_at.add(i) as usize, *live_at.add(i + 1) as usize);
                    let a0 = _mm512_set1_epi32((a.add(q * 4) as *const i32).read_unaligned());
                    let a1 = _mm512_set1_epi32((a.add(q1 * 4) as *const i32).read_unaligned());
                    let o = base.add(q * 64);
                    c0 = _mm512_dpbusd_epi32(c0, a0, _mm512_loadu_si512(o as *const _));
                    c1 = _mm512_dpbusd_epi32(c1, a0, _mm512_loadu_si512(o.add(stride) as *const _));
                    c2 = _mm512_dpbusd_epi32(c2, a0, _mm512_loadu_si512(o.add(2 * stride) as *const _));
                    c3 = _mm512_dpbusd_epi32(c3, a0, _mm512_loadu_si512(o.add(3 * stride) as *const _));
                    let o = base.add(q1 * 64);
                    d0 = _mm512_dpbusd_epi32(d0, a1, _mm512_loadu_si512(o as *const _));
                    d1 = _mm512_dpbusd_epi32(d1, a1, _mm512_loadu_si512(o.add(stride) as *const _));
                    d2 = _mm512_dpbusd_epi32(d2, a1, _mm512_loadu_si512(o.add(2 * stride) as *const _));
                    d3 = _mm512_dpbusd_epi32(d3, a1, _mm512_loadu_si512(o.add(3 * stride) as *const _));
                    i += 2;
                }
                if i < n_live {
                    let q = *live_at.add(i) as usize;
                    let a0 = _mm512_set1_epi32((a.add(q * 4) as *const i32).read_unaligned());
                    let o = base.add(q * 64);
                    c0 = _mm512_dpbusd_epi32(c0, a0, _mm512_loadu_si512(o as *const _));
                    c1 = _mm512_dpbusd_epi32(c1, a0, _mm512_loadu_si512(o.add(stride) as *const _));
                    c2 = _mm512_dpbusd_epi32(c2, a0, _mm512_loadu_si512(o.add(2 * stride) as *const _));
                    c3 = _mm512_dpbusd_epi32(c3, a0, _mm512_loadu_si512(o.add(3 * stride) as *const _));
                }
                let dst = out.as_mut_ptr().add(panel * PANEL);
                _mm512_storeu_si512(dst as *mut _, _mm512_add_epi32(c0, d0));
                _mm512_storeu_si512(dst.add(16) as *mut _, _mm512_add_epi32(c1, d1));
                _mm512_storeu_si512(dst.add(32) as *mut _, _mm512_add_epi32(c2, d2));
                _mm512_storeu_si512(dst.add(48) as *mut _, _mm512_add_epi32(c3, d3));
                panel += 4;
            }
            while panel < panels {
                let base = w.add(panel * stride);
                let (mut c0, mut c1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                let mut i = 0;
                while i + 2 <= n_live {
                    let (q, q1) = (*live_at.add(i) as usize, *live_at.add(i + 1) as usize);
                    let a0 = _mm512_set1_epi32((a.add(q * 4) as *const i32).read_unaligned());
                    let a1 = _mm512_set1_epi32((a.add(q1 * 4) as *const i32).read_unaligned());
                    c0 = _mm512_dpbusd_epi32(c0, a0, _mm512_loadu_si512(base.add(q * 64) as *const _));
                    c1 = _mm512_dpbusd_epi32(c1, a1, _mm512_loadu_si512(base.add(q1 * 64) as *const _));
                    i += 2;
                }
                if i < n_live {
                    let q = *live_at.add(i) as usize;
                    let a0 = _mm512_set1_epi32((a.add(q * 4) as *const i32).read_unaligned());
                    c0 = _mm512_dpbusd_epi32(c0, a0, _mm512_loadu_si512(base.add(q * 64) as *const _));
                }
                _mm512_storeu_si512(out.as_mut_ptr().add(panel * PANEL) as *mut _, _mm512_add_epi32(c0, c1));
                panel += 1;
            }
        }
        LIVE.set(live);
    }

    /// Writes the indices of the quads of `a` (4 × `quads` bytes) that hold a non-zero byte into `live` and
    /// returns how many there are: 16 quads per step, one test and one compressing store.
    ///
    /// # Safety
    /// `a` must hold at least 4 × `quads` bytes, and AVX-512 F must be available.
    #[target_feature(enable = "avx512f")]
    unsafe fn live_quads(a: *const u8, quads: usize, live: &mut Vec<u32>) -> usize {
        live.clear();
        live.reserve(quads);
        let dst = live.as_mut_ptr();
        let mut n = 0;
        let mut index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let mut q = 0;
        // SAFETY: the loads read quads `q..q + 16` (masked to `quads`) of `a`; the stores write at most one
        // index per quad, so at most `quads` into `live`'s reserved room.
        unsafe {
            while q < quads {
                let lanes = (quads - q).min(16);
                let m = if lanes == 16 { 0xffff } else { (1u16 << lanes) - 1 };
                let v = _mm512_maskz_loadu_epi32(m, a.add(q * 4) as *const i32);
                let nonzero = _mm512_test_epi32_mask(v, v);
                _mm512_mask_compressstoreu_epi32(dst.add(n) as *mut _, nonzero, index);
                n += nonzero.count_ones() as usize;
                index = _mm512_add_epi32(index, _mm512_set1_epi32(16));
                q += 16;
            }
            live.set_len(n);
        }
        n
    }

    thread_local! {
        /// [`gemv_vnni`]'s list of live (not all-zero) activation quads, kept per thread between calls.
        static LIVE: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn gemv_avx2(p: &PackedI8, a: &[u8], Part { first, panels, out }: Part) {
        let quads = p.kp / 4;
        // Each live activation quad (not all zero: the others add nothing), with its index, as four i16 repeated:
        // the multiplier for a 16-byte chunk (4 columns × 4 k), in this thread's buffer (no allocation once warm).
        let mut aq = QUADS.take();
        aq.clear();
        aq.extend(super::live_quads(a).map(|(q, b)| {
            let v = |j: usize| b[j] as u64;
            (q, (v(0) | v(1) << 16 | v(2) << 32 | v(3) << 48) as i64)
        }));
        // SAFETY (whole body): pointers stay inside `p.data`, `aq` and `out`, as checked by the caller.
        unsafe {
            for (panel, out) in (first..first + panels).zip(out.chunks_exact_mut(PANEL)) {
                let base = p.data.as_ptr().add(panel * quads * PANEL * 4);
                let mut acc = [_mm256_setzero_si256(); 4];
                for &(q, aq) in aq.iter() {
                    let av = _mm256_set1_epi64x(aq);
                    let o = base.add(q * 64);
                    for (chunk, acc) in acc.iter_mut().enumerate() {
                        let w = _mm256_cvtepi8_epi16(_mm_loadu_si128(o.add(chunk * 16) as *const __m128i));
                        *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(w, av));
                    }
                }
                // acc[chunk] lanes: column (4·chunk + l/2), half l%2; add the halves.
                for (chunk, acc) in acc.iter().enumerate() {
                    let mut lanes = [0i32; 8];
                    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, *acc);
                    for c in 0..4 {
                        out[chunk * 4 + c] = lanes[2 * c] + lanes[2 * c + 1];
                    }
                }
            }
        }
        QUADS.set(aq);
    }

    thread_local! {
        /// [`gemv_avx2`]'s activation quads, kept per thread between calls.
        static QUADS: std::cell::Cell<Vec<(usize, i64)>> = const { std::cell::Cell::new(Vec::new()) };
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{PANEL, PackedI8, Part};
    use std::arch::aarch64::*;

    #[target_feature(enable = "neon")]
    pub(super) unsafe fn gemv_neon(p: &PackedI8, a: &[u8], Part { first, panels, out }: Part) {
        let quads = p.kp / 4;
        // The live quads (not all zero), in this thread's buffer: the others add nothing.
        let mut live = LIVE.take();
        live.clear();
        live.extend(super::live_quads(a));
        // SAFETY (whole body): pointers stay inside `p.data`, `live` and `out`, as checked by the caller.
        unsafe {
            for (panel, out) in (first..first + panels).zip(out.chunks_exact_mut(PANEL)) {
                let base = p.data.as_ptr().add(panel * quads * PANEL * 4);
                // One accumulator per column: lanes hold the 4 k of a quad, summed at the end.
                let mut acc = [vdupq_n_s32(0); PANEL];
                for &(q, b) in live.iter() {
                    let a4 = vreinterpret_s16_u16(vget_low_u16(vmovl_u8(vld1_u8(
                        [b[0], b[1], b[2], b[3], 0, 0, 0, 0].as_ptr(),
                    ))));
                    let o = base.add(q * 64);
                    for chunk in 0..4 {
                        let w = vld1q_s8(o.add(chunk * 16));
                        let lo = vmovl_s8(vget_low_s8(w));
                        let hi = vmovl_s8(vget_high_s8(w));
                        let c = chunk * 4;
                        acc[c] = vmlal_s16(acc[c], vget_low_s16(lo), a4);
                        acc[c + 1] = vmlal_s16(acc[c + 1], vget_high_s16(lo), a4);
                        acc[c + 2] = vmlal_s16(acc[c + 2], vget_low_s16(hi), a4);
                        acc[c + 3] = vmlal_s16(acc[c + 3], vget_high_s16(hi), a4);
                    }
                }
                for (o, acc) in out.iter_mut().zip(&acc) {
                    *o = vaddvq_s32(*acc);
                }
            }
        }
        LIVE.set(live);
    }

    /// `udot` multiplies u8 × u8: the weights are read as `w + 128` (their sign bit flipped) and `128 · Σ a`
    /// is taken back from every sum. An all-zero quad adds nothing to either, so only the live quads are read.
    #[target_feature(enable = "neon,dotprod")]
    pub(super) unsafe fn gemv_dotprod(p: &PackedI8, a: &[u8], Part { first, panels, out }: Part) {
        let quads = p.kp / 4;
        // The live quads (index, 4 bytes as one u32) in this thread's buffer (no allocation once warm).
        let mut live = LIVE.take();
        live.clear();
        live.extend(super::live_quads(a));
        // Σ a modulo 2³², like the sums (a K past 8 M could wrap it); the difference comes out exact.
        let total = live.iter().fold(0i32, |t, (_, quad)| t.wrapping_add(quad.iter().map(|&x| x as i32).sum()));
        let correction = total.wrapping_mul(128);
        // SAFETY (whole body): pointers stay inside `p.data`, `live` and `out`, as checked by the caller.
        unsafe {
            let flip = vdupq_n_u8(0x80);
            for (panel, out) in (first..first + panels).zip(out.chunks_exact_mut(PANEL)) {
                let base = p.data.as_ptr().add(panel * quads * PANEL * 4);
                let mut acc = [vdupq_n_u32(0); 4];
                for &(q, b) in live.iter() {
                    let av = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_le_bytes(b)));
                    let o = base.add(q * 64);
                    for (chunk, acc) in acc.iter_mut().enumerate() {
                        let w = veorq_u8(vld1q_u8(o.add(chunk * 16) as *const u8), flip);
                        std::arch::asm!(
                            "udot {acc:v}.4s, {w:v}.16b, {a:v}.16b",
                            acc = inout(vreg) *acc,
                            w = in(vreg) w,
                            a = in(vreg) av,
                            options(pure, nomem, nostack)
                        );
                    }
                }
                for (chunk, acc) in acc.iter().enumerate() {
                    let mut lanes = [0u32; 4];
                    vst1q_u32(lanes.as_mut_ptr(), *acc);
                    for (c, lane) in lanes.iter().enumerate() {
                        out[chunk * 4 + c] = (*lane as i32).wrapping_sub(correction);
                    }
                }
            }
        }
        LIVE.set(live);
    }

    thread_local! {
        /// The NEON kernels' live activation quads (index, bytes), kept per thread between calls.
        static LIVE: std::cell::Cell<Vec<(usize, [u8; 4])>> = const { std::cell::Cell::new(Vec::new()) };
    }
}
