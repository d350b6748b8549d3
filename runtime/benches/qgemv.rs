//! Criterion benches of pupil's int8 GEMV kernels, one per instruction set this CPU runs, on the layer shapes
//! of the benchmark MLPs (784×800, 800×800, 784×1200, 1200×1200, 800×10).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pupil_runtime::kernels::{Isa, PackedI8, zoo::Rng};

fn gemv(c: &mut Criterion) {
    let mut group = c.benchmark_group("qgemv");
    for (k, n) in [(784, 800), (800, 800), (784, 1200), (1200, 1200), (800, 10)] {
        let mut rng = Rng::new((k * n) as u64);
        let w: Vec<i8> = (0..k * n).map(|_| rng.next_u64() as i8).collect();
        let p = PackedI8::from_row_major(k, n, &w);
        let mut a: Vec<u8> = (0..k).map(|_| rng.next_u64() as u8).collect();
        a.resize(p.k_padded(), 0);
        let mut out = vec![0i32; p.n_padded()];
        group.throughput(Throughput::Bytes((k * n) as u64));
        for isa in Isa::available() {
            group.bench_with_input(BenchmarkId::new(isa.name(), format!("{k}x{n}")), &isa, |b, &isa| {
                b.iter(|| {
                    p.gemv(isa, std::hint::black_box(&a), &mut out);
                    std::hint::black_box(&out);
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, gemv);
criterion_main!(benches);
