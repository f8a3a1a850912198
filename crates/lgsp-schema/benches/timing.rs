//! Wall time per call for the ratio lines the validation benches print, measured in the same run as their
//! baseline.

use std::time::{Duration, Instant};

/// Warms up for `warm`, then times enough calls to fill about five times that; the best of three rounds.
pub fn per_iteration(warm: Duration, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    let mut iters = 0u32;
    while start.elapsed() < warm {
        f();
        iters += 1;
    }
    let n = (iters * 5).max(5);
    (0..3)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed() / n
        })
        .min()
        .unwrap_or_default()
}
