use pupil_runtime::onnx::{Attr, GraphBuilder, dtype};
use pupil_runtime::spec::Dim;
use pupil_runtime::{Model, ModelOptions};

fn rnd(seed: &mut u64) -> f32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
}

fn i8s(n: usize, s: &mut u64) -> Vec<u8> {
    (0..n).map(|_| ((rnd(s) * 200.0) as i8) as u8).collect()
}
fn i32s(n: usize, s: &mut u64) -> Vec<u8> {
    (0..n).flat_map(|_| ((rnd(s) * 2000.0) as i32).to_le_bytes()).collect()
}

/// form: 0 = QLinearConv 1x1 chain, 1 = QLinearMatMul chain, 2 = f32 gemm
fn mlp(sizes: &[usize], form: u32) -> Vec<u8> {
    let mut s = 1u64;
    let mut b = GraphBuilder::new("p");
    let n = Dim::Fixed(1);
    let x = b.input("input", &[n.clone(), Dim::Fixed(sizes[0])]);
    let layers = sizes.len() - 1;
    if form == 3 {
        // dynamic: DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -> Add -> Relu
        let mut x = x;
        for i in 0..layers {
            let (k, m) = (sizes[i], sizes[i + 1]);
            let outs = [format!("dq{i}"), format!("ds{i}"), format!("dz{i}")];
            b.node("DynamicQuantizeLinear", &[&x], &[&outs[0], &outs[1], &outs[2]], &[]);
            let w = b.init_raw(&format!("w{i}"), &[k, m], dtype::I8, i8s(m * k, &mut s));
            let mm = b.op("MatMulInteger", &[&outs[0], &w, &outs[2]], &[]);
            let c = b.op("Cast", &[&mm], &[("to", Attr::Int(1))]);
            let ws = b.init_f32(&format!("ws{i}"), &[m], &vec![0.001; m]);
            let sc = b.op("Mul", &[&outs[1], &ws], &[]);
            let y = b.op("Mul", &[&c, &sc], &[]);
            let bias = b.init_f32(&format!("b{i}"), &[m], &vec![0.01; m]);
            let out = if i + 1 == layers { "logits".to_string() } else { b.fresh("add") };
            x = b.node("Add", &[&y, &bias], &[&out], &[]);
            if i + 1 < layers {
                x = b.op("Relu", &[&x], &[]);
            }
        }
        b.output("logits", &[n, Dim::Fixed(sizes[layers])]);
        return b.to_bytes();
    }
    if form == 2 {
        let ws: Vec<Vec<f32>> =
            (0..layers).map(|i| (0..sizes[i] * sizes[i + 1]).map(|_| rnd(&mut s) * 0.1).collect()).collect();
        let bs: Vec<Vec<f32>> = (0..layers).map(|i| (0..sizes[i + 1]).map(|_| rnd(&mut s) * 0.1).collect()).collect();
        let g = pupil_runtime::onnx::zoo::mlp(sizes, &ws, &bs);
        return g.to_bytes();
    }
    let xs = b.init_f32("xs", &[], &[0.02]);
    let xz = b.init_raw("xz", &[], dtype::U8, vec![0]);
    let mut q = b.op("QuantizeLinear", &[&x, &xs, &xz], &[]);
    if form == 0 {
        let shp = b.init_i64("shp4", &[4], &[1, sizes[0] as i64, 1, 1]);
        q = b.op("Reshape", &[&q, &shp], &[]);
    }
    for i in 0..layers - 1 {
        let (k, m) = (sizes[i], sizes[i + 1]);
        let ws = b.init_f32(&format!("ws{i}"), &[m], &vec![0.001; m]);
        let wz = b.init_raw(&format!("wz{i}"), &[m], dtype::I8, vec![0; m]);
        let ys = b.init_f32(&format!("ys{i}"), &[], &[0.05]);
        let yz = b.init_raw(&format!("yz{i}"), &[], dtype::U8, vec![0]);
        if form == 0 {
            let w = b.init_raw(&format!("w{i}"), &[m, k, 1, 1], dtype::I8, i8s(m * k, &mut s));
            let bias = b.init_raw(&format!("b{i}"), &[m], dtype::I32, i32s(m, &mut s));
            q = b.op("QLinearConv", &[&q, &xs, &xz, &w, &ws, &wz, &ys, &yz, &bias], &[]);
        } else {
            let w = b.init_raw(&format!("w{i}"), &[k, m], dtype::I8, i8s(m * k, &mut s));
            q = b.op("QLinearMatMul", &[&q, &xs, &xz, &w, &ws, &wz, &ys, &yz], &[]);
        }
    }
    if form == 0 {
        let shp = b.init_i64("shp2", &[2], &[1, sizes[layers - 1] as i64]);
        q = b.op("Reshape", &[&q, &shp], &[]);
    }
    let (k, m) = (sizes[layers - 1], sizes[layers]);
    let w = b.init_raw("wl", &[k, m], dtype::I8, i8s(m * k, &mut s));
    let mm = b.op("MatMulInteger", &[&q, &w, &xz], &[]);
    let bias = b.init_raw("bl", &[m], dtype::I32, i32s(m, &mut s));
    let a = b.op("Add", &[&mm, &bias], &[]);
    let c = b.op("Cast", &[&a], &[("to", Attr::Int(1))]);
    let sc = b.init_f32("scl", &[m], &vec![0.001; m]);
    b.node("Mul", &[&c, &sc], &["logits"], &[]);
    b.output("logits", &[n, Dim::Fixed(m)]);
    b.to_bytes()
}

fn dump(model: &Model) {
    for node in model.typed_model().nodes() {
        let info = node.op.info().unwrap_or_default().join(" | ");
        println!("  {:>3} {:<40} {:<20} {}", node.id, node.name, node.op.name(), &info[..info.len().min(400)]);
    }
}

fn time(model: &Model, len: usize) -> f64 {
    let x: Vec<f32> = (0..len).map(|i| (i % 7) as f32 * 0.1).collect();
    for _ in 0..200 {
        model.run(&x).unwrap();
    }
    let mut v = vec![];
    for _ in 0..15 {
        let t = std::time::Instant::now();
        for _ in 0..200 {
            model.run(&x).unwrap();
        }
        v.push(t.elapsed().as_secs_f64() * 1e6 / 200.0);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[test]
#[ignore]
fn probe() {
    for sizes in [vec![784usize, 800, 800, 10], vec![784, 1200, 1200, 10]] {
        for form in [2, 0, 1, 3] {
            let bytes = mlp(&sizes, form);
            std::fs::write(format!("/tmp/probe_{}_{form}.onnx", sizes[1]), &bytes).unwrap();
            let m = Model::from_bytes(&bytes, ModelOptions::default()).unwrap();
            println!("== sizes {sizes:?} form {form}: {:.1} us", time(&m, sizes[0]));
            if std::env::var("DUMP").is_ok() {
                dump(&m);
            }
        }
    }
}

fn cnn_q() -> Vec<u8> {
    let mut s = 3u64;
    let mut b = GraphBuilder::new("c");
    let x = b.input("input", &[Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(28), Dim::Fixed(28)]);
    let xs = b.init_f32("xs", &[], &[0.02]);
    let xz = b.init_raw("xz", &[], dtype::U8, vec![0]);
    let mut q = b.op("QuantizeLinear", &[&x, &xs, &xz], &[]);
    let mut cin = 1;
    for (l, cout) in [32usize, 64].into_iter().enumerate() {
        let w = b.init_raw(&format!("w{l}"), &[cout, cin, 3, 3], dtype::I8, i8s(cout * cin * 9, &mut s));
        let ws = b.init_f32(&format!("ws{l}"), &[cout], &vec![0.001; cout]);
        let wz = b.init_raw(&format!("wz{l}"), &[cout], dtype::I8, vec![0; cout]);
        let ys = b.init_f32(&format!("ys{l}"), &[], &[0.05]);
        let yz = b.init_raw(&format!("yz{l}"), &[], dtype::U8, vec![0]);
        let bias = b.init_raw(&format!("b{l}"), &[cout], dtype::I32, i32s(cout, &mut s));
        q = b.op(
            "QLinearConv",
            &[&q, &xs, &xz, &w, &ws, &wz, &ys, &yz, &bias],
            &[("kernel_shape", Attr::Ints(vec![3, 3])), ("pads", Attr::Ints(vec![1, 1, 1, 1]))],
        );
        q = b.op("MaxPool", &[&q], &[("kernel_shape", Attr::Ints(vec![2, 2])), ("strides", Attr::Ints(vec![2, 2]))]);
        cin = cout;
    }
    let f = b.op("Flatten", &[&q], &[("axis", Attr::Int(1))]);
    let (k, m) = (64 * 49, 128);
    let shp = b.init_i64("shp4", &[4], &[1, k as i64, 1, 1]);
    let q4 = b.op("Reshape", &[&f, &shp], &[]);
    let w = b.init_raw("wf", &[m, k, 1, 1], dtype::I8, i8s(m * k, &mut s));
    let ws = b.init_f32("wsf", &[m], &vec![0.001; m]);
    let wz = b.init_raw("wzf", &[m], dtype::I8, vec![0; m]);
    let ys = b.init_f32("ysf", &[], &[0.05]);
    let yz = b.init_raw("yzf", &[], dtype::U8, vec![0]);
    let bias = b.init_raw("bf", &[m], dtype::I32, i32s(m, &mut s));
    let q = b.op("QLinearConv", &[&q4, &xs, &xz, &w, &ws, &wz, &ys, &yz, &bias], &[]);
    let shp = b.init_i64("shp2", &[2], &[1, m as i64]);
    let q = b.op("Reshape", &[&q, &shp], &[]);
    let w = b.init_raw("wl", &[m, 10], dtype::I8, i8s(m * 10, &mut s));
    let mm = b.op("MatMulInteger", &[&q, &w, &xz], &[]);
    let c = b.op("Cast", &[&mm], &[("to", Attr::Int(1))]);
    let sc = b.init_f32("scl", &[10], &[0.001; 10]);
    b.node("Mul", &[&c, &sc], &["logits"], &[]);
    b.output("logits", &[Dim::Fixed(1), Dim::Fixed(10)]);
    b.to_bytes()
}

#[test]
#[ignore]
fn probe_cnn() {
    let bytes = cnn_q();
    std::fs::write("/tmp/probe_cnn_q.onnx", &bytes).unwrap();
    let m = Model::from_bytes(&bytes, ModelOptions::default()).unwrap();
    println!("== cnn int8: {:.1} us", time(&m, 784));
    if std::env::var("DUMP").is_ok() {
        dump(&m);
    }
    let mut seed = 3u64;
    let mut w = |_l: usize, _i: usize| rnd(&mut seed) * 0.1;
    let bytes = pupil_runtime::onnx::zoo::cnn(28, &[32, 64], 10, &mut w).to_bytes();
    let m = Model::from_bytes(&bytes, ModelOptions::default()).unwrap();
    println!("== cnn f32 (no fc128): {:.1} us", time(&m, 784));
}

#[test]
#[ignore]
fn probe_file() {
    let path = std::env::var("PROBE_FILE").unwrap_or_else(|_| "/tmp/quantize_failed.onnx".into());
    let bytes = std::fs::read(&path).unwrap();
    let m = Model::from_bytes(&bytes, ModelOptions::default()).unwrap();
    println!("== {path}: {:.1} us", time(&m, m.example_len()));
    dump(&m);
    let (k, per_run) = pupil_runtime::quantize::kernel_report(&bytes).unwrap();
    println!("{k:#?}\n{per_run:?}");
}
