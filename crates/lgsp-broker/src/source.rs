//! Broker sources: a JetStream durable pull consumer or a RabbitMQ queue read with manual acknowledgements. Each
//! packet is handed out with what it carried (message id, hop headers, body) and a way to acknowledge it or to have
//! the broker deliver it again after a delay; nothing is acknowledged by reading it.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lgsp_config::SourceKind;

use crate::ClientIdentity;

/// One packet read from a source.
pub struct Incoming {
    /// `Nats-Msg-Id`, or the AMQP `message_id` property.
    pub message_id: Option<String>,
    /// Every header (NATS headers; AMQP header properties with string values), names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// How many times the broker has handed this packet out, this time included (1: the first).
    pub deliveries: u64,
    handle: Handle,
}

enum Handle {
    Nats(Box<jetstream::Message>),
    Amqp(lapin::Acker),
}

impl Incoming {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The packet is done with: the broker drops it.
    pub async fn ack(self) -> Result<(), String> {
        match self.handle {
            Handle::Nats(m) => m.ack().await.map_err(|e| e.to_string()),
            Handle::Amqp(a) => a
                .ack(BasicAckOptions::default())
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }

    /// Delivered again by the broker, not before `delay` (JetStream waits itself; RabbitMQ requeues at once, so
    /// the wait is here, holding this packet's place among those in flight).
    pub async fn retry(self, delay: Duration) -> Result<(), String> {
        match self.handle {
            Handle::Nats(m) => m
                .ack_with(AckKind::Nak(Some(delay)))
                .await
                .map_err(|e| e.to_string()),
            Handle::Amqp(a) => {
                tokio::time::sleep(delay).await;
                a.nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await
                .map(drop)
                .map_err(|e| e.to_string())
            }
        }
    }
}

/// An open source.
pub struct Source {
    inner: Inner,
}

enum Inner {
    Nats {
        messages: Box<pull::Stream>,
        consumer: Box<jetstream::consumer::Consumer<pull::Config>>,
    },
    Amqp {
        consumer: Box<lapin::Consumer>,
        channel: Box<lapin::Channel>,
        queue: String,
        _conn: Box<lapin::Connection>,
    },
}

/// The ready messages of a queue that must exist (a passive declare creates nothing).
async fn queue_depth(channel: &lapin::Channel, queue: &str) -> Result<u64, lapin::Error> {
    channel
        .queue_declare(
            ShortString::from(queue.to_owned()),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|q| u64::from(q.message_count()))
}

/// The hop's identity when `kind` is over TLS, or why there is none.
fn tls_identity<'a>(
    kind: &SourceKind,
    identity: Option<&'a ClientIdentity>,
) -> Result<Option<&'a ClientIdentity>, String> {
    if !kind.tls() {
        return Ok(None);
    }
    identity.map(Some).ok_or_else(|| {
        "a TLS broker needs the hop's client identity ([hop.upstream_tls])".to_owned()
    })
}

/// AMQP header values carried as text.
fn amqp_text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// Checks without reading (`check-config --connect`): the stream exists (JetStream), or the queue (RabbitMQ).
pub async fn check_source(
    hop: &str,
    identity: Option<&ClientIdentity>,
    authority: &str,
    kind: &SourceKind,
    timeout: Duration,
) -> Result<String, String> {
    let identity = tls_identity(kind, identity)?;
    let attempt = async {
        match kind {
            SourceKind::Nats {
                stream, consumer, ..
            } => {
                let p = crate::nats::Publisher::connect(hop, identity, authority)
                    .await
                    .map_err(|e| format!("cannot connect: {e}"))?;
                let mut s = p
                    .context()
                    .get_stream(stream.as_str())
                    .await
                    .map_err(|e| format!("stream {stream}: {e}"))?;
                let n = s
                    .info()
                    .await
                    .map_err(|e| format!("stream {stream}: {e}"))?
                    .state
                    .messages;
                Ok(format!(
                    "stream {stream} holds {n} packets; read through durable consumer {consumer}"
                ))
            }
            SourceKind::Amqp { queue, .. } => {
                let (_conn, channel) =
                    crate::amqp::open(hop, identity, authority, &kind.as_broker())
                        .await
                        .map_err(|e| format!("cannot connect: {e}"))?;
                let n = queue_depth(&channel, queue)
                    .await
                    .map_err(|e| format!("queue `{queue}`: {e}"))?;
                Ok(format!("queue `{queue}` holds {n} packets"))
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

impl Source {
    /// Opens `kind` at `authority` as hop `hop`, at most `in_flight` packets handed out unacknowledged at once; an
    /// unacknowledged JetStream packet is handed out again after `ack_wait` (RabbitMQ: when the connection ends).
    pub async fn open(
        hop: &str,
        identity: Option<&ClientIdentity>,
        authority: &str,
        kind: &SourceKind,
        in_flight: usize,
        ack_wait: Duration,
    ) -> Result<Source, String> {
        let identity = tls_identity(kind, identity)?;
        let broker = kind.as_broker();
        match kind {
            SourceKind::Nats {
                stream, consumer, ..
            } => {
                let p = crate::nats::Publisher::connect(hop, identity, authority)
                    .await
                    .map_err(|e| e.to_string())?;
                let s = p
                    .context()
                    .get_stream(stream.as_str())
                    .await
                    .map_err(|e| format!("stream {stream}: {e}"))?;
                let c = s
                    .get_or_create_consumer(
                        consumer.as_str(),
                        pull::Config {
                            durable_name: Some(consumer.clone()),
                            ack_policy: jetstream::consumer::AckPolicy::Explicit,
                            ack_wait,
                            max_ack_pending: i64::try_from(in_flight).unwrap_or(i64::MAX),
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(|e| format!("durable consumer {consumer} of stream {stream}: {e}"))?;
                let messages = c
                    .messages()
                    .await
                    .map_err(|e| format!("reading {stream}/{consumer}: {e}"))?;
                Ok(Source {
                    inner: Inner::Nats {
                        messages: Box::new(messages),
                        consumer: Box::new(c),
                    },
                })
            }
            SourceKind::Amqp { queue, .. } => {
                let (conn, channel) = crate::amqp::open(hop, identity, authority, &broker)
                    .await
                    .map_err(|e| e.to_string())?;
                channel
                    .basic_qos(
                        u16::try_from(in_flight).unwrap_or(u16::MAX),
                        BasicQosOptions::default(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let consumer = channel
                    .basic_consume(
                        ShortString::from(queue.clone()),
                        ShortString::from(format!("lgsp-gateway {hop}")),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| format!("queue {queue}: {e}"))?;
                Ok(Source {
                    inner: Inner::Amqp {
                        consumer: Box::new(consumer),
                        channel: Box::new(channel),
                        queue: queue.clone(),
                        _conn: Box::new(conn),
                    },
                })
            }
        }
    }

    /// The next packet; `None` when the source ended (the connection was lost: open it again).
    pub async fn next(&mut self) -> Option<Result<Incoming, String>> {
        match &mut self.inner {
            Inner::Nats { messages, .. } => {
                let m = match messages.next().await? {
                    Ok(m) => m,
                    Err(e) => return Some(Err(e.to_string())),
                };
                let deliveries = m
                    .info()
                    .map_or(1, |i| u64::try_from(i.delivered).unwrap_or(1));
                let headers: Vec<(String, String)> = m
                    .headers
                    .iter()
                    .flat_map(|h| {
                        h.iter().flat_map(|(name, values)| {
                            values
                                .iter()
                                .map(move |v| (name.to_string(), v.to_string()))
                        })
                    })
                    .collect();
                let message_id = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("Nats-Msg-Id"))
                    .map(|(_, v)| v.clone());
                Some(Ok(Incoming {
                    message_id,
                    headers,
                    body: m.payload.clone(),
                    deliveries,
                    handle: Handle::Nats(Box::new(m)),
                }))
            }
            Inner::Amqp { consumer, .. } => {
                let d = match consumer.next().await? {
                    Ok(d) => d,
                    Err(e) => return Some(Err(e.to_string())),
                };
                let headers = d
                    .properties
                    .headers()
                    .as_ref()
                    .map(|t| {
                        t.inner()
                            .iter()
                            .filter_map(|(k, v)| amqp_text(v).map(|v| (k.to_string(), v)))
                            .collect()
                    })
                    .unwrap_or_default();
                Some(Ok(Incoming {
                    message_id: d.properties.message_id().as_ref().map(|s| s.to_string()),
                    headers,
                    body: Bytes::from(d.data),
                    deliveries: if d.redelivered { 2 } else { 1 },
                    handle: Handle::Amqp(d.acker),
                }))
            }
        }
    }

    /// Packets waiting in the source that this reader has not been handed yet.
    pub async fn lag(&mut self) -> Result<u64, String> {
        match &mut self.inner {
            Inner::Nats { consumer, .. } => consumer
                .info()
                .await
                .map(|i| i.num_pending)
                .map_err(|e| e.to_string()),
            Inner::Amqp { channel, queue, .. } => {
                queue_depth(channel, queue).await.map_err(|e| e.to_string())
            }
        }
    }
}
