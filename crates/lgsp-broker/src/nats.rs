//! NATS JetStream: a publication is sent with `Nats-Msg-Id` = the message id, so the stream's duplicate window drops
//! a resend, and counts only once the stream's PubAck arrives.

use async_nats::jetstream::{self, context::PublishErrorKind};
use lgsp_config::Broker;

use crate::{ClientIdentity, Confirmed, Publication, PublishError};

/// Packets an inbox read pulls at once.
const FETCH_BATCH: usize = 10;

#[derive(Clone)]
pub(crate) struct Publisher {
    js: jetstream::Context,
    authority: String,
}

impl Publisher {
    pub(crate) async fn connect(
        hop: &str,
        identity: Option<&ClientIdentity>,
        authority: &str,
    ) -> Result<Publisher, PublishError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("lgsp-gateway {hop}"))
            .connection_timeout(crate::CONNECT_TIMEOUT);
        let url = match identity {
            Some(i) => {
                let mut tls = (*i.rustls).clone();
                tls.alpn_protocols.clear();
                options = options.require_tls(true).tls_client_config(tls);
                format!("tls://{authority}")
            }
            None => format!("nats://{authority}"),
        };
        let client = options
            .connect(url)
            .await
            .map_err(|e| PublishError::Unreachable(authority.to_owned(), e.to_string()))?;
        let mut js = jetstream::new(client);
        js.set_timeout(crate::CONNECT_TIMEOUT);
        Ok(Publisher {
            js,
            authority: authority.to_owned(),
        })
    }

    /// The JetStream context of this connection.
    pub(crate) fn context(&self) -> &jetstream::Context {
        &self.js
    }

    pub(crate) async fn publish(
        &self,
        broker: &Broker,
        p: Publication,
    ) -> Result<Confirmed, PublishError> {
        let Broker::Nats { subject, .. } = broker else {
            return Err(PublishError::Refused("not a NATS target".into()));
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, p.message_id.as_str());
        for (name, value) in &p.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        if let Some(ct) = &p.content_type {
            headers.insert("Content-Type", ct.as_str());
        }
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, p.body)
            .await
            .map_err(|e| self.failed(e.kind(), &e.to_string()))?
            .await
            .map_err(|e| self.failed(e.kind(), &e.to_string()))?;
        Ok(Confirmed {
            broker: "nats",
            destination: subject.clone(),
            stream: Some(ack.stream),
            sequence: Some(ack.sequence),
            duplicate: ack.duplicate,
        })
    }

    fn failed(&self, kind: PublishErrorKind, message: &str) -> PublishError {
        match kind {
            PublishErrorKind::StreamNotFound => PublishError::Refused(format!(
                "no JetStream stream takes this subject ({message}); create one whose subjects include it"
            )),
            PublishErrorKind::TimedOut => PublishError::Timeout(crate::CONNECT_TIMEOUT),
            PublishErrorKind::BrokenPipe => {
                PublishError::Unreachable(self.authority.clone(), message.to_owned())
            }
            _ => PublishError::Refused(message.to_owned()),
        }
    }

    /// The server answers, and a JetStream stream takes the target's subject.
    pub(crate) async fn check(&self, broker: &Broker) -> Result<String, String> {
        let Broker::Nats { subject, .. } = broker else {
            return Err("not a NATS target".into());
        };
        let stream = self
            .js
            .stream_by_subject(subject.as_str())
            .await
            .map_err(|e| format!("no JetStream stream takes `{subject}` ({e}); create one whose subjects include it"))?;
        Ok(format!("JetStream stream {stream} takes `{subject}`"))
    }

    /// Up to `limit` packets of `subject` after sequence `after` (see [`crate::Brokers::read_inbox`]).
    pub(crate) async fn read(
        &self,
        subject: &str,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<crate::InboxPacket>, bool), PublishError> {
        use futures_util::StreamExt;
        use jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
        let refused = |e: String| PublishError::Refused(e);
        let name = self
            .js
            .stream_by_subject(subject)
            .await
            .map_err(|e| refused(format!("no JetStream stream takes `{subject}`: {e}")))?;
        let stream = self
            .js
            .get_stream(&name)
            .await
            .map_err(|e| refused(format!("stream {name}: {e}")))?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .create_consumer(pull::Config {
                filter_subject: subject.to_owned(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: after.saturating_add(1),
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: std::time::Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| refused(format!("reading {name}: {e}")))?;
        let consumer_name = consumer.cached_info().name.clone();
        let read = async {
            let mut out = Vec::new();
            let mut bytes = 0usize;
            let mut more = false;
            // A few packets per pull, so what the client buffers stays near one page whatever `limit` is.
            'pulls: loop {
                let want = (limit + 1 - out.len()).min(FETCH_BATCH);
                let mut batch = consumer
                    .fetch()
                    .max_messages(want)
                    .messages()
                    .await
                    .map_err(|e| refused(format!("reading {name}: {e}")))?;
                let mut got = 0;
                while let Some(m) = batch.next().await {
                    let m = m.map_err(|e| refused(format!("reading {name}: {e}")))?;
                    got += 1;
                    if out.len() == limit
                        || (!out.is_empty() && bytes + m.payload.len() > max_bytes)
                    {
                        more = true;
                        break 'pulls;
                    }
                    let cursor = m
                        .info()
                        .map(|i| i.stream_sequence)
                        .map_err(|e| refused(format!("reading {name}: {e}")))?;
                    bytes += m.payload.len();
                    let headers = m
                        .headers
                        .iter()
                        .flat_map(|h| {
                            h.iter().flat_map(|(k, vs)| {
                                vs.iter().map(move |v| (k.to_string(), v.to_string()))
                            })
                        })
                        .collect();
                    out.push(crate::InboxPacket {
                        cursor,
                        headers,
                        body: m.payload.clone(),
                    });
                }
                // Fewer than asked for: nothing more waits now.
                if got < want {
                    break;
                }
            }
            Ok((out, more))
        }
        .await;
        // The reading consumer goes at once (its inactivity threshold removes it if this fails).
        let _ = stream.delete_consumer(&consumer_name).await;
        read
    }
}
