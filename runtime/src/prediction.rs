//! What `predict` returns: logits, probabilities and the top classes with their labels.

use serde::{Deserialize, Serialize};

/// One ranked class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Class {
    pub index: usize,
    pub label: Option<String>,
    pub probability: f32,
    pub logit: f32,
}

/// The result of one inference on one example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Raw outputs of the model (log-probabilities when the graph ends in Softmax).
    pub logits: Vec<f32>,
    /// Softmax of the logits.
    pub probabilities: Vec<f32>,
    /// The `k` most probable classes, most probable first.
    pub top: Vec<Class>,
}

impl Prediction {
    /// Builds a prediction from one example's outputs.
    pub fn from_outputs(outputs: &[f32], output_is_probability: bool, labels: Option<&[String]>, k: usize) -> Self {
        let (logits, probabilities) = if output_is_probability {
            (outputs.iter().map(|p| p.max(f32::MIN_POSITIVE).ln()).collect(), outputs.to_vec())
        } else {
            (outputs.to_vec(), softmax(outputs))
        };
        let top = top_k(&probabilities, k)
            .into_iter()
            .map(|index| Class {
                index,
                label: labels.and_then(|l| l.get(index).cloned()),
                probability: probabilities[index],
                logit: logits[index],
            })
            .collect();
        Prediction { logits, probabilities, top }
    }

    /// The most probable class index.
    pub fn class(&self) -> usize {
        self.top.first().map(|c| c.index).unwrap_or(0)
    }
}

/// Numerically stable softmax.
pub fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Indices of the `k` largest values, largest first (ties keep the lower index first).
pub fn top_k(x: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Index of the largest value (the first one on ties); 0 for an empty slice.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let p = softmax(&[1.0, 3.0, 2.0, 4.0]);
        assert!(softmax(&[0.0, 1000.0]).iter().all(|v| v.is_finite()));
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(top_k(&p, 4), vec![3, 1, 2, 0]);
    }

    #[test]
    fn prediction_labels_and_order() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let p = Prediction::from_outputs(&[0.1, 2.0, 1.0], false, Some(&labels), 2);
        assert_eq!(p.top.len(), 2);
        assert_eq!(p.top[0].label.as_deref(), Some("b"));
        assert_eq!(p.top[1].index, 2);
        assert!(p.top[0].probability > p.top[1].probability);
        assert_eq!(argmax(&p.logits), 1);
    }
}
