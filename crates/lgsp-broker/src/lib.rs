//! Broker targets. A route whose upstream is `nats://…/<subject>` or `amqp://…?exchange=…&routing_key=…` publishes
//! each packet to that broker as this hop, and counts it delivered only once the broker has taken responsibility for
//! it: JetStream's PubAck (the stream stored it, or dropped it as a duplicate of the same `Nats-Msg-Id` within its
//! duplicate window), or RabbitMQ's publisher confirm of a persistent, mandatory message that a queue took.
//!
//! [`Brokers`] keeps one connection per (hop, broker server, credentials), opened on first use and opened again after
//! a failure; NATS clients reconnect on their own. Every publication is bounded by the caller's timeout, connection
//! included.
#![forbid(unsafe_code)]

mod amqp;
mod nats;
mod source;

pub use source::{Incoming, Source, check_source};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use lgsp_config::Broker;

/// The most a connection attempt takes before the publication fails (as the HTTPS client's connect timeout).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The hop's client identity towards brokers over TLS (`nats+tls://`, `amqps://`): its certificate and key and the
/// CAs it trusts for the broker's certificate — the same files as `[hop.upstream_tls]`.
#[derive(Clone)]
pub struct ClientIdentity {
    /// For NATS: rustls with the hop's client certificate (no ALPN).
    pub rustls: Arc<rustls::ClientConfig>,
    /// For RabbitMQ (its TLS stack builds its own rustls config): PEM certificate chain and PKCS#8 key.
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// PEM CAs for the broker's certificate.
    pub ca_pem: String,
}

/// One packet to publish.
#[derive(Debug, Clone)]
pub struct Publication {
    /// `X-LGSP-Message-Id`: `Nats-Msg-Id` on NATS, `message_id` on RabbitMQ.
    pub message_id: String,
    /// The hop headers (name, value) carried as NATS headers or AMQP header properties.
    pub headers: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// What the broker confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    /// `nats` or `amqp`.
    pub broker: &'static str,
    /// The subject, or `exchange/routing key`.
    pub destination: String,
    /// JetStream: the stream that stored it and its sequence there.
    pub stream: Option<String>,
    pub sequence: Option<u64>,
    /// JetStream: the stream had this message id already (a resend), and kept the first.
    pub duplicate: bool,
}

/// How a publication failed. Every kind is retried by the outbox except none: an unroutable or refused message
/// may become routable when the operator binds a queue or creates the stream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("the broker at {0} cannot be reached: {1}")]
    Unreachable(String, String),
    #[error("the broker did not confirm within {0:?}")]
    Timeout(Duration),
    /// RabbitMQ returned the mandatory message: no queue is bound for its routing key.
    #[error("no queue takes {0}: the broker returned the message")]
    Unroutable(String),
    /// No JetStream stream takes the subject, or RabbitMQ nacked the message, or the broker closed the channel.
    #[error("the broker refused the message: {0}")]
    Refused(String),
}

impl PublishError {
    /// The `outcome` label of `lgsp_broker_publish_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            PublishError::Unreachable(..) => "unreachable",
            PublishError::Timeout(_) => "timeout",
            PublishError::Unroutable(_) => "unroutable",
            PublishError::Refused(_) => "refused",
        }
    }
}

/// Every `outcome` label value of `lgsp_broker_publish_total`.
pub const OUTCOMES: [&str; 6] = [
    "confirmed",
    "duplicate",
    "unreachable",
    "timeout",
    "unroutable",
    "refused",
];

/// A cached connection to one broker server.
#[derive(Clone)]
enum Conn {
    Nats(nats::Publisher),
    Amqp(amqp::Publisher),
}

/// A connection slot: filled on first use, emptied after a failure that leaves the connection unusable.
type Slot = Arc<tokio::sync::Mutex<Option<Conn>>>;

/// The connections of every hop of this process to its brokers; clone freely.
#[derive(Clone, Default)]
pub struct Brokers {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

impl std::fmt::Debug for Brokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.slots.lock().map(|s| s.len()).unwrap_or(0);
        f.debug_struct("Brokers").field("connections", &n).finish()
    }
}

/// The connection a publication uses: one per hop (its client identity), server and credentials.
fn key(hop: &str, authority: &str, broker: &Broker) -> String {
    match broker {
        Broker::Nats { tls, .. } => format!("{hop}|nats|{tls}|{authority}"),
        Broker::Amqp {
            tls,
            vhost,
            user,
            password,
            ..
        } => {
            // The password is part of the identity of the connection (a reload that changes it opens a new
            // one), but is not kept in the clear as a map key.
            let secret = password.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            format!("{hop}|amqp|{tls}|{authority}|{vhost}|{user}|{secret:016x}")
        }
    }
}

impl Brokers {
    pub fn new() -> Brokers {
        Brokers::default()
    }

    fn slot(&self, key: String) -> Slot {
        let mut slots = match self.slots.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        slots.entry(key).or_default().clone()
    }

    /// Publishes `p` to `broker` at `authority` as hop `hop` and waits for the broker's confirmation, all within
    /// `timeout`. `identity` is required for `nats+tls://` and `amqps://`.
    pub async fn publish(
        &self,
        hop: &str,
        identity: Option<&ClientIdentity>,
        authority: &str,
        broker: &Broker,
        p: Publication,
        timeout: Duration,
    ) -> Result<Confirmed, PublishError> {
        let slot = self.slot(key(hop, authority, broker));
        let attempt = async {
            let conn = held(&slot, hop, identity, authority, broker).await?;
            let r = match &conn {
                Conn::Nats(n) => n.publish(broker, p).await,
                Conn::Amqp(a) => a.publish(broker, p).await,
            };
            if let Err(e) = &r
                && !conn_usable(&conn, e)
            {
                // The next publication opens a new connection.
                *slot.lock().await = None;
            }
            r
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(PublishError::Timeout(timeout)),
        }
    }

    /// Connects to the broker and checks that it answers, without publishing (`check-config --connect`, `probe`).
    pub async fn check(
        &self,
        hop: &str,
        identity: Option<&ClientIdentity>,
        authority: &str,
        broker: &Broker,
        timeout: Duration,
    ) -> Result<String, String> {
        let attempt = async {
            match connect(hop, identity, authority, broker).await {
                Ok(Conn::Nats(n)) => n.check(broker).await,
                Ok(Conn::Amqp(a)) => a.check(broker).await,
                Err(PublishError::Unreachable(_, why)) => Err(format!("cannot connect: {why}")),
                Err(e) => Err(e.to_string()),
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }
}

/// The slot's connection, opened when there is none.
async fn held(
    slot: &Slot,
    hop: &str,
    identity: Option<&ClientIdentity>,
    authority: &str,
    broker: &Broker,
) -> Result<Conn, PublishError> {
    let mut held = slot.lock().await;
    match &*held {
        Some(c) => Ok(c.clone()),
        None => {
            let c = connect(hop, identity, authority, broker).await?;
            Ok(held.insert(c).clone())
        }
    }
}

/// One packet of an agency's inbox.
#[derive(Debug, Clone)]
pub struct InboxPacket {
    /// Its place in the stream: what the agency sends back as `after` to acknowledge it and all before it.
    pub cursor: u64,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Brokers {
    /// Up to `limit` packets on `subject` after `after`, oldest first, within `max_bytes` of bodies (always at
    /// least one), and whether more wait. The subject's stream is read through a short-lived consumer of its own,
    /// so readers never move each other's place: the reader's place is its cursor.
    #[allow(clippy::too_many_arguments)]
    pub async fn read_inbox(
        &self,
        hop: &str,
        identity: Option<&ClientIdentity>,
        authority: &str,
        broker: &Broker,
        subject: &str,
        after: u64,
        limit: usize,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<(Vec<InboxPacket>, bool), PublishError> {
        let slot = self.slot(key(hop, authority, broker));
        let attempt = async {
            match held(&slot, hop, identity, authority, broker).await? {
                Conn::Nats(n) => n.read(subject, after, limit, max_bytes).await,
                Conn::Amqp(_) => Err(PublishError::Refused(
                    "an inbox reads JetStream subjects only".into(),
                )),
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(PublishError::Timeout(timeout)),
        }
    }
}

/// Whether a connection that failed `e` may serve the next publication.
fn conn_usable(conn: &Conn, e: &PublishError) -> bool {
    match conn {
        // The client reconnects by itself; a refusal or timeout says nothing against the connection.
        Conn::Nats(_) => true,
        // A refused publish closes the channel (e.g. 404 no exchange); an unroutable one does not.
        Conn::Amqp(a) => a.usable() && !matches!(e, PublishError::Unreachable(..)),
    }
}

async fn connect(
    hop: &str,
    identity: Option<&ClientIdentity>,
    authority: &str,
    broker: &Broker,
) -> Result<Conn, PublishError> {
    let identity = match (broker.tls(), identity) {
        (true, None) => {
            return Err(PublishError::Unreachable(
                authority.to_owned(),
                "a TLS broker needs the hop's client identity ([hop.upstream_tls])".into(),
            ));
        }
        (true, Some(i)) => Some(i),
        (false, _) => None,
    };
    let connecting = async {
        match broker {
            Broker::Nats { .. } => nats::Publisher::connect(hop, identity, authority)
                .await
                .map(Conn::Nats),
            Broker::Amqp { .. } => amqp::Publisher::connect(hop, identity, authority, broker)
                .await
                .map(Conn::Amqp),
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(r) => r,
        Err(_) => Err(PublishError::Unreachable(
            authority.to_owned(),
            format!("no connection within {CONNECT_TIMEOUT:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_per_hop_server_and_credentials() {
        let nats = Broker::Nats {
            tls: false,
            subject: "a".into(),
        };
        let other_subject = Broker::Nats {
            tls: false,
            subject: "b".into(),
        };
        assert_eq!(
            key("lgsp", "h:1", &nats),
            key("lgsp", "h:1", &other_subject)
        );
        assert_ne!(key("lgsp", "h:1", &nats), key("ndxp", "h:1", &nats));
        let amqp = |password: &str| Broker::Amqp {
            tls: false,
            vhost: "/".into(),
            exchange: "x".into(),
            routing_key: "k".into(),
            user: "u".into(),
            password: password.into(),
        };
        assert_ne!(
            key("lgsp", "h:1", &amqp("p1")),
            key("lgsp", "h:1", &amqp("p2"))
        );
        assert!(!key("lgsp", "h:1", &amqp("secret-pw")).contains("secret-pw"));
    }

    #[test]
    fn every_failure_has_an_outcome_label() {
        let errors = [
            PublishError::Unreachable("h:1".into(), "refused".into()),
            PublishError::Timeout(Duration::from_secs(1)),
            PublishError::Unroutable("x/k".into()),
            PublishError::Refused("nack".into()),
        ];
        for e in errors {
            assert!(OUTCOMES.contains(&e.outcome()));
        }
    }
}
