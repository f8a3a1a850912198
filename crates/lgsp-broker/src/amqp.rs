//! RabbitMQ (AMQP 0-9-1): a publication is persistent (delivery mode 2), mandatory (an unroutable message comes back
//! and counts as failed) and published on a channel in confirm mode; it counts only once the broker acks it.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use lgsp_config::Broker;

use crate::{ClientIdentity, Confirmed, Publication, PublishError};

#[derive(Clone)]
pub(crate) struct Publisher {
    /// Kept so the connection lives as long as its channel is cached.
    conn: std::sync::Arc<Connection>,
    channel: Channel,
    authority: String,
}

/// The broker's address from `authority` (`host:port`, validated by the config).
fn host_port(authority: &str) -> Result<(String, u16), PublishError> {
    let bad = || PublishError::Unreachable(authority.to_owned(), "not host:port".into());
    let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
    ))
}

/// A connection to the broker of `broker` (its vhost and credentials) as hop `hop`, and a channel on it.
pub(crate) async fn open(
    hop: &str,
    identity: Option<&ClientIdentity>,
    authority: &str,
    broker: &Broker,
) -> Result<(Connection, Channel), PublishError> {
    let Broker::Amqp {
        tls,
        vhost,
        user,
        password,
        ..
    } = broker
    else {
        return Err(PublishError::Refused("not a RabbitMQ target".into()));
    };
    let (host, port) = host_port(authority)?;
    let uri = AMQPUri {
        scheme: if *tls {
            AMQPScheme::AMQPS
        } else {
            AMQPScheme::AMQP
        },
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: user.clone(),
                password: password.clone(),
            },
            host,
            port,
        },
        vhost: vhost.clone(),
        query: AMQPQueryString::default(),
    };
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(format!("lgsp-gateway {hop}")));
    let unreachable =
        |e: lapin::Error| PublishError::Unreachable(authority.to_owned(), e.to_string());
    let runtime = lapin::runtime::default_runtime().map_err(unreachable)?;
    let tls_config = match identity {
        Some(i) => lapin::tcp::OwnedTLSConfig {
            identity: Some(lapin::tcp::OwnedIdentity::PKCS8 {
                pem: i.cert_pem.clone(),
                key: i.key_pem.clone(),
            }),
            cert_chain: Some(i.ca_pem.clone()),
        },
        None => lapin::tcp::OwnedTLSConfig::default(),
    };
    let conn = Connection::connect_uri_with_config(uri, props, tls_config, runtime)
        .await
        .map_err(unreachable)?;
    let channel = conn.create_channel().await.map_err(unreachable)?;
    Ok((conn, channel))
}

impl Publisher {
    pub(crate) async fn connect(
        hop: &str,
        identity: Option<&ClientIdentity>,
        authority: &str,
        broker: &Broker,
    ) -> Result<Publisher, PublishError> {
        let (conn, channel) = open(hop, identity, authority, broker).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| PublishError::Unreachable(authority.to_owned(), e.to_string()))?;
        Ok(Publisher {
            conn: std::sync::Arc::new(conn),
            channel,
            authority: authority.to_owned(),
        })
    }

    /// Whether the channel (and its connection) can still publish.
    pub(crate) fn usable(&self) -> bool {
        self.conn.status().connected() && self.channel.status().connected()
    }

    pub(crate) async fn publish(
        &self,
        broker: &Broker,
        p: Publication,
    ) -> Result<Confirmed, PublishError> {
        let Broker::Amqp {
            exchange,
            routing_key,
            ..
        } = broker
        else {
            return Err(PublishError::Refused("not a RabbitMQ target".into()));
        };
        let destination = format!("{exchange}/{routing_key}");
        let mut headers = FieldTable::default();
        for (name, value) in &p.headers {
            headers.insert(
                ShortString::from(name.clone()),
                AMQPValue::LongString(LongString::from(value.clone())),
            );
        }
        let mut properties = BasicProperties::default()
            .with_message_id(ShortString::from(p.message_id.clone()))
            .with_delivery_mode(2)
            .with_headers(headers);
        if let Some(ct) = &p.content_type {
            properties = properties.with_content_type(ShortString::from(ct.clone()));
        }
        let failed = |e: lapin::Error| {
            if self.conn.status().connected() {
                PublishError::Refused(e.to_string())
            } else {
                PublishError::Unreachable(self.authority.clone(), e.to_string())
            }
        };
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(exchange.clone()),
                ShortString::from(routing_key.clone()),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &p.body,
                properties,
            )
            .await
            .map_err(failed)?
            .await
            .map_err(failed)?;
        match confirm {
            Confirmation::Ack(None) => Ok(Confirmed {
                broker: "amqp",
                destination,
                stream: None,
                sequence: None,
                duplicate: false,
            }),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(PublishError::Unroutable(format!(
                    "{destination} ({} {})",
                    returned.reply_code, returned.reply_text
                )))
            }
            Confirmation::Nack(None) => Err(PublishError::Refused(format!(
                "the broker nacked the message for {destination}"
            ))),
            Confirmation::NotRequested => Err(PublishError::Refused(
                "the channel is not in confirm mode".into(),
            )),
        }
    }

    /// The exchange exists (a passive declare; the default exchange always does).
    pub(crate) async fn check(&self, broker: &Broker) -> Result<String, String> {
        let Broker::Amqp { exchange, .. } = broker else {
            return Err("not a RabbitMQ target".into());
        };
        if exchange.is_empty() {
            return Ok("connected; the default exchange".into());
        }
        self.channel
            .exchange_declare(
                ShortString::from(exchange.clone()),
                lapin::ExchangeKind::Direct,
                lapin::options::ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("exchange `{exchange}`: {e}"))?;
        Ok(format!("connected; exchange `{exchange}` exists"))
    }
}
