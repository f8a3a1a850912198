//! What tests against the machine's backends share: the broker a variable names (or why the test skips), names no
//! other test uses, streams and queues of a test's own, waiting for a condition without sleeping blindly, and a
//! gateway's metric samples.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A name no other test, or run, uses: `prefix`, the process id and the time in nanoseconds (digits only, so it
/// also makes a NATS stream name or subject token).
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}{}{nanos}", std::process::id())
}

/// The broker URL in `var` (`LGSP_TEST_NATS_URL`, `LGSP_TEST_AMQP_URL`) and its address; `None`, with the reason
/// printed, when the variable is not set (the test then skips; `.ci/run` always sets it).
pub fn test_broker(var: &str) -> Option<(String, SocketAddr)> {
    let Ok(url) = std::env::var(var) else {
        eprintln!("skipped: {var} is not set (.ci/run sets it to the machine's broker)");
        return None;
    };
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hostport = rest
        .split('/')
        .next()
        .unwrap_or(rest)
        .replace("localhost", "127.0.0.1");
    let addr = hostport
        .parse()
        .unwrap_or_else(|e| panic!("{var}: {hostport}: {e}"));
    Some((url, addr))
}

/// Waits, polling, until `done` holds; fails the test with `what` after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the sample `name{labels}` (labels in the exposition's order) a gateway exports; the test fails
/// when the gateway does not export it.
pub fn metric(g: &lgsp_proxy::Gateway, sample: &str) -> f64 {
    g.metrics
        .encode()
        .lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .map(|v| v.trim().parse().unwrap_or(f64::NAN))
        })
        .unwrap_or_else(|| panic!("no sample {sample}"))
}

/// A JetStream stream of the test's own: a new name (from `name_prefix`) taking `<subject>.>` for a new subject
/// prefix (from `subject_prefix`), with a duplicate window of 5 minutes; returns the context, the stream's name and
/// the subject prefix.
pub async fn test_stream(
    url: &str,
    name_prefix: &str,
    subject_prefix: &str,
) -> (async_nats::jetstream::Context, String, String) {
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    let (name, subject) = (unique_name(name_prefix), unique_name(subject_prefix));
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{subject}.>")],
        duplicate_window: Duration::from_secs(300),
        max_age: Duration::from_secs(900),
        ..Default::default()
    })
    .await
    .expect("create the test stream");
    (js, name, subject)
}

/// A connection and channel to RabbitMQ at `url`.
pub async fn amqp_channel(url: &str) -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

/// A durable queue named `name`.
pub async fn durable_queue(ch: &lapin::Channel, name: &str) {
    ch.queue_declare(
        name.to_owned().into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await
    .expect("queue");
}
