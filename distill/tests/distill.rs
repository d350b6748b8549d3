//! End-to-end tests of pupil-distill on real MNIST: train a tiny teacher, distill a tiny student from its ONNX,
//! export parity, kill-and-resume, and every bad input reported before training.

use std::path::{Path, PathBuf};

use pupil_distill::{DataSpec, Dataset, DistillError, Job, Progress, Recipe, Split};
use pupil_runtime::{Batch, Model, ModelOptions};

fn mnist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist")
}

/// 4,000 training and 1,000 held-out examples, both from the (faster to read) MNIST test split.
fn data() -> (Dataset, Dataset) {
    let all = DataSpec::Mnist { dir: mnist(), split: Split::Test }.load(None).unwrap();
    let train = all.select(&(0..4000).collect::<Vec<_>>());
    let heldout = all.select(&(9000..10000).collect::<Vec<_>>());
    (train, heldout)
}

fn job(recipe: Recipe, train: Dataset, heldout: &Dataset, out: PathBuf) -> Job {
    let mut j = Job::new(recipe, train, out);
    j.heldout = Some(heldout.clone());
    j.progress = Progress::Hidden;
    j
}

fn tiny() -> Recipe {
    Recipe::load("tiny").unwrap()
}

/// A random-weight MLP teacher written with the runtime's zoo (for the bad-input tests).
fn zoo_teacher(dir: &Path, inputs: usize, classes: usize) -> PathBuf {
    let sizes = [inputs, 8, classes];
    let w: Vec<Vec<f32>> =
        (0..2).map(|l| (0..sizes[l] * sizes[l + 1]).map(|i| ((i * 7 % 13) as f32 - 6.0) / 50.0).collect()).collect();
    let b: Vec<Vec<f32>> = (0..2).map(|l| vec![0.0; sizes[l + 1]]).collect();
    let path = dir.join(format!("teacher-{inputs}-{classes}.onnx"));
    std::fs::write(&path, pupil_runtime::onnx::zoo::mlp(&sizes, &w, &b).to_bytes()).unwrap();
    path
}

#[test]
fn trains_a_teacher_then_distills_a_student_from_its_onnx() {
    let (train, heldout) = data();
    let dir = tempfile::tempdir().unwrap();
    let mut teacher_recipe = tiny();
    teacher_recipe.name = "tiny-teacher".into();
    if let pupil_distill::recipe::Architecture::Mlp { hidden, .. } = &mut teacher_recipe.model {
        *hidden = vec![128];
    }
    let teacher_path = dir.path().join("teacher.onnx");
    let t = pupil_distill::train(&job(teacher_recipe, train.clone(), &heldout, teacher_path.clone())).unwrap();
    assert_eq!(t.epochs, 2);
    assert!(t.history[1].loss < t.history[0].loss, "teacher loss did not fall: {:?}", t.history);
    let acc = t.heldout.unwrap().accuracy;
    assert!(acc > 0.85, "tiny teacher held-out accuracy {acc} ≤ 0.85");
    assert!(t.parity_max_diff.unwrap() <= 1e-4);

    // The exported file is a real ONNX model with a symbolic batch, metadata and a card.
    let m = Model::load(&teacher_path, ModelOptions { batch: Batch::Symbolic, ..Default::default() }).unwrap();
    assert_eq!(m.classes(), 10);
    assert!(m.meta().preprocess.is_some(), "pupil.preprocess metadata missing");
    assert_eq!(m.meta().labels.as_ref().map(|l| l.len()), Some(10));
    let eval = pupil_distill::eval_onnx(&teacher_path, &heldout).unwrap();
    assert_eq!(eval.errors, t.heldout.unwrap().errors, "ONNX and burn disagree on held-out errors");
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("teacher.card.json")).unwrap()).unwrap();
    assert_eq!(card["metrics"]["heldout"]["errors"].as_u64().unwrap() as usize, eval.errors);
    assert_eq!(card["labels"].as_array().unwrap().len(), 10);

    // Distill on the unlabelled transfer set.
    let cache = dir.path().join("cache");
    let student_path = dir.path().join("student.onnx");
    let mut j = job(tiny(), train.clone().unlabeled(), &heldout, student_path.clone());
    j.cache = Some(cache.clone());
    let s = pupil_distill::distill(&j, &teacher_path).unwrap();
    assert!(s.history[1].loss < s.history[0].loss, "student loss did not fall: {:?}", s.history);
    let sacc = s.heldout.unwrap().accuracy;
    assert!(sacc > 0.80, "distilled tiny student held-out accuracy {sacc} ≤ 0.80");
    let info = s.teacher.clone().unwrap();
    assert_eq!(info.sha256, m.info().sha256);
    assert!(!info.from_cache);
    assert!(info.cache_file.exists());
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("student.card.json")).unwrap()).unwrap();
    assert_eq!(card["teacher"]["sha256"].as_str().unwrap(), m.info().sha256);
    assert_eq!(card["mode"], "distill");

    // A second run reuses the cached teacher outputs and, with the same seed, trains the same student.
    let mut j2 = j.clone();
    j2.out = dir.path().join("student2.onnx");
    let s2 = pupil_distill::distill(&j2, &teacher_path).unwrap();
    assert!(s2.teacher.unwrap().from_cache, "teacher outputs were not reused from the cache");
    assert_eq!(s2.heldout.unwrap().errors, s.heldout.unwrap().errors, "same seed, different student");

    // With ±1 px jitter the teacher is run on each of the 9 shifted copies of the transfer set (8 new cache
    // files beside the unshifted one), and the student still learns from it.
    let mut j3 = j.clone();
    j3.out = dir.path().join("student-jitter.onnx");
    j3.recipe.train.jitter = 1;
    let s3 = pupil_distill::distill(&j3, &teacher_path).unwrap();
    let cached = std::fs::read_dir(&cache)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "safetensors"))
        .count();
    assert_eq!(cached, 9, "expected the unshifted and 8 shifted teacher outputs in the cache");
    assert!(s3.history[1].loss < s3.history[0].loss, "jittered student loss did not fall: {:?}", s3.history);
    let jacc = s3.heldout.unwrap().accuracy;
    assert!(jacc > 0.80, "distilled tiny student with jitter: held-out accuracy {jacc} ≤ 0.80");

    // A shifted copy is keyed by the transfer set's key and the shift, so a cached one is read back without
    // being built (or hashed) again, and holds the teacher's outputs for the shifted images.
    let transfer = train.clone().unlabeled();
    let key = pupil_distill::teacher::data_sha256(&transfer);
    let cached_variant = |variant: &str| {
        pupil_distill::teacher::soft_targets_of_variant(
            &teacher_path,
            &transfer,
            &key,
            variant,
            || panic!("the cached copy {variant} was built again"),
            10,
            &cache,
            Progress::Hidden,
        )
    };
    let shifted = cached_variant("shifted by (1, -1) px").unwrap();
    assert!(shifted.from_cache);
    let unshifted =
        pupil_distill::teacher::soft_targets(&teacher_path, &transfer, 10, &cache, Progress::Hidden).unwrap();
    assert_eq!(shifted.logits.len(), unshifted.logits.len());
    assert_ne!(shifted.logits, unshifted.logits, "the shifted copy's cache holds the unshifted outputs");

    // A built variant of another size is a typed error naming both sizes, and nothing is cached for it.
    let files = std::fs::read_dir(&cache).unwrap().count();
    let err = pupil_distill::teacher::soft_targets_of_variant(
        &teacher_path,
        &transfer,
        &key,
        "first example only",
        || transfer.select(&[0]),
        10,
        &cache,
        Progress::Hidden,
    )
    .unwrap_err();
    match err {
        DistillError::VariantShape { expected_len, got_len, expected_values, got_values, .. } => {
            assert_eq!((expected_len, got_len), (transfer.len(), 1));
            assert_eq!(expected_values, got_values);
        }
        other => panic!("expected VariantShape, got {other}"),
    }
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), files, "a cache file was written for a bad variant");
}

#[test]
fn a_stopped_run_resumes_where_it_left_off() {
    let (train, heldout) = data();
    let dir = tempfile::tempdir().unwrap();
    let mut recipe = tiny();
    recipe.train.epochs = 3;
    let out = dir.path().join("r.onnx");

    // Uninterrupted reference.
    let mut full = job(recipe.clone(), train.clone(), &heldout, dir.path().join("full.onnx"));
    full.parity_examples = 50;
    let reference = pupil_distill::train(&full).unwrap();

    // "Killed" after epoch 1: checkpoint written, no model exported.
    let mut j = job(recipe, train, &heldout, out.clone());
    j.parity_examples = 50;
    j.stop_after = Some(1);
    let first = pupil_distill::train(&j).unwrap();
    assert_eq!(first.epochs, 1);
    assert!(first.model.is_none() && !out.exists());
    assert!(first.checkpoint_dir.join("state.json").exists());

    j.stop_after = None;
    j.resume = true;
    let resumed = pupil_distill::train(&j).unwrap();
    assert_eq!(resumed.resumed_from, Some(1));
    assert_eq!(resumed.epochs, 3);
    assert_eq!(resumed.history.len(), 3);
    // History before the stop survives the checkpoint (f64s round-trip through JSON, so compare with a tolerance).
    let (h0, f0) = (&resumed.history[0], &first.history[0]);
    assert_eq!((h0.epoch, h0.heldout), (f0.epoch, f0.heldout), "history before the stop was lost");
    assert!((h0.loss - f0.loss).abs() < 1e-9, "epoch-1 loss changed across the checkpoint");
    assert!(out.exists());
    // Epochs 2–3 continued from the checkpoint: the result matches the uninterrupted run.
    let (a, b) = (resumed.history[2].loss, reference.history[2].loss);
    assert!((a - b).abs() < 1e-3 * b.abs().max(1.0), "resumed loss {a} vs uninterrupted {b}");
    let (ea, eb) = (resumed.heldout.unwrap().errors as i64, reference.heldout.unwrap().errors as i64);
    assert!((ea - eb).abs() <= 3, "resumed run has {ea} errors, uninterrupted {eb}");
}

#[test]
fn a_cnn_with_batchnorm_trains_and_exports_with_parity() {
    let (train, heldout) = data();
    let dir = tempfile::tempdir().unwrap();
    let mut recipe = Recipe::load("tiny-cnn").unwrap();
    recipe.train.epochs = 1;
    let out = dir.path().join("cnn.onnx");
    let o = pupil_distill::train(&job(recipe, train.take(2000), &heldout, out.clone())).unwrap();
    assert!(o.parity_max_diff.unwrap() <= 1e-4, "BatchNorm folding broke parity: {:?}", o.parity_max_diff);
    let acc = o.heldout.unwrap().accuracy;
    assert!(acc > 0.6, "tiny CNN held-out accuracy {acc} ≤ 0.6 after one epoch on 2,000 examples");
    let m = Model::load(&out, ModelOptions { batch: Batch::Symbolic, ..Default::default() }).unwrap();
    assert!(m.info().operators.keys().any(|op| op.contains("Conv")));
}

#[test]
fn bad_inputs_are_typed_errors_before_training() {
    let (train, heldout) = data();
    let small = train.take(200);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.onnx");

    // Teacher output width ≠ student classes.
    let t5 = zoo_teacher(dir.path(), 784, 5);
    let e = pupil_distill::distill(&job(tiny(), small.clone(), &heldout, out.clone()), &t5).unwrap_err();
    assert!(matches!(e, DistillError::TeacherClasses { expected: 10, got: 5, .. }), "{e}");

    // Teacher input width ≠ data.
    let t100 = zoo_teacher(dir.path(), 100, 10);
    let e = pupil_distill::distill(&job(tiny(), small.clone(), &heldout, out.clone()), &t100).unwrap_err();
    assert!(matches!(e, DistillError::TeacherInput { expected: 100, got: 784, .. }), "{e}");

    // Data ≠ the recipe's input size.
    let mut r = tiny();
    if let pupil_distill::recipe::Architecture::Mlp { input, .. } = &mut r.model {
        *input = vec![1, 14, 14];
    }
    let e = pupil_distill::train(&job(r, small.clone(), &heldout, out.clone())).unwrap_err();
    assert!(matches!(e, DistillError::InputSize { expected: 196, got: 784, .. }), "{e}");

    // Empty transfer set.
    let t10 = zoo_teacher(dir.path(), 784, 10);
    let e = pupil_distill::distill(&job(tiny(), small.take(0), &heldout, out.clone()), &t10).unwrap_err();
    assert!(matches!(e, DistillError::EmptyTransferSet { .. }), "{e}");

    // Supervised training without labels.
    let e = pupil_distill::train(&job(tiny(), small.clone().unlabeled(), &heldout, out.clone())).unwrap_err();
    assert!(matches!(e, DistillError::NoLabels { .. }), "{e}");

    // Unknown recipe key, and a bad value.
    let text =
        pupil_distill::recipe::builtin("tiny").unwrap().replace("batch_size = 64", "batch_size = 64\nbatch_sise = 3");
    let e = Recipe::from_toml(&text, "typo.toml").unwrap_err();
    assert!(matches!(e, DistillError::Recipe { .. }) && e.to_string().contains("batch_sise"), "{e}");
    let text = pupil_distill::recipe::builtin("tiny").unwrap().replace("temperature = 4.0", "temperature = -1.0");
    let e = Recipe::from_toml(&text, "neg.toml").unwrap_err();
    assert!(e.to_string().contains("temperature"), "{e}");

    // Nothing was trained or written by any of the above.
    assert!(!out.exists());
    assert!(!dir.path().join("x.ckpt").exists());

    // A diverging run stops with a clear error.
    let mut r = tiny();
    r.optimizer = pupil_distill::recipe::OptimizerSettings::Sgd { lr: 1e30, momentum: 0.0, weight_decay: 0.0 };
    let e = pupil_distill::train(&job(r, small, &heldout, out.clone())).unwrap_err();
    assert!(matches!(e, DistillError::NonFiniteLoss { epoch: 1, last_good: 0, .. }), "{e}");
    assert!(!out.exists());
}

#[test]
fn every_shipped_recipe_parses() {
    for (name, _) in pupil_distill::recipe::BUILTIN {
        let r = Recipe::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.model.classes(), 10, "{name}");
        assert_eq!(r.model.input_len(), 784, "{name}");
    }
    let t = Recipe::load("mnist-teacher").unwrap();
    assert_eq!(t.model.describe(), "mlp 784-1200-1200-10");
    assert_eq!(t.train.jitter, 2);
}
