//! `pupil verify`: checks a student against a parity bundle on this machine (what `Model::verify_bundle` does on a
//! phone) and exits non-zero when a threshold fails.

use std::path::PathBuf;

use anyhow::Context;
use pupil_runtime::parity::Bundle;

use super::parity::{EXIT_THRESHOLD, class_table, gap_table, load_model, worst_table};
use crate::output::{print_json, table};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The student model.
    pub model: PathBuf,
    /// The parity bundle (`pupil bundle -o FILE`).
    pub bundle: PathBuf,
    #[command(flatten)]
    pub load: super::LoadArgs,
    /// Print the ParityReport as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let bundle = Bundle::read(&args.bundle).with_context(|| format!("reading {}", args.bundle.display()))?;
    let model = load_model(&args.model, args.load.threads)?;
    let report = model
        .verify_bundle(&bundle)
        .with_context(|| format!("verifying {} against {}", args.model.display(), args.bundle.display()))?;
    if args.json {
        print_json(&report)?;
    } else {
        let labels = model.labels();
        let b = &report.bundle;
        let mut t = table(&["", "value"]);
        t.add_row(vec!["student".to_string(), format!("{} (sha256 {})", args.model.display(), report.student_sha256)]);
        t.add_row(vec!["bundle".to_string(), format!("{} examples of {} {:?}", b.examples, b.data, b.example_shape)]);
        t.add_row(vec![
            "made on".to_string(),
            format!("{} ({}), pupil {}", b.created_by.device.cpu, b.created_by.device.arch, b.created_by.pupil_version),
        ]);
        let d = &report.device;
        t.add_row(vec![
            "verified on".to_string(),
            format!(
                "{} ({}, {} cores, {}), pupil {}, tract {}",
                d.cpu,
                d.arch,
                d.cores,
                d.simd.join(" "),
                d.pupil_version,
                d.tract_version
            ),
        ]);
        if let Some(a) = report.accuracy {
            t.add_row(vec!["accuracy".to_string(), format!("{:.2}%", 100.0 * a)]);
        }
        println!("{t}");
        let gaps = [report.vs_teacher.clone(), report.vs_host_student.clone()];
        println!("{}", gap_table(&gaps, labels));
        println!("top-1 agreement per reference class:");
        println!("{}", class_table(&gaps, labels));
        if report.vs_host_student.comparison.worst.iter().any(|w| w.reference_class != w.candidate_class) {
            println!("examples that differ from the host student:");
            println!("{}", worst_table(&report.vs_host_student, 5, labels));
        }
        if report.passed {
            println!("PASS: every threshold holds");
        }
    }
    for (gap, f) in report.failures() {
        eprintln!("FAIL {gap}: {f}");
    }
    Ok(if report.passed { 0 } else { EXIT_THRESHOLD })
}
