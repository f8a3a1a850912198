//! The Redis backend: every replica shares one TAT per key, updated by one atomic Lua script per decision. The
//! script reads Redis's own clock (`TIME`), so replicas with skewed clocks still agree.

use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::gcra::{Decision, Quota};
use crate::{BackendError, Key, Limiter};

/// KEYS[1] = the key; ARGV[1] = interval (µs), ARGV[2] = burst. Returns {allowed, remaining|retry_after_µs, reset_µs}.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if now < allow_at then
  return {0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, math.floor((now + tolerance - new_tat) / interval), new_tat - now}
"#;

pub struct RedisLimiter {
    conn: ConnectionManager,
    script: redis::Script,
    prefix: String,
}

impl RedisLimiter {
    /// Connects lazily: a Redis that is down at start does not stop the gateway (the fallback decides instead).
    pub fn new(url: &str, timeout: Duration) -> Result<RedisLimiter, BackendError> {
        let client = redis::Client::open(url).map_err(|e| BackendError(format!("{url}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| BackendError(e.to_string()))?;
        Ok(RedisLimiter {
            conn,
            script: redis::Script::new(SCRIPT),
            prefix: "lgsp:rl:".to_owned(),
        })
    }

    /// Keys are namespaced so tests and deployments can share one Redis.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_owned();
        self
    }
}

impl Limiter for RedisLimiter {
    fn check<'a>(
        &'a self,
        key: &'a Key,
        quota: &'a Quota,
    ) -> BoxFuture<'a, Result<Decision, BackendError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let redis_key = format!("{}{}|{}", self.prefix, key.agency, key.route);
            let interval_us = (quota.interval_ns / 1000).max(1);
            let (allowed, a, reset): (i64, i64, i64) = self
                .script
                .key(redis_key)
                .arg(interval_us)
                .arg(quota.burst)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| BackendError(e.to_string()))?;
            let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
            Ok(if allowed == 1 {
                Decision::Allow {
                    remaining: u32::try_from(a).unwrap_or(0),
                    reset: us(reset),
                }
            } else {
                Decision::Deny {
                    retry_after: us(a),
                    reset: us(reset),
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The Redis tests need `LGSP_TEST_REDIS_URL`; without it they skip with the reason.
    fn url() -> Option<String> {
        let u = std::env::var("LGSP_TEST_REDIS_URL").ok();
        if u.is_none() {
            eprintln!("skipped: LGSP_TEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6379)");
        }
        u
    }

    #[tokio::test]
    async fn two_limiters_on_one_redis_share_the_burst() {
        let Some(url) = url() else { return };
        let prefix = format!("lgsp:test:{}:", std::process::id());
        let a = RedisLimiter::new(&url, Duration::from_secs(2))
            .unwrap()
            .with_prefix(&prefix);
        let b = RedisLimiter::new(&url, Duration::from_secs(2))
            .unwrap()
            .with_prefix(&prefix);
        let key = Key {
            agency: Arc::from("000.00.00.H29"),
            route: Arc::from("r"),
        };
        let q = Quota::parse("1/h", 10).unwrap();
        let mut allowed = 0;
        for i in 0..30 {
            let l = if i % 2 == 0 { &a } else { &b };
            if l.check(&key, &q).await.unwrap().allowed() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 10);
        match a.check(&key, &q).await.unwrap() {
            Decision::Deny { retry_after, .. } => assert!(retry_after > Duration::from_secs(3000)),
            d => panic!("{d:?}"),
        }
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_an_error_not_a_hang() {
        let l = RedisLimiter::new("redis://127.0.0.1:1", Duration::from_millis(200)).unwrap();
        let key = Key {
            agency: Arc::from("x"),
            route: Arc::from("r"),
        };
        assert!(
            l.check(&key, &Quota::parse("1/s", 1).unwrap())
                .await
                .is_err()
        );
    }
}
