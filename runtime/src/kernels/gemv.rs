//! pupil's f32 matrix-vector kernel: one activation row × pre-packed f32 weights (+ bias, then a clamp: a folded
//! ReLU), dispatched at run time to AVX-512F / AVX2 + FMA / NEON / scalar, optionally split over a thread pool by
//! whole panels of output columns.
//!
//! The weights are packed once, at load time, into panels of [`PANEL`] output columns: panel `p` holds, for
//! every `k` in order, the 16 weights of columns `16p .. 16p + 16` (one AVX-512 register, two AVX2 ones, four
//! NEON ones), so each panel's weights are streamed exactly once and in order. `N` is padded to a multiple of
//! [`PANEL`] with zero weights. Panels are computed [`GROUP`] at a time (the last `panels % GROUP` one by one):
//! each activation is loaded once for four panels, and the four streams of weights keep more memory requests
//! in flight than one (the 1200-1200 MLP at 1 thread 147 → 130 µs, the student 67 → 62 µs, p50 of runs in turns
//! after 3 ms pauses, interleaved in one process).
//!
//! Zero activations are skipped ([`Live`]): a row with at least one zero in 8 (a ReLU layer's output, a digit's
//! blank pixels) has its non-zero values listed once per product, with their weight rows' offsets, and the kernels
//! read only those rows. The sums are the same terms in a different grouping; weights that are not all finite
//! keep every activation (`0 · ∞` is NaN).

use tract_linalg::multithread::Executor;
use tract_onnx::tract_core::internal::{TractResult, ensure};

use super::pages::Pages;
use super::qgemv::Isa;
use super::taps::Simd;

/// Multiply-accumulates per call below which a product is not split across threads. On the AMD EPYCs of the
/// benchmarks (two independent cores), a model loaded with 2 threads ran its 784×1200 and 1200×1200 layers twice
/// as fast split (the 1200-1200 MLP: 270–440 µs → 125–183 µs per run). The 784×800 and 800×800 layers of the
/// students first seemed to gain nothing (124–137 µs either way, measured while ONNX Runtime's spinning workers
/// could still hold the second core); once the benchmark waited for them to park, the same layers split ran the
/// f32 800-800 MLP at 2 threads in 43–53 µs against 73–76 µs unsplit (binaries alternated, same host, AVX-512
/// machine). So products from 600 k multiply-adds up were split (784×800 is 627 k). The CNN's 3136×128 layer
/// (401 k, 1.6 MB of weights streamed from L3 on every run) gains too: the f32 CNN at 2 threads, 80–83 → 72–81 µs
/// (min of 1000 runs, alternated; the students unchanged), so the bound is now 300 k.
pub const MIN_SPLIT_MACS: usize = 300_000;

/// Output columns per packed panel.
pub const PANEL: usize = 16;

/// Panels computed together. Threads share a product by whole groups, so every panel is computed by the same
/// kernel (grouped, or one of the last `panels % GROUP`) whatever the thread count, and the sums do not change
/// with it.
pub const GROUP: usize = 4;

/// How a `K × N` weight matrix is laid out in memory before packing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// Row-major `[K, N]`: the `N` weights of one input are contiguous.
    KByN,
    /// Row-major `[N, K]` (a transposed `B`, as in ONNX `Gemm` with `transB`): one output's `K` weights are contiguous.
    NByK,
}

/// An f32 weight matrix `[K, N]` packed for [`PackedF32::product`], with its bias.
#[derive(Clone, PartialEq)]
pub struct PackedF32 {
    k: usize,
    n: usize,
    data: Pages<f32>,
    /// Bias per column, padded to the panels (zeros when there is none).
    bias: Vec<f32>,
    /// Every weight is finite: zero activations can be skipped (`0 · ∞` would be NaN).
    finite: bool,
}

impl std::fmt::Debug for PackedF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedF32({}x{})", self.k, self.n)
    }
}

impl PackedF32 {
    /// Packs a `K × N` weight matrix stored in `layout`, with an optional bias of `n` values.
    ///
    /// # Panics
    /// If `w` does not hold `K × N` values or the bias fewer than `N`.
    pub fn pack(k: usize, n: usize, w: &[f32], layout: WeightLayout, bias: Option<&[f32]>) -> PackedF32 {
        assert_eq!(w.len(), k * n, "weights must hold K × N values");
        let panels = n.div_ceil(PANEL);
        let mut data = Pages::zeroed(panels * k * PANEL);
        // Panels of 16 whole columns are written in fixed-size blocks of 16 values (moves of one register, where
        // a copy of a run of unknown length calls `memcpy` once per 64 bytes: the f32 student's two layers
        // packed 2.4× slower); the last panel's columns past `N` keep their zeros.
        let (full, rest) = (n / PANEL, n % PANEL);
        fn block(data: &mut [f32], k: usize, p: usize, kk: usize) -> &mut [f32; PANEL] {
            (&mut data[(p * k + kk) * PANEL..][..PANEL]).try_into().expect("a block of PANEL values")
        }
        match layout {
            // Weight row `kk` is read once, in order, and its runs of 16 go to row `kk` of each panel.
            WeightLayout::KByN => {
                for (kk, src) in w.chunks_exact(n.max(1)).take(k).enumerate() {
                    for (p, run) in src.chunks_exact(PANEL).enumerate() {
                        *block(&mut data, k, p, kk) = run.try_into().expect("a run of PANEL values");
                    }
                    if rest > 0 {
                        block(&mut data, k, full, kk)[..rest].copy_from_slice(&src[full * PANEL..]);
                    }
                }
            }
            // Each output column is a contiguous weight row: tiles of 16 columns × 16 inputs are read row by row
            // (16 runs of 64 bytes) and written transposed as 16 panel rows, so both sides move whole lines
            // (scattering one column down its lane at a time strides over the whole panel once per lane).
            WeightLayout::NByK => {
                for p in 0..panels {
                    let c0 = p * PANEL;
                    let width = PANEL.min(n - c0);
                    let rows = &w[c0 * k..(c0 + width) * k];
                    for k0 in (0..k).step_by(PANEL) {
                        let depth = PANEL.min(k - k0);
                        let mut tile = [[0f32; PANEL]; PANEL];
                        for (lane, row) in rows.chunks_exact(k).enumerate() {
                            for (t, v) in tile.iter_mut().zip(&row[k0..k0 + depth]) {
                                t[lane] = *v;
                            }
                        }
                        for (d, t) in tile.iter().enumerate().take(depth) {
                            *block(&mut data, k, p, k0 + d) = *t;
                        }
                    }
                }
            }
        }
        let mut padded = vec![0f32; panels * PANEL];
        if let Some(b) = bias {
            padded[..n].copy_from_slice(&b[..n]);
        }
        let finite = w.iter().all(|v| v.is_finite());
        PackedF32 { k, n, data, bias: padded, finite }
    }

    /// Packs a row-major `[K, N]` matrix.
    pub fn from_row_major(k: usize, n: usize, w: &[f32], bias: Option<&[f32]>) -> PackedF32 {
        PackedF32::pack(k, n, w, WeightLayout::KByN, bias)
    }

    pub fn k(&self) -> usize {
        self.k
    }
    pub fn n(&self) -> usize {
        self.n
    }
    pub fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// `out[j] = clamp(Σ_i a[i] · w[k_i][first + j] + bias[first + j], lo, hi)` for the columns `first ..
    /// first + out.len()`, where `first` is a multiple of [`GROUP`] panels and the range within `N`: `a` holds a
    /// row's activations as [`Live::row`] gives them: the values read and their weight rows' offsets in a panel.
    fn gemv_cols(&self, simd: Simd, (a, offs): (&[f32], &[usize]), first: usize, clamp: (f32, f32), out: &mut [f32]) {
        let (k, p0) = (self.k, first / PANEL);
        // The kernels read `PANEL` weights at each offset of each panel, unchecked: `Live::row` only gives offsets
        // `k · PANEL` below `K · PANEL` (its `K`, checked in `product_live`), one per value.
        assert!(offs.len() == a.len() && a.len() <= k);
        assert!(first.is_multiple_of(GROUP * PANEL) && first + out.len() <= self.n);
        let clamped = |o: &mut [f32], acc: &[f32]| {
            for (o, v) in o.iter_mut().zip(acc) {
                *o = v.max(clamp.0).min(clamp.1);
            }
        };
        // The panels of the matrix's whole groups of full panels run in groups; the rest (fewer than a group of
        // panels at the end, the last of them maybe partial) panel by panel, whatever the thread count.
        let whole = self.n / (GROUP * PANEL) * GROUP;
        let grouped = whole.saturating_sub(p0).min(out.len() / PANEL) / GROUP;
        let (groups, singles) = out.split_at_mut(grouped * GROUP * PANEL);
        for (i, o) in groups.chunks_mut(GROUP * PANEL).enumerate() {
            let p = p0 + i * GROUP;
            let mut acc = [0f32; GROUP * PANEL];
            group(
                simd,
                a,
                offs,
                &self.data[p * k * PANEL..(p + GROUP) * k * PANEL],
                &self.bias[p * PANEL..][..GROUP * PANEL],
                &mut acc,
            );
            clamped(o, &acc);
        }
        for (i, o) in singles.chunks_mut(PANEL).enumerate() {
            let p = p0 + grouped * GROUP + i;
            let mut acc = [0f32; PANEL];
            panel(
                simd,
                a,
                offs,
                &self.data[p * k * PANEL..(p + 1) * k * PANEL],
                &self.bias[p * PANEL..(p + 1) * PANEL],
                &mut acc,
            );
            clamped(o, &acc);
        }
    }

    /// `m` rows: `out[i·n + j] = clamp(Σ_k a[i·k + k'] · w[k'][j] + bias[j], lo, hi)`, with the kernels of
    /// `isa`. With a multithreaded `executor` and at least [`MIN_SPLIT_MACS`] multiply-accumulates, the rows are
    /// cut into chunks of whole panels that this thread and `threads - 1` pool jobs claim as they go.
    pub fn product(
        &self,
        isa: Isa,
        a: &[f32],
        m: usize,
        clamp: (f32, f32),
        out: &mut [f32],
        executor: &Executor,
    ) -> TractResult<()> {
        let (k, n) = (self.k, self.n);
        ensure!(
            a.len() == m * k && out.len() == m * n,
            "f32 product of {m} rows of K = {k}: expected {} inputs and {} outputs, got {} and {}",
            m * k,
            m * n,
            a.len(),
            out.len()
        );
        let simd = Simd::for_isa(isa);
        let threads = super::team::threads(executor);
        let shares = if m * k * n >= MIN_SPLIT_MACS { threads.min(self.panels()) } else { 1 };
        let mut live = LIVE.take();
        live.keep(a, m, k, self.finite);
        let result = self.product_live(simd, a, &live, shares, clamp, out, executor);
        LIVE.set(live);
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn product_live(
        &self,
        simd: Simd,
        a: &[f32],
        live: &Live,
        shares: usize,
        clamp: (f32, f32),
        out: &mut [f32],
        executor: &Executor,
    ) -> TractResult<()> {
        let (n, m) = (self.n, live.rows());
        ensure!(live.k == self.k && a.len() == m * self.k, "activations kept for another product");
        let row = |r: usize| live.row(r, a);
        if shares <= 1 {
            for (r, o) in out.chunks_exact_mut(n).enumerate() {
                self.gemv_cols(simd, row(r), 0, clamp, o);
            }
            return Ok(());
        }
        // Chunks of a few groups of panels of one row, claimed by this thread and the pool's (see `team::share`).
        let panels = self.panels();
        let per_chunk = panels.div_ceil(shares * super::team::CHUNKS_PER_THREAD).next_multiple_of(GROUP);
        let per_row = panels.div_ceil(per_chunk);
        let dst = super::team::Out::new(out);
        let ok = super::team::share(executor, m * per_row, &|c| {
            let (r, part) = (c / per_row, c % per_row);
            let first = part * per_chunk * PANEL;
            let last = ((part + 1) * per_chunk * PANEL).min(n);
            // SAFETY: chunk `c` alone writes columns `first..last` of row `r`, inside `out` (m × n).
            let o = unsafe { dst.part(r * n + first, last - first) };
            self.gemv_cols(simd, row(r), first, clamp, o);
        });
        ensure!(ok, "a chunk of the f32 matrix-vector product panicked");
        Ok(())
    }
}

/// The activations a product reads, row by row. A row with at least one zero in 8 (a ReLU layer's output, a
/// digit's blank pixels) keeps only its non-zero values, listed with their weight rows' offsets in a panel
/// (`k · PANEL`), so that only those rows are read; other rows are read whole, straight from the input with a
/// fixed table of offsets (a list would cost a pass and spare little). With weights that are not all finite every
/// value is read (`0 · ∞` is NaN). Kept per thread between products (no allocation once warm).
#[derive(Default)]
struct Live {
    k: usize,
    xs: Vec<f32>,
    offs: Vec<usize>,
    /// `k · PANEL` for every `k` of the longest rows seen: the offsets of a row read whole.
    all: Vec<usize>,
    /// Per row: the range of `xs` / `offs` it keeps, or `None` when it is read whole.
    rows: Vec<Option<std::ops::Range<usize>>>,
}

impl Live {
    /// Looks at the `m` rows of `K` values of `a` (`m · K` values); `skip` allows skipping zeros.
    fn keep(&mut self, a: &[f32], m: usize, k: usize, skip: bool) {
        debug_assert_eq!(a.len(), m * k);
        self.k = k;
        if self.all.len() < k {
            self.all = (0..k).map(|kk| kk * PANEL).collect();
        }
        self.rows.clear();
        let mut n = 0;
        for row in 0..m {
            let values = &a[row * k..(row + 1) * k];
            if !skip || 8 * values.iter().filter(|&&x| x == 0.0).count() < k {
                self.rows.push(None);
                continue;
            }
            if self.xs.len() < n + k {
                self.xs.resize(n + k, 0.0);
                self.offs.resize(n + k, 0);
            }
            let start = n;
            // Branch-free (a ReLU's zeros fall at random): every value is written, and the next one overwrites it
            // unless it is kept. `n` never passes `start` + the index being read.
            for (kk, &x) in values.iter().enumerate() {
                self.xs[n] = x;
                self.offs[n] = kk * PANEL;
                n += usize::from(x != 0.0);
            }
            self.rows.push(Some(start..n));
        }
    }

    fn rows(&self) -> usize {
        self.rows.len()
    }

    /// Row `r` of `a` (the activations given to [`Live::keep`]): the values to read and their weight rows' offsets.
    fn row<'s>(&'s self, r: usize, a: &'s [f32]) -> (&'s [f32], &'s [usize]) {
        match &self.rows[r] {
            Some(range) => (&self.xs[range.clone()], &self.offs[range.clone()]),
            None => (&a[r * self.k..(r + 1) * self.k], &self.all[..self.k]),
        }
    }
}

thread_local! {
    /// [`PackedF32::product`]'s kept activations, per thread.
    static LIVE: std::cell::Cell<Live> = std::cell::Cell::new(Live::default());
}

/// One panel: `acc[l] = Σ_i a[i] · w[offs[i] + l] + bias[l]`.
fn panel(simd: Simd, a: &[f32], offs: &[usize], w: &[f32], bias: &[f32], acc: &mut [f32; PANEL]) {
    debug_assert!(offs.len() == a.len() && offs.iter().all(|&o| o + PANEL <= w.len()) && bias.len() == PANEL);
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Simd::Avx512 is only chosen when the CPU has AVX-512F; lengths checked above.
        Simd::Avx512 => unsafe { x86::panel_avx512(a, offs, w, bias, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Simd::Avx2Fma is only chosen when the CPU has AVX2 and FMA.
        Simd::Avx2Fma => unsafe { x86::panel_avx2(a, offs, w, bias, acc) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: Simd::Neon is only chosen when the CPU has NEON.
        Simd::Neon => unsafe { arm::panel_neon(a, offs, w, bias, acc) },
        _ => panel_scalar(a, offs, w, bias, acc),
    }
}

/// [`GROUP`] consecutive panels (`w` holds their weights one panel after the other): `acc[16g + l]` is [`panel`]'s
/// sum for panel `g` up to rounding (the order differs; a given panel always goes through the same one of the two,
/// see [`GROUP`]).
fn group(simd: Simd, a: &[f32], offs: &[usize], w: &[f32], bias: &[f32], acc: &mut [f32; GROUP * PANEL]) {
    let len = w.len() / GROUP;
    debug_assert!(offs.len() == a.len() && offs.iter().all(|&o| o + PANEL <= len) && bias.len() == GROUP * PANEL);
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Simd::Avx512 is only chosen when the CPU has AVX-512F; lengths checked above.
        Simd::Avx512 => unsafe { x86::group_avx512(a, offs, w, bias, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Simd::Avx2Fma is only chosen when the CPU has AVX2 and FMA.
        Simd::Avx2Fma => unsafe { x86::group_avx2(a, offs, w, bias, acc) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: Simd::Neon is only chosen when the CPU has NEON.
        Simd::Neon => unsafe { arm::group_neon(a, offs, w, bias, acc) },
        _ => {
            for (g, acc) in acc.chunks_exact_mut(PANEL).enumerate() {
                let acc: &mut [f32; PANEL] = acc.try_into().expect("a panel of sums");
                panel_scalar(a, offs, &w[g * len..(g + 1) * len], &bias[g * PANEL..(g + 1) * PANEL], acc);
            }
        }
    }
}

fn panel_scalar(a: &[f32], offs: &[usize], w: &[f32], bias: &[f32], acc: &mut [f32; PANEL]) {
    *acc = [0f32; PANEL];
    for (x, &o) in a.iter().zip(offs) {
        let row = &w[o..o + PANEL];
        for (s, v) in acc.iter_mut().zip(row) {
            *s += x * v;
        }
    }
    for (s, b) in acc.iter_mut().zip(bias) {
        *s += b;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{GROUP, PANEL};

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn panel_avx512(a: &[f32], offs: &[usize], w: &[f32], bias: &[f32], acc: &mut [f32; PANEL]) {
        let k = a.len();
        let (a, o, w) = (a.as_ptr(), offs.as_ptr(), w.as_ptr());
        let mut s = [_mm512_setzero_ps(); 4];
        let mut kk = 0;
        // SAFETY: kk + 3 < k and every offset starts a row of w's 16 values (checked in `gemv_cols`).
        unsafe {
            while kk + 4 <= k {
                for (u, s) in s.iter_mut().enumerate() {
                    *s = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(kk + u)), _mm512_loadu_ps(w.add(*o.add(kk + u))), *s);
                }
                kk += 4;
            }
            while kk < k {
                s[0] = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(kk)), _mm512_loadu_ps(w.add(*o.add(kk))), s[0]);
                kk += 1;
            }
            let t = _mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3]));
            _mm512_storeu_ps(acc.as_mut_ptr(), _mm512_add_ps(t, _mm512_loadu_ps(bias.as_ptr())));
        }
    }

    /// [`super::group`]: four streams of weights, one broadcast of each activation for all of them (16
    /// accumulators: panel × inputs `k mod 4`).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn group_avx512(
        a: &[f32],
        offs: &[usize],
        w: &[f32],
        bias: &[f32],
        acc: &mut [f32; GROUP * PANEL],
    ) {
        let k = a.len();
        let (a, o, w, stride) = (a.as_ptr(), offs.as_ptr(), w.as_ptr(), w.len() / GROUP);
        // s[4g + u]: panel g, inputs kk ≡ u (mod 4); the tail goes to u = 0.
        let mut s = [_mm512_setzero_ps(); 4 * GROUP];
        let mut kk = 0;
        // SAFETY: kk + 3 < k, and every offset starts a row of each of w's GROUP panels (checked in `gemv_cols`).
        unsafe {
            while kk + 4 <= k {
                for u in 0..4 {
                    let x = _mm512_set1_ps(*a.add(kk + u));
                    let p = w.add(*o.add(kk + u));
                    for g in 0..GROUP {
                        s[4 * g + u] = _mm512_fmadd_ps(x, _mm512_loadu_ps(p.add(g * stride)), s[4 * g + u]);
                    }
                }
                kk += 4;
            }
            while kk < k {
                let x = _mm512_set1_ps(*a.add(kk));
                let p = w.add(*o.add(kk));
                for g in 0..GROUP {
                    s[4 * g] = _mm512_fmadd_ps(x, _mm512_loadu_ps(p.add(g * stride)), s[4 * g]);
                }
                kk += 1;
            }
            for g in 0..GROUP {
                let t = _mm512_add_ps(_mm512_add_ps(s[4 * g], s[4 * g + 1]), _mm512_add_ps(s[4 * g + 2], s[4 * g + 3]));
                let t = _mm512_add_ps(t, _mm512_loadu_ps(bias.as_ptr().add(g * PANEL)));
                _mm512_storeu_ps(acc.as_mut_ptr().add(g * PANEL), t);
            }
        }
    }

    /// [`super::group`] on AVX2: 8 accumulators (panel × half), the inputs in order (16 ymm registers leave no
    /// room for a second set).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn group_avx2(
        a: &[f32],
        offs: &[usize],
        w: &[f32],
        bias: &[f32],
        acc: &mut [f32; GROUP * PANEL],
    ) {
        let k = a.len();
        let (a, o, w, stride) = (a.as_ptr(), offs.as_ptr(), w.as_ptr(), w.len() / GROUP);
        let mut s = [_mm256_setzero_ps(); 2 * GROUP];
        // SAFETY: kk < k, and every offset starts a row of each of w's GROUP panels (checked in `gemv_cols`).
        unsafe {
            for kk in 0..k {
                let x = _mm256_set1_ps(*a.add(kk));
                let p = w.add(*o.add(kk));
                for g in 0..GROUP {
                    let q = p.add(g * stride);
                    s[2 * g] = _mm256_fmadd_ps(x, _mm256_loadu_ps(q), s[2 * g]);
                    s[2 * g + 1] = _mm256_fmadd_ps(x, _mm256_loadu_ps(q.add(8)), s[2 * g + 1]);
                }
            }
            for (i, s) in s.iter().enumerate() {
                let t = _mm256_add_ps(*s, _mm256_loadu_ps(bias.as_ptr().add(8 * i)));
                _mm256_storeu_ps(acc.as_mut_ptr().add(8 * i), t);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn panel_avx2(a: &[f32], offs: &[usize], w: &[f32], bias: &[f32], acc: &mut [f32; PANEL]) {
        let k = a.len();
        let (a, o, w) = (a.as_ptr(), offs.as_ptr(), w.as_ptr());
        let mut s = [_mm256_setzero_ps(); 8];
        let mut kk = 0;
        // SAFETY: kk + 3 < k and every offset starts a row of w's 16 values (checked in `gemv_cols`).
        unsafe {
            while kk + 4 <= k {
                for u in 0..4 {
                    let x = _mm256_set1_ps(*a.add(kk + u));
                    let p = w.add(*o.add(kk + u));
                    s[2 * u] = _mm256_fmadd_ps(x, _mm256_loadu_ps(p), s[2 * u]);
                    s[2 * u + 1] = _mm256_fmadd_ps(x, _mm256_loadu_ps(p.add(8)), s[2 * u + 1]);
                }
                kk += 4;
            }
            while kk < k {
                let x = _mm256_set1_ps(*a.add(kk));
                let p = w.add(*o.add(kk));
                s[0] = _mm256_fmadd_ps(x, _mm256_loadu_ps(p), s[0]);
                s[1] = _mm256_fmadd_ps(x, _mm256_loadu_ps(p.add(8)), s[1]);
                kk += 1;
            }
            for h in 0..2 {
                let t = _mm256_add_ps(_mm256_add_ps(s[h], s[2 + h]), _mm256_add_ps(s[4 + h], s[6 + h]));
                let t = _mm256_add_ps(t, _mm256_loadu_ps(bias.as_ptr().add(8 * h)));
                _mm256_storeu_ps(acc.as_mut_ptr().add(8 * h), t);
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    use super::{GROUP, PANEL};

    #[target_feature(enable = "neon")]
    pub(super) unsafe fn panel_neon(a: &[f32], offs: &[usize], w: &[f32], bias: &[f32], acc: &mut [f32; PANEL]) {
        let k = a.len();
        let (a, o, w) = (a.as_ptr(), offs.as_ptr(), w.as_ptr());
        let mut s = [vdupq_n_f32(0.0); 8];
        let mut kk = 0;
        // SAFETY: kk + 1 < k and every offset starts a row of w's 16 values (checked in `gemv_cols`).
        unsafe {
            while kk + 2 <= k {
                for u in 0..2 {
                    let x = vdupq_n_f32(*a.add(kk + u));
                    let p = w.add(*o.add(kk + u));
                    for q in 0..4 {
                        s[4 * u + q] = vfmaq_f32(s[4 * u + q], x, vld1q_f32(p.add(4 * q)));
                    }
                }
                kk += 2;
            }
            while kk < k {
                let x = vdupq_n_f32(*a.add(kk));
                let p = w.add(*o.add(kk));
                for (q, s) in s.iter_mut().enumerate().take(4) {
                    *s = vfmaq_f32(*s, x, vld1q_f32(p.add(4 * q)));
                }
                kk += 1;
            }
            for q in 0..4 {
                let t = vaddq_f32(vaddq_f32(s[q], s[4 + q]), vld1q_f32(bias.as_ptr().add(4 * q)));
                vst1q_f32(acc.as_mut_ptr().add(4 * q), t);
            }
        }
    }

    /// [`super::group`] on NEON: 16 accumulators (panel × quarter), four activations loaded at once and each
    /// used from its lane (`fmla v, w, a[u]`), no broadcast.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn group_neon(
        a: &[f32],
        offs: &[usize],
        w: &[f32],
        bias: &[f32],
        acc: &mut [f32; GROUP * PANEL],
    ) {
        let k = a.len();
        let (a, o, w, stride) = (a.as_ptr(), offs.as_ptr(), w.as_ptr(), w.len() / GROUP);
        let mut s = [vdupq_n_f32(0.0); 4 * GROUP];
        let mut kk = 0;
        // SAFETY: kk + 3 < k (or kk < k in the tail), and every offset starts a row of each of w's GROUP panels
        // (checked in `gemv_cols`).
        unsafe {
            macro_rules! step {
                ($x:expr, $u:literal) => {
                    let p = w.add(*o.add(kk + $u));
                    for g in 0..GROUP {
                        for q in 0..4 {
                            let v = vld1q_f32(p.add(g * stride + 4 * q));
                            s[4 * g + q] = vfmaq_laneq_f32::<$u>(s[4 * g + q], v, $x);
                        }
                    }
                };
            }
            while kk + 4 <= k {
                let x = vld1q_f32(a.add(kk));
                step!(x, 0);
                step!(x, 1);
                step!(x, 2);
                step!(x, 3);
                kk += 4;
            }
            while kk < k {
                let x = vdupq_n_f32(*a.add(kk));
                step!(x, 0);
                kk += 1;
            }
            for (i, s) in s.iter().enumerate() {
                vst1q_f32(acc.as_mut_ptr().add(4 * i), vaddq_f32(*s, vld1q_f32(bias.as_ptr().add(4 * i))));
            }
        }
    }
}

/// The definition, for tests: `out[j] = Σ_k a[k] · w[k·n + j] + bias[j]` over a row-major `[K, N]` matrix.
pub fn reference(a: &[f32], w: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
    (0..n)
        .map(|j| a.iter().enumerate().map(|(k, x)| x * w[k * n + j]).sum::<f32>() + bias.map_or(0.0, |b| b[j]))
        .collect()
}
