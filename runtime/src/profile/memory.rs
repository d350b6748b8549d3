//! Resident memory as the OS reports it: current RSS and its high-water mark, and how much a phase grew them.
//!
//! On Linux and Android the numbers come from `/proc/self/status`: `VmRSS` (resident set now) and `VmHWM`
//! (its peak since the process started, or since the last reset). Writing `5` to `/proc/self/clear_refs`
//! resets `VmHWM` to the current RSS (Linux ≥ 4.0; SELinux may forbid it on some Android builds), which lets a
//! phase's own peak be measured. Elsewhere every function returns `None` / `false`.

use serde::{Deserialize, Serialize};

/// Resident memory at one moment, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemorySnapshot {
    /// Resident set size now (`VmRSS`).
    pub rss: u64,
    /// Peak resident set size so far (`VmHWM`).
    pub peak: u64,
}

/// How much resident memory a phase (loading, inference) took, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryGrowth {
    /// RSS when the phase started.
    pub rss_before: u64,
    /// RSS when the phase ended.
    pub rss_after: u64,
    /// Highest RSS during the phase minus `rss_before` (at least `rss_after - rss_before`).
    pub peak_growth: u64,
    /// Whether `peak_growth` is exact. It is when the high-water mark rose during the phase (or was reset just
    /// before it); otherwise an earlier, higher peak hides the phase's own and `peak_growth` is a lower bound.
    pub exact: bool,
}

impl MemoryGrowth {
    /// Growth between two snapshots taken at the start and the end of a phase.
    pub fn between(before: MemorySnapshot, after: MemorySnapshot) -> Self {
        let retained = after.rss.saturating_sub(before.rss);
        let exact = after.peak > before.peak || before.peak <= before.rss;
        let peak_growth = if exact { after.peak.saturating_sub(before.rss) } else { retained };
        MemoryGrowth { rss_before: before.rss, rss_after: after.rss, peak_growth: peak_growth.max(retained), exact }
    }

    /// Memory the phase kept: `rss_after - rss_before` (0 when it shrank).
    pub fn retained(&self) -> u64 {
        self.rss_after.saturating_sub(self.rss_before)
    }
}

/// Reads the current RSS and peak RSS; `None` where the OS does not expose them.
pub fn snapshot() -> Option<MemorySnapshot> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        parse_status(&status)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        None
    }
}

/// Resets the peak RSS to the current RSS (`echo 5 > /proc/self/clear_refs`). Returns whether it worked.
pub fn reset_peak() -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        std::fs::write("/proc/self/clear_refs", b"5").is_ok()
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        false
    }
}

/// Resets the peak RSS and reads a snapshot whose peak equals its RSS, so that a phase measured from it has an
/// exact peak. Another thread can allocate between the reset and the read and raise the peak again; the reset is
/// then retried, a few times at most. Returns the snapshot and whether such a clean reset happened.
pub fn reset_peak_and_snapshot() -> (bool, Option<MemorySnapshot>) {
    for _ in 0..8 {
        if !reset_peak() {
            return (false, snapshot());
        }
        match snapshot() {
            Some(s) if s.peak <= s.rss => return (true, Some(s)),
            None => return (false, None),
            Some(_) => std::thread::yield_now(),
        }
    }
    (false, snapshot())
}

/// Parses `VmRSS` and `VmHWM` (in kB) out of `/proc/<pid>/status` text.
pub fn parse_status(status: &str) -> Option<MemorySnapshot> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb = line[name.len()..].trim().trim_end_matches("kB").trim();
        kb.parse::<u64>().ok().map(|k| k * 1024)
    };
    let rss = field("VmRSS:")?;
    let peak = field("VmHWM:").unwrap_or(rss).max(rss);
    Some(MemorySnapshot { rss, peak })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let s = "Name:\tpupil\nVmPeak:\t  100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(parse_status(s), Some(MemorySnapshot { rss: 1024 * 1024, peak: 2048 * 1024 }));
        assert_eq!(parse_status("Name: x\n"), None);
    }

    #[test]
    fn growth_is_exact_only_when_the_peak_moved() {
        let before = MemorySnapshot { rss: 100, peak: 500 };
        let g = MemoryGrowth::between(before, MemorySnapshot { rss: 150, peak: 500 });
        assert!(!g.exact);
        assert_eq!(g.peak_growth, 50);
        let g = MemoryGrowth::between(before, MemorySnapshot { rss: 150, peak: 700 });
        assert!(g.exact);
        assert_eq!(g.peak_growth, 600);
        let reset = MemorySnapshot { rss: 100, peak: 100 };
        let g = MemoryGrowth::between(reset, MemorySnapshot { rss: 90, peak: 100 });
        assert!(g.exact);
        assert_eq!((g.peak_growth, g.retained()), (0, 0));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let s = snapshot().expect("linux has /proc/self/status");
        assert!(s.rss > 0 && s.peak >= s.rss);
    }
}
