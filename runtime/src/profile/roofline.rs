//! The memory roofline of a batch-1 model: how long one core takes just to read the model's parameter bytes,
//! once from its L2 cache and once from a buffer of the parameters' own size (which sits wherever the cache
//! hierarchy keeps that much data, like the model's weights). A batch-1 dense layer reads every weight once
//! per run, so no runtime can beat the second time, and the first is the bound the speed issue names ("within 2×
//! of the L2-bandwidth bound"). `pupil bench` times both as contenders in its own turns, beside pupil and ONNX
//! Runtime, so the ratios hold under the same clock, cache and neighbour conditions.

use std::hint::black_box;

/// A buffer this size is read from L2 on every CPU pupil targets: above every L1d (32–64 KiB), below every L2
/// (256 KiB and up on phone cores, 1–2 MiB on servers).
pub const L2_RESIDENT_BYTES: usize = 128 * 1024;

/// Reads `bytes` bytes per run from a buffer of `buffer` bytes (cyclically when `bytes > buffer`).
pub struct Reader {
    buffer: Vec<u8>,
    bytes: usize,
}

impl Reader {
    /// Reads the parameters' byte count from an L2-resident buffer.
    pub fn from_l2(bytes: usize) -> Reader {
        Reader::new(L2_RESIDENT_BYTES.min(bytes.max(1)), bytes)
    }

    /// Reads the parameters' byte count once from a buffer of that size.
    pub fn from_own_buffer(bytes: usize) -> Reader {
        Reader::new(bytes.max(1), bytes)
    }

    fn new(buffer: usize, bytes: usize) -> Reader {
        // Distinct non-zero bytes, so the reads cannot be elided and the pages are really backed.
        Reader { buffer: (0..buffer).map(|i| (i % 251) as u8 + 1).collect(), bytes }
    }

    /// One run: reads the bytes, returns an OR of them (so the loads are not dead).
    pub fn run(&self) -> u64 {
        let mut left = self.bytes;
        let mut acc = 0u64;
        while left > 0 {
            let take = left.min(self.buffer.len());
            acc |= read(&self.buffer[..take]);
            left -= take;
        }
        black_box(acc)
    }
}

/// OR of all bytes of `buf`, folded into a u64 (bytes at any offset land in some byte of it), read with the
/// widest loads this CPU has: 8 independent vector registers per block, so loads, not a dependency chain, bound it.
fn read(buf: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is available (checked above).
            return unsafe { x86::read_avx512(buf) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is available (checked above).
            return unsafe { x86::read_avx2(buf) };
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            // SAFETY: NEON is available (checked above).
            return unsafe { arm::read_neon(buf) };
        }
    }
    read_portable(buf)
}

/// The OR of `bytes` folded into a u64 (byte `i` into byte `i % 8`).
fn fold_bytes(bytes: &[u8]) -> u64 {
    bytes.iter().enumerate().fold(0u64, |t, (i, &b)| t | (b as u64) << (8 * (i % 8)))
}

fn read_portable(buf: &[u8]) -> u64 {
    let mut acc = [0u64; 8];
    let mut words = buf.chunks_exact(64);
    for block in &mut words {
        for (a, w) in acc.iter_mut().zip(block.chunks_exact(8)) {
            *a |= u64::from_le_bytes(w.try_into().expect("8 bytes"));
        }
    }
    acc.iter().fold(fold_bytes(words.remainder()), |t, &a| t | a)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::fold_bytes;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn read_avx512(buf: &[u8]) -> u64 {
        let blocks = buf.len() / 512;
        let p = buf.as_ptr();
        let mut acc = [_mm512_setzero_si512(); 8];
        for b in 0..blocks {
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: `b * 512 + j * 64 + 64 <= blocks * 512 <= buf.len()`.
                *a = _mm512_or_si512(*a, unsafe { _mm512_loadu_si512(p.add(b * 512 + j * 64) as *const _) });
            }
        }
        let v = acc.iter().fold(_mm512_setzero_si512(), |t, &a| _mm512_or_si512(t, a));
        let mut lanes = [0u64; 8];
        // SAFETY: `lanes` holds 64 bytes.
        unsafe { _mm512_storeu_si512(lanes.as_mut_ptr() as *mut _, v) };
        lanes.iter().fold(fold_bytes(&buf[blocks * 512..]), |t, &l| t | l)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn read_avx2(buf: &[u8]) -> u64 {
        let blocks = buf.len() / 256;
        let p = buf.as_ptr();
        let mut acc = [_mm256_setzero_si256(); 8];
        for b in 0..blocks {
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: `b * 256 + j * 32 + 32 <= blocks * 256 <= buf.len()`.
                *a = _mm256_or_si256(*a, unsafe { _mm256_loadu_si256(p.add(b * 256 + j * 32) as *const _) });
            }
        }
        let v = acc.iter().fold(_mm256_setzero_si256(), |t, &a| _mm256_or_si256(t, a));
        let mut lanes = [0u64; 4];
        // SAFETY: `lanes` holds 32 bytes.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut _, v) };
        lanes.iter().fold(fold_bytes(&buf[blocks * 256..]), |t, &l| t | l)
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    use super::fold_bytes;

    #[target_feature(enable = "neon")]
    pub(super) unsafe fn read_neon(buf: &[u8]) -> u64 {
        let blocks = buf.len() / 128;
        let p = buf.as_ptr();
        let mut acc = [vdupq_n_u8(0); 8];
        for b in 0..blocks {
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: `b * 128 + j * 16 + 16 <= blocks * 128 <= buf.len()`.
                *a = vorrq_u8(*a, unsafe { vld1q_u8(p.add(b * 128 + j * 16)) });
            }
        }
        let v = vreinterpretq_u64_u8(acc.iter().fold(vdupq_n_u8(0), |t, &a| vorrq_u8(t, a)));
        (vgetq_lane_u64::<0>(v) | vgetq_lane_u64::<1>(v)) | fold_bytes(&buf[blocks * 128..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: the OR of every byte.
    fn or_bytes(buf: &[u8]) -> u8 {
        buf.iter().fold(0, |t, &b| t | b)
    }

    /// A u64 folded to one byte.
    fn folded(v: u64) -> u8 {
        v.to_le_bytes().iter().fold(0, |t, &b| t | b)
    }

    proptest::proptest! {
        /// Every byte is read: a single set bit anywhere (block, tail, any lane) shows in the result.
        #[test]
        fn every_byte_is_read(len in 1usize..2000, at in 0usize..2000, bit in 0u32..8) {
            let at = at % len;
            let mut buf = vec![0u8; len];
            buf[at] = 1 << bit;
            // The bit lands in some byte of the u64, so compare the word folded to a byte.
            proptest::prop_assert_eq!(folded(read(&buf)), or_bytes(&buf));
            proptest::prop_assert_eq!(folded(read_portable(&buf)), or_bytes(&buf));
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is available (checked above).
                proptest::prop_assert_eq!(folded(unsafe { x86::read_avx2(&buf) }), or_bytes(&buf));
            }
        }
    }

    #[test]
    fn a_reader_reads_the_parameters_byte_count_cyclically() {
        let l2 = Reader::from_l2(1_000_000);
        assert_eq!(l2.buffer.len(), L2_RESIDENT_BYTES);
        assert_eq!(l2.bytes, 1_000_000);
        let own = Reader::from_own_buffer(1_000_000);
        assert_eq!(own.buffer.len(), 1_000_000);
        // Smaller than the L2 buffer: the buffer is the parameters' size, read once.
        assert_eq!(Reader::from_l2(1000).buffer.len(), 1000);
        assert_ne!(own.run(), 0);
    }
}
