//! `Pages`: the buffers of packed weights, allocated so that large ones lie on 2 MiB pages where the OS grants
//! them (`madvise(MADV_HUGEPAGE)` on Linux and Android). A dense layer reads all of its weights every run; on 4 KiB
//! pages the teacher's 9.6 MB are 2,350 pages, more than the data TLB keeps once the core has run anything else
//! (after a pause, another process), so each run starts with thousands of page walks. On 2 MiB pages they are 5.

use std::alloc::Layout;
use std::ptr::NonNull;

/// The size (and alignment) of a huge page on x86-64 and on aarch64 kernels with 4 KiB base pages (Android's).
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// Alignment of every buffer that is too small for a huge page: one cache line, so a vector load of a panel
/// never splits a line more than its offset makes it.
const LINE: usize = 64;

/// A fixed-length buffer of plain values, zeroed when made, that the kernels read like a slice (`Deref<[T]>`).
/// Buffers of at least [`HUGE_PAGE`] bytes are aligned to it, and their whole huge pages are offered to the
/// kernel as transparent huge pages before the first write (which is what makes the kernel back them with huge
/// pages at fault time; the tail past the last whole page stays on small pages, so nothing is rounded up).
/// `PUPIL_HUGE_PAGES=off` in the environment keeps every buffer on small pages (for comparisons).
pub(crate) struct Pages<T: bytemuck::Pod> {
    ptr: NonNull<T>,
    len: usize,
    /// `None` for an empty buffer (nothing allocated).
    layout: Option<Layout>,
    huge: bool,
}

// SAFETY: `Pages` owns its allocation like a `Vec<T>` does; `T: Pod` has no interior mutability or thread
// affinity.
unsafe impl<T: bytemuck::Pod> Send for Pages<T> {}
unsafe impl<T: bytemuck::Pod> Sync for Pages<T> {}

impl<T: bytemuck::Pod> Pages<T> {
    /// `len` zeros (the all-zero bit pattern is a valid `T`: it is `Pod`).
    pub(crate) fn zeroed(len: usize) -> Pages<T> {
        let bytes = len.checked_mul(size_of::<T>()).expect("buffer size overflows usize");
        if bytes == 0 {
            return Pages { ptr: NonNull::dangling(), len, layout: None, huge: false };
        }
        let big = bytes >= HUGE_PAGE && wanted();
        let align = if big { HUGE_PAGE } else { LINE.max(align_of::<T>()) };
        let layout = Layout::from_size_align(bytes, align).expect("buffer layout");
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { std::alloc::alloc(layout) };
        let Some(raw) = NonNull::new(raw) else { std::alloc::handle_alloc_error(layout) };
        let huge = big && advise_huge(raw.as_ptr(), bytes / HUGE_PAGE * HUGE_PAGE);
        // SAFETY: `raw` points to `bytes` writable bytes; zeroing them after the advice makes the first touch of
        // each whole huge page fault one in.
        unsafe { raw.as_ptr().write_bytes(0, bytes) };
        Pages { ptr: raw.cast(), len, layout: Some(layout), huge }
    }

    /// A copy of `values` in a new buffer.
    pub(crate) fn from_slice(values: &[T]) -> Pages<T> {
        let mut p = Pages::zeroed(values.len());
        p.copy_from_slice(values);
        p
    }

    /// Whether the kernel accepted the buffer's whole 2 MiB pages as huge-page candidates (it backs them with
    /// huge pages when it has free 2 MiB blocks at the first write; `false` for buffers under [`HUGE_PAGE`]).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn on_huge_pages(&self) -> bool {
        self.huge
    }
}

/// Whether large buffers ask for huge pages: yes unless `PUPIL_HUGE_PAGES=off` (or `0` / `false`).
fn wanted() -> bool {
    static WANTED: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        !matches!(std::env::var("PUPIL_HUGE_PAGES").as_deref(), Ok("off") | Ok("0") | Ok("false"))
    });
    *WANTED
}

/// Offers `bytes` (whole huge pages) from `start` (huge-page aligned) as transparent huge pages. Returns whether
/// the kernel took the advice (it refuses where transparent huge pages are compiled out or set to `never`).
fn advise_huge(start: *mut u8, bytes: usize) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: `start .. start + bytes` lies inside one live allocation; the advice changes how the kernel
        // backs those pages, never their contents or the mapping.
        unsafe { libc::madvise(start.cast(), bytes, libc::MADV_HUGEPAGE) == 0 }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (start, bytes);
        false
    }
}

impl<T: bytemuck::Pod> Drop for Pages<T> {
    fn drop(&mut self) {
        if let Some(layout) = self.layout {
            // SAFETY: allocated in `zeroed` with this very layout, and freed once.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), layout) }
        }
    }
}

impl<T: bytemuck::Pod> std::ops::Deref for Pages<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` holds `len` initialised values (zeroed, then written through `DerefMut` only), or is
        // dangling with `len` 0 / a zero-sized `T`, which a slice allows.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: bytemuck::Pod> std::ops::DerefMut for Pages<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: bytemuck::Pod> Clone for Pages<T> {
    fn clone(&self) -> Self {
        Pages::from_slice(self)
    }
}

impl<T: bytemuck::Pod + PartialEq> PartialEq for Pages<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: bytemuck::Pod + Eq> Eq for Pages<T> {}

impl<T: bytemuck::Pod> std::fmt::Debug for Pages<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pages({} × {}, huge pages: {})", self.len, std::any::type_name::<T>(), self.huge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this program runs under a user-mode emulator on another kind of CPU (qemu-user on x86-64 passes
    /// the host's `/proc/cpuinfo` through, with x86's `vendor_id` lines).
    #[cfg(target_os = "linux")]
    fn emulated() -> bool {
        !cfg!(target_arch = "x86_64")
            && std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.lines().any(|l| l.starts_with("vendor_id")))
    }

    #[test]
    fn buffers_start_zeroed_keep_writes_and_clone_into_their_own_memory() {
        for len in [0usize, 1, 17, 1000, HUGE_PAGE / 4 + 3, HUGE_PAGE / 2 + 12_345] {
            let mut a = Pages::<f32>::zeroed(len);
            assert_eq!(a.len(), len);
            assert!(a.iter().all(|&v| v == 0.0), "{len} values: not all zero");
            for (i, v) in a.iter_mut().enumerate() {
                *v = i as f32;
            }
            let mut b = a.clone();
            assert_eq!(a, b, "{len} values: the clone differs");
            if len > 0 {
                b[len - 1] = -1.0;
                assert_eq!(a[len - 1], (len - 1) as f32, "{len} values: writing the clone changed the original");
                assert_ne!(a, b);
                assert_ne!(a.as_ptr(), b.as_ptr());
            }
        }
    }

    #[test]
    fn small_buffers_are_line_aligned_and_large_ones_huge_page_aligned() {
        let small = Pages::<i8>::zeroed(HUGE_PAGE - 1);
        assert_eq!(small.as_ptr() as usize % LINE, 0, "a small buffer starts on a cache line");
        assert!(!small.on_huge_pages(), "under 2 MiB: no huge pages asked");
        let large = Pages::<f32>::zeroed(HUGE_PAGE / 4 * 3 + 5);
        assert_eq!(large.as_ptr() as usize % HUGE_PAGE, 0, "a buffer of 3 MiB + 20 B starts on a 2 MiB boundary");
    }

    /// Where the kernel offers transparent huge pages (its setting is not `[never]`), a buffer of three huge
    /// pages and a bit is advised and, once written, backed by at least one huge page (`AnonHugePages` of its
    /// mapping in `/proc/self/smaps`). Without the advice (the `madvise` mode every Debian and Android kernel
    /// ships) the kernel gives it small pages only.
    #[cfg(target_os = "linux")]
    #[test]
    fn large_buffers_are_backed_by_huge_pages_where_the_kernel_offers_them() {
        let Ok(setting) = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled") else {
            return; // a kernel without transparent huge pages
        };
        if setting.contains("[never]") {
            return;
        }
        // The kernel grants a huge page only when it finds (or compacts) a free 2 MiB block at the first write;
        // on a busy host that can fail now and then, so up to five buffers are made, kept alive, and one backed
        // by a huge page is enough. Without the advice none ever is.
        let mut kept = vec![];
        let mut seen = vec![];
        for _ in 0..5 {
            let p = Pages::<f32>::zeroed(HUGE_PAGE / 4 * 3 + 1000);
            if !wanted() {
                assert!(!p.on_huge_pages(), "PUPIL_HUGE_PAGES=off, yet huge pages were asked");
                return;
            }
            assert!(p.on_huge_pages(), "the kernel refused the advice (setting: {})", setting.trim());
            if emulated() {
                return; // qemu-user: /proc/self/smaps describes the emulator's memory, not this program's pages
            }
            let huge_kb = huge_kb_at(p.as_ptr() as usize).expect("the buffer's mapping in /proc/self/smaps");
            if huge_kb >= HUGE_PAGE >> 10 {
                return;
            }
            seen.push(huge_kb);
            kept.push(p);
        }
        panic!("kB of each buffer's mapping on huge pages: {seen:?}, expected ≥ 2048 for one of them");
    }

    /// `AnonHugePages` (kB) of the mapping that holds `at`, from `/proc/self/smaps`.
    #[cfg(target_os = "linux")]
    fn huge_kb_at(at: usize) -> Option<usize> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
        let mut inside = false;
        let mut huge_kb = None;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((lo, hi)) = range.split_once('-')
                && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = (lo..hi).contains(&at);
            } else if inside && let Some(kb) = line.strip_prefix("AnonHugePages:") {
                huge_kb = kb.trim().trim_end_matches(" kB").trim().parse::<usize>().ok();
            }
        }
        huge_kb
    }
}
