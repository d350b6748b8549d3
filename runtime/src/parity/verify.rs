//! `Model::verify_bundle`: runs a bundle's inputs through the student on this device and reports parity with the
//! teacher's and the host student's recorded outputs.

use serde::{Deserialize, Serialize};

use super::bundle::{Bundle, CreatedBy};
use super::metrics::{Comparison, Gap, ThresholdFailure, Thresholds, compare, to_logits};
use crate::device::DeviceFingerprint;
use crate::error::{Error, Result};
use crate::model::Model;

/// Examples listed in a report's `worst` lists.
pub const WORST_K: usize = 10;

/// One comparison (a reference's outputs against a candidate's) with the limits that applied and those it missed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GapReport {
    pub gap: Gap,
    /// Name of the reference (a path, or `teacher` / `host student`).
    pub reference: String,
    pub candidate: String,
    pub comparison: Comparison,
    pub thresholds: Thresholds,
    pub failures: Vec<ThresholdFailure>,
}

impl GapReport {
    /// Compares two sets of logits and checks `thresholds`.
    pub fn new(
        gap: Gap,
        reference: (&str, &[f32]),
        candidate: (&str, &[f32]),
        classes: usize,
        labels: Option<&[u32]>,
        thresholds: Thresholds,
        worst_k: usize,
    ) -> Result<GapReport> {
        let comparison = compare(reference.1, candidate.1, classes, labels, worst_k)?;
        let failures = thresholds.check(&comparison);
        Ok(GapReport {
            gap,
            reference: reference.0.to_string(),
            candidate: candidate.0.to_string(),
            comparison,
            thresholds,
            failures,
        })
    }

    /// True when every limit holds.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// What a bundle recorded about itself, repeated in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleSummary {
    pub examples: usize,
    pub classes: usize,
    pub example_shape: Vec<usize>,
    pub data: String,
    pub teacher_sha256: Option<String>,
    pub created_by: CreatedBy,
}

/// The result of checking a student against a parity bundle on this device. Plain data: serialises to JSON for
/// the mobile bindings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParityReport {
    /// sha256 of the student that was run (equal to the bundle's).
    pub student_sha256: String,
    pub bundle: BundleSummary,
    /// Accuracy of the student on this device against the bundle's labels.
    pub accuracy: Option<f64>,
    /// This device's student against the teacher's recorded outputs (the distillation gap, as seen here).
    pub vs_teacher: GapReport,
    /// This device's student against the same student's outputs on the host (the device gap).
    pub vs_host_student: GapReport,
    /// True when no threshold failed.
    pub passed: bool,
    pub device: DeviceFingerprint,
}

impl ParityReport {
    /// Every failed threshold, with the comparison it belongs to.
    pub fn failures(&self) -> Vec<(Gap, &ThresholdFailure)> {
        [&self.vs_teacher, &self.vs_host_student]
            .into_iter()
            .flat_map(|g| g.failures.iter().map(move |f| (g.gap, f)))
            .collect()
    }
}

impl Model {
    /// Runs the bundle's inputs through this model and compares the outputs with the teacher's and the host
    /// student's recorded outputs. Refuses a bundle made for another model ([`Error::Bundle`] naming both hashes)
    /// or whose shapes do not fit this model.
    pub fn verify_bundle(&self, bundle: &Bundle) -> Result<ParityReport> {
        bundle.validate()?;
        let m = &bundle.meta;
        let sha = &self.info().sha256;
        if &m.student_sha256 != sha {
            return Err(Error::Bundle {
                reason: format!(
                    "the bundle was made for the student with sha256 {}, this model's sha256 is {sha}",
                    m.student_sha256
                ),
            });
        }
        if m.example_shape != self.example_shape() {
            return Err(Error::Bundle {
                reason: format!(
                    "the bundle's examples have shape {:?}, the model takes {:?}",
                    m.example_shape,
                    self.example_shape()
                ),
            });
        }
        if m.classes != self.classes() {
            return Err(Error::Bundle {
                reason: format!("the bundle has {} classes, the model outputs {}", m.classes, self.classes()),
            });
        }
        let out = to_logits(&self.run_batch(&bundle.inputs)?, self.output_is_probability());
        let labels = bundle.labels.as_deref();
        let here = "student on this device";
        let vs_teacher = GapReport::new(
            Gap::Distillation,
            ("teacher (recorded)", bundle.teacher_logits.as_slice()),
            (here, out.as_slice()),
            m.classes,
            labels,
            m.thresholds.for_gap(Gap::Distillation),
            WORST_K,
        )?;
        let vs_host_student = GapReport::new(
            Gap::Device,
            ("student on the host (recorded)", bundle.student_logits.as_slice()),
            (here, out.as_slice()),
            m.classes,
            labels,
            m.thresholds.for_gap(Gap::Device),
            WORST_K,
        )?;
        Ok(ParityReport {
            student_sha256: sha.clone(),
            bundle: BundleSummary {
                examples: m.examples,
                classes: m.classes,
                example_shape: m.example_shape.clone(),
                data: m.data.clone(),
                teacher_sha256: m.teacher_sha256.clone(),
                created_by: m.created_by.clone(),
            },
            accuracy: vs_teacher.comparison.accuracy,
            passed: vs_teacher.passed() && vs_host_student.passed(),
            vs_teacher,
            vs_host_student,
            device: DeviceFingerprint::current(),
        })
    }
}
