//! The hop stack's own cost, per request: the layers as built (generic) against the same layers with every inner
//! service and future boxed, in the same run over the same requests; the figure to read is the ratio. Wall time on
//! a shared 2-core machine is noisy: `examples/stack.rs` runs either under callgrind for instruction counts.

#[path = "stack_fixture.rs"]
mod fixture;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::ServiceExt;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let generic = lgsp_proxy::hop_stack(fixture::parts());
    let boxed = fixture::boxed_stack(fixture::parts());
    for svc in [&generic, &boxed] {
        let resp = rt
            .block_on(svc.clone().oneshot(fixture::request()))
            .expect("answer");
        assert_eq!(
            resp.status(),
            200,
            "the bench request must take the whole path"
        );
    }
    let mut g = c.benchmark_group("hop_stack");
    g.bench_function("generic", |b| {
        b.iter(|| rt.block_on(generic.clone().oneshot(fixture::request())))
    });
    g.bench_function("boxed", |b| {
        b.iter(|| rt.block_on(boxed.clone().oneshot(fixture::request())))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
