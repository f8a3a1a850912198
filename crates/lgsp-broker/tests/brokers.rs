//! Publishing against the machine's real brokers: NATS with JetStream (`LGSP_TEST_NATS_URL`) and RabbitMQ
//! (`LGSP_TEST_AMQP_URL`). Without the variables each test says why it skips. Every test works in names of its own
//! (a stream, an exchange, a queue), so runs and tests never see each other's messages.

use std::time::Duration;

use bytes::Bytes;
use lgsp_broker::{Brokers, Publication, PublishError};
use lgsp_config::Broker;

const TIMEOUT: Duration = Duration::from_secs(10);

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}{}{nanos}", std::process::id())
}

fn packet(id: &str) -> Publication {
    Publication {
        message_id: id.to_owned(),
        headers: vec![
            ("X-LGSP-Client".into(), "000.00.00.H29".into()),
            ("X-LGSP-Hops".into(), "lgsp".into()),
        ],
        content_type: Some("application/xml".into()),
        body: Bytes::from_static(b"<HoSoCBCCVC/>"),
    }
}

/// `host:port` of a broker URL from the environment, or why the test skips.
fn server(var: &str) -> Option<(String, String)> {
    match std::env::var(var) {
        Ok(url) => {
            let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
            let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
            let authority = rest.split('/').next().unwrap_or(rest).to_owned();
            Some((url, authority))
        }
        Err(_) => {
            eprintln!("skipped: {var} is not set (.ci/run sets it to the machine's broker)");
            None
        }
    }
}

mod nats {
    use super::*;
    use async_nats::jetstream;
    use futures_util::StreamExt;

    /// A stream of this test's own taking `<subject>.>`, and a publishing target under it.
    async fn stream(url: &str) -> (jetstream::Context, String, String) {
        let client = async_nats::connect(url).await.expect("connect to NATS");
        let js = jetstream::new(client);
        let name = unique("LGSPTEST");
        let subject = unique("lgsptest.");
        js.create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{subject}.>")],
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .expect("create the test stream");
        (js, name, subject)
    }

    #[tokio::test]
    async fn a_packet_is_confirmed_once_and_a_resend_is_a_duplicate() {
        let Some((url, authority)) = server("LGSP_TEST_NATS_URL") else {
            return;
        };
        let (js, name, subject) = stream(&url).await;
        let target = Broker::Nats {
            tls: false,
            subject: format!("{subject}.HoSoCBCCVC"),
        };
        let brokers = Brokers::new();
        let first = brokers
            .publish("lgsp", None, &authority, &target, packet("m-1"), TIMEOUT)
            .await
            .expect("published");
        assert_eq!(first.stream.as_deref(), Some(name.as_str()));
        assert!(!first.duplicate);
        let again = brokers
            .publish("lgsp", None, &authority, &target, packet("m-1"), TIMEOUT)
            .await
            .expect("resend confirmed");
        assert!(again.duplicate, "the stream dropped the resend");
        assert_eq!(again.sequence, first.sequence);
        brokers
            .publish("lgsp", None, &authority, &target, packet("m-2"), TIMEOUT)
            .await
            .expect("second packet");

        let mut s = js.get_stream(&name).await.expect("stream");
        assert_eq!(s.info().await.expect("info").state.messages, 2);
        let stored = s
            .get_raw_message(first.sequence.expect("sequence"))
            .await
            .expect("first message");
        assert_eq!(&stored.payload[..], b"<HoSoCBCCVC/>");
        let headers = stored.headers;
        assert_eq!(headers.get("Nats-Msg-Id").map(|v| v.as_str()), Some("m-1"));
        assert_eq!(
            headers.get("X-LGSP-Client").map(|v| v.as_str()),
            Some("000.00.00.H29")
        );
        // The stream's consumers see each packet once.
        let consumer = s
            .create_consumer(jetstream::consumer::pull::Config::default())
            .await
            .expect("consumer");
        let mut batch = consumer
            .fetch()
            .max_messages(10)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .expect("fetch");
        let mut ids = Vec::new();
        while let Some(Ok(m)) = batch.next().await {
            ids.push(
                m.headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            );
        }
        assert_eq!(ids, ["m-1", "m-2"]);
        js.delete_stream(&name).await.expect("drop the test stream");
    }

    #[tokio::test]
    async fn a_subject_no_stream_takes_is_refused() {
        let Some((_, authority)) = server("LGSP_TEST_NATS_URL") else {
            return;
        };
        let target = Broker::Nats {
            tls: false,
            subject: unique("lgsptest.nostream."),
        };
        let e = Brokers::new()
            .publish("lgsp", None, &authority, &target, packet("m-1"), TIMEOUT)
            .await
            .expect_err("no stream");
        assert!(matches!(e, PublishError::Refused(_)), "{e:?}");
        assert!(e.to_string().contains("stream"), "{e}");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_within_the_timeout() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let target = Broker::Nats {
            tls: false,
            subject: "lgsptest.closed".into(),
        };
        let e = Brokers::new()
            .publish(
                "lgsp",
                None,
                &format!("127.0.0.1:{port}"),
                &target,
                packet("m-1"),
                TIMEOUT,
            )
            .await
            .expect_err("nothing listens");
        assert!(
            matches!(e, PublishError::Unreachable(..) | PublishError::Timeout(_)),
            "{e:?}"
        );
    }
}

mod amqp {
    use super::*;
    use lapin::options::{
        BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{Connection, ConnectionProperties, ExchangeKind};

    /// An exchange and a queue bound to it under `key`, both this test's own.
    async fn bound(url: &str) -> (Connection, lapin::Channel, String, String, String) {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let ch = conn.create_channel().await.expect("channel");
        let exchange = unique("lgsptest.x.");
        let queue = unique("lgsptest.q.");
        let key = "HoSoCBCCVC".to_owned();
        ch.exchange_declare(
            exchange.clone().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange");
        ch.queue_declare(
            queue.clone().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
        ch.queue_bind(
            queue.clone().into(),
            exchange.clone().into(),
            key.clone().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
        (conn, ch, exchange, queue, key)
    }

    fn target(url: &str, exchange: &str, routing_key: &str) -> Broker {
        let userinfo = url
            .split_once("://")
            .and_then(|(_, r)| r.rsplit_once('@'))
            .map(|(u, _)| u.to_owned());
        let (user, password) = userinfo
            .as_deref()
            .and_then(|u| u.split_once(':'))
            .map_or(("guest".into(), "guest".into()), |(u, p)| {
                (u.to_owned(), p.to_owned())
            });
        Broker::Amqp {
            tls: false,
            vhost: "/".into(),
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            user,
            password,
        }
    }

    #[tokio::test]
    async fn a_packet_is_confirmed_persistent_with_its_id_and_hop_headers() {
        let Some((url, authority)) = server("LGSP_TEST_AMQP_URL") else {
            return;
        };
        let (_conn, ch, exchange, queue, key) = bound(&url).await;
        let brokers = Brokers::new();
        let confirmed = brokers
            .publish(
                "lgsp",
                None,
                &authority,
                &target(&url, &exchange, &key),
                packet("m-1"),
                TIMEOUT,
            )
            .await
            .expect("confirmed");
        assert_eq!(confirmed.broker, "amqp");
        assert_eq!(confirmed.destination, format!("{exchange}/{key}"));
        let got = ch
            .basic_get(queue.clone().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
            .expect("the packet is in the queue");
        assert_eq!(&got.data[..], b"<HoSoCBCCVC/>");
        let p = &got.properties;
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("m-1"));
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        let client = p
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("X-LGSP-Client").cloned());
        assert!(
            matches!(&client, Some(AMQPValue::LongString(s)) if s.to_string() == "000.00.00.H29"),
            "{client:?}"
        );
        ch.queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .expect("drop the test queue");
    }

    #[tokio::test]
    async fn an_unroutable_packet_fails_and_a_missing_exchange_does_not_break_the_next() {
        let Some((url, authority)) = server("LGSP_TEST_AMQP_URL") else {
            return;
        };
        let (_conn, ch, exchange, queue, key) = bound(&url).await;
        let brokers = Brokers::new();
        let e = brokers
            .publish(
                "lgsp",
                None,
                &authority,
                &target(&url, &exchange, "NoQueueTakesThis"),
                packet("m-1"),
                TIMEOUT,
            )
            .await
            .expect_err("unroutable");
        assert!(matches!(e, PublishError::Unroutable(_)), "{e:?}");
        let e = brokers
            .publish(
                "lgsp",
                None,
                &authority,
                &target(&url, &unique("lgsptest.missing."), &key),
                packet("m-2"),
                TIMEOUT,
            )
            .await
            .expect_err("no such exchange");
        assert!(matches!(e, PublishError::Refused(_)), "{e:?}");
        // The closed channel is replaced: the next packet is confirmed.
        brokers
            .publish(
                "lgsp",
                None,
                &authority,
                &target(&url, &exchange, &key),
                packet("m-3"),
                TIMEOUT,
            )
            .await
            .expect("confirmed after a refused one");
        let got = ch
            .basic_get(queue.clone().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
            .expect("m-3 is in the queue");
        assert_eq!(
            got.properties.message_id().as_ref().map(|s| s.as_str()),
            Some("m-3")
        );
        ch.queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .expect("drop the test queue");
    }
}
