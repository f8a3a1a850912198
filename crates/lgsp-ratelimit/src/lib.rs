//! Rate limits: GCRA (the generic cell rate algorithm) keyed by (agency, route), with an in-process backend and a
//! Redis backend (one atomic Lua script per decision) behind one trait. A quota is a rate and a burst: `20/s` with a
//! burst of 40 lets 40 requests through at once, then one every 50 ms.
#![forbid(unsafe_code)]

mod gcra;
mod local;
mod redis_backend;

pub use gcra::{Decision, Quota, QuotaError};
pub use local::LocalLimiter;
pub use redis_backend::RedisLimiter;

use futures_util::future::BoxFuture;

/// The key of one limit: the calling agency and the route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub agency: std::sync::Arc<str>,
    pub route: std::sync::Arc<str>,
}

/// A limiter backend could not decide.
#[derive(Debug, Clone, thiserror::Error)]
#[error("rate-limit backend unavailable: {0}")]
pub struct BackendError(pub String);

/// One decision per request.
pub trait Limiter: Send + Sync {
    fn check<'a>(
        &'a self,
        key: &'a Key,
        quota: &'a Quota,
    ) -> BoxFuture<'a, Result<Decision, BackendError>>;
}
