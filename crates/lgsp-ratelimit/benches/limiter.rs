//! One local limiter decision with 10,000 distinct (agency, route) keys, single-threaded and from 2 threads.
//! `cargo bench -p lgsp-ratelimit --bench limiter`; the closing lines print ns per decision (goal: under 200 ns).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::Criterion;
use lgsp_ratelimit::{Key, LocalLimiter, Quota};

fn keys() -> Vec<Key> {
    (0..10_000)
        .map(|i| Key {
            agency: Arc::from(format!("000.00.{:02}.H{:02}", i / 100, i % 100)),
            route: Arc::from(format!("route-{}", i % 7)),
        })
        .collect()
}

fn per_decision(threads: usize, limiter: &LocalLimiter, keys: &[Key], quota: &Quota) -> f64 {
    let rounds = 200usize;
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                // Each thread walks the keys from its own starting point: concurrent requests of different agencies.
                let start = t * keys.len() / threads.max(1);
                for r in 0..rounds {
                    for k in keys
                        .iter()
                        .cycle()
                        .skip(start + r % 7)
                        .take(keys.len() - (t + r) % 7)
                    {
                        black_box(limiter.decide(k, quota));
                    }
                }
            });
        }
    });
    let decisions: usize = (0..threads)
        .map(|t| (0..rounds).map(|r| keys.len() - (t + r) % 7).sum::<usize>())
        .sum();
    // Wall time per decision per thread: what one request pays.
    start.elapsed().as_nanos() as f64 * threads as f64 / decisions as f64
}

fn main() {
    let keys = keys();
    let quota = Quota::parse("1000000/s", 1_000_000).expect("quota");
    let limiter = LocalLimiter::new();
    for k in &keys {
        limiter.decide(k, &quota);
    }
    let mut c = Criterion::default().configure_from_args();
    let mut i = 0usize;
    c.bench_function("local limiter decision, 10k keys", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(limiter.decide(&keys[i], &quota))
        })
    });
    c.final_summary();
    println!("\nns per decision with 10,000 keys (goal: under 200 ns):");
    for threads in [1, 2] {
        let ns = per_decision(threads, &limiter, &keys, &quota);
        println!("  {threads} thread(s): {ns:.0} ns");
    }
}
