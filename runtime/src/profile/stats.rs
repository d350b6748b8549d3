//! Latency statistics over repeated runs: min, percentiles (nearest rank), max, mean and standard deviation.

use serde::{Deserialize, Serialize};

/// Summary of run times, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    /// Timed runs (after warm-up).
    pub runs: usize,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// Population standard deviation.
    pub std_ms: f64,
    /// Every run's time, in the order they ran (for histograms and your own statistics).
    pub samples_ms: Vec<f64>,
}

impl LatencyStats {
    /// Statistics of a non-empty list of samples (milliseconds). `None` when `samples` is empty or has a
    /// non-finite value.
    pub fn from_samples(samples: Vec<f64>) -> Option<Self> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let mean = sorted.iter().sum::<f64>() / n as f64;
        let var = sorted.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n as f64;
        Some(LatencyStats {
            runs: n,
            min_ms: sorted[0],
            p50_ms: percentile(&sorted, 50.0),
            p90_ms: percentile(&sorted, 90.0),
            p99_ms: percentile(&sorted, 99.0),
            max_ms: sorted[n - 1],
            // The mean of sorted floats can round a hair outside [min, max]; keep the invariant.
            mean_ms: mean.clamp(sorted[0], sorted[n - 1]),
            std_ms: var.sqrt(),
            samples_ms: samples,
        })
    }
}

/// Nearest-rank percentile of sorted samples: the smallest sample with at least `p`% of samples at or below it.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_on_one_to_hundred() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), 50.0);
        assert_eq!(percentile(&s, 90.0), 90.0);
        assert_eq!(percentile(&s, 99.0), 99.0);
        assert_eq!(percentile(&s, 100.0), 100.0);
        assert_eq!(percentile(&s, 0.0), 1.0);
    }

    #[test]
    fn stats_of_known_samples() {
        let st = LatencyStats::from_samples(vec![4.0, 2.0, 6.0, 8.0]).unwrap();
        assert_eq!((st.min_ms, st.max_ms, st.mean_ms), (2.0, 8.0, 5.0));
        assert_eq!(st.p50_ms, 4.0);
        assert_eq!(st.p99_ms, 8.0);
        assert!((st.std_ms - 5f64.sqrt()).abs() < 1e-12);
        assert_eq!(st.samples_ms, vec![4.0, 2.0, 6.0, 8.0]);
        assert!(LatencyStats::from_samples(vec![]).is_none());
        assert!(LatencyStats::from_samples(vec![1.0, f64::NAN]).is_none());
    }
}
