//! NATS JetStream: a publication is sent with `Nats-Msg-Id` = the message id, so the stream's duplicate window drops
//! a resend, and counts only once the stream's PubAck arrives.

use async_nats::jetstream::{self, context::PublishErrorKind};
use lgsp_config::Broker;

use crate::{ClientIdentity, Confirmed, Publication, PublishError};

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
}
