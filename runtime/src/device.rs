//! Device fingerprint: CPU model, cores, SIMD features, OS and versions, stamped on every parity and profile report.

use serde::{Deserialize, Serialize};

/// What machine a report was made on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceFingerprint {
    pub cpu: String,
    pub arch: String,
    pub cores: usize,
    /// SIMD features the CPU reports (e.g. `avx2`, `avx512vnni`, `neon`, `dotprod`, `fp16`).
    pub simd: Vec<String>,
    pub os: String,
    pub pupil_version: String,
    pub tract_version: String,
}

impl DeviceFingerprint {
    /// Fingerprints the current machine.
    pub fn current() -> Self {
        DeviceFingerprint {
            cpu: cpu_model(),
            arch: std::env::consts::ARCH.to_string(),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            simd: simd_features(),
            os: std::env::consts::OS.to_string(),
            pupil_version: crate::VERSION.to_string(),
            tract_version: crate::TRACT_VERSION.to_string(),
        }
    }
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    for key in ["model name", "Hardware", "CPU part", "Processor"] {
        if let Some(line) = info.lines().find(|l| l.starts_with(key))
            && let Some((_, v)) = line.split_once(':')
        {
            let v = v.trim();
            if !v.is_empty() {
                return v.to_string();
            }
        }
    }
    format!("unknown {}", std::env::consts::ARCH)
}

/// SIMD features detected at run time.
pub fn simd_features() -> Vec<String> {
    #[allow(unused_mut)]
    let mut v: Vec<String> = vec![];
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! check {
            ($($f:tt),*) => { $( if std::arch::is_x86_feature_detected!($f) { v.push($f.to_string()); } )* };
        }
        check!("sse4.1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avxvnni");
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! check {
            ($($f:tt),*) => { $( if std::arch::is_aarch64_feature_detected!($f) { v.push($f.to_string()); } )* };
        }
        check!("neon", "dotprod", "fp16", "i8mm", "bf16", "sve");
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn fingerprint_names_this_machine() {
        let f = super::DeviceFingerprint::current();
        assert_eq!(f.arch, std::env::consts::ARCH);
        assert!(f.cores >= 1);
        assert!(!f.cpu.is_empty());
        #[cfg(target_arch = "aarch64")]
        assert!(f.simd.iter().any(|s| s == "neon"));
    }
}
