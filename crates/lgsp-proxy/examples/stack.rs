//! Runs N requests through the hop stack, generic or boxed (see `benches/stack.rs`), for instruction counts:
//! `valgrind --tool=callgrind target/release/examples/stack {generic|boxed} [N]`.

#[path = "../benches/stack_fixture.rs"]
mod fixture;

use tower::ServiceExt;

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "generic".into());
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let svc = match which.as_str() {
        "generic" => lgsp_proxy::hop_stack(fixture::parts()),
        "boxed" => fixture::boxed_stack(fixture::parts()),
        other => {
            eprintln!("usage: stack generic|boxed [N] (not {other})");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut ok = 0;
    for _ in 0..n {
        let Ok(resp) = rt.block_on(svc.clone().oneshot(fixture::request()));
        ok += usize::from(resp.status() == 200);
    }
    println!("{which}: {ok} of {n} answered 200");
}
