//! `[[consumer]]`: broker sources. Each reads a JetStream durable consumer or a RabbitMQ queue and delivers every
//! packet to one route's upstream as one hop — the same journal, idempotency (the message id travels with the
//! packet) and retry policy as a packet arriving over HTTPS — acknowledging the broker only after the upstream took
//! the packet, or after it refused it for good and the packet went to `dead_letter` with the reason.

use std::collections::HashSet;

use super::broker::{Broker, parse_broker};
use super::check::Checker;
use super::{HopConfig, Origin, Upstream, defaults};
use crate::file::FileConsumer;
use crate::parse::valid_identity;

/// Where a consumer reads.
#[derive(Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// A JetStream stream and the durable pull consumer this process reads through (created when missing).
    Nats {
        tls: bool,
        stream: String,
        consumer: String,
    },
    /// A RabbitMQ queue, read with manual acknowledgements.
    Amqp {
        tls: bool,
        vhost: String,
        queue: String,
        user: String,
        password: String,
    },
}

impl std::fmt::Debug for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceKind::Nats {
                tls,
                stream,
                consumer,
            } => write!(
                f,
                "Nats {{ tls: {tls}, stream: {stream}, consumer: {consumer} }}"
            ),
            SourceKind::Amqp {
                tls,
                vhost,
                queue,
                user,
                ..
            } => write!(
                f,
                "Amqp {{ tls: {tls}, vhost: {vhost}, queue: {queue}, user: {user}, password: <redacted> }}"
            ),
        }
    }
}

impl SourceKind {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceKind::Nats { .. } => "nats",
            SourceKind::Amqp { .. } => "amqp",
        }
    }

    pub fn tls(&self) -> bool {
        match self {
            SourceKind::Nats { tls, .. } | SourceKind::Amqp { tls, .. } => *tls,
        }
    }

    /// The connection's settings as a broker target (the same connection code serves both).
    pub fn as_broker(&self) -> Broker {
        match self {
            SourceKind::Nats { tls, stream, .. } => Broker::Nats {
                tls: *tls,
                subject: stream.clone(),
            },
            SourceKind::Amqp {
                tls,
                vhost,
                queue,
                user,
                password,
            } => Broker::Amqp {
                tls: *tls,
                vhost: vhost.clone(),
                exchange: String::new(),
                routing_key: queue.clone(),
                user: user.clone(),
                password: password.clone(),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub name: String,
    pub hop: String,
    pub route: String,
    /// `host:port` of the source broker.
    pub authority: String,
    pub source: SourceKind,
    pub dead_letter: Upstream,
    pub max_in_flight: usize,
    pub origin: Origin,
}

/// A source URL: (`host:port`, what to read).
pub(crate) fn parse_source(url: &str) -> Result<(String, SourceKind), String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    // Each kind of source takes exactly one parameter.
    let only = |name: &str, kind: &str, what: &str, example: &str| {
        let mut value = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if k != name {
                return Err(format!(
                    "`{url}`: unknown parameter `{k}`; a {kind} source takes `{name}`"
                ));
            }
            value = Some(v.into_owned()).filter(|v| !v.is_empty());
        }
        value.ok_or_else(|| {
            format!("`{url}` names no {what}; add `?{name}=<name>`, e.g. \"{example}\"")
        })
    };
    if base.starts_with("nats://") || base.starts_with("nats+tls://") {
        let example = "nats://nats.example:4222/CBCCVC?consumer=ndxp-in";
        let consumer = only("consumer", "NATS", "durable consumer", example)?;
        let (authority, b) = parse_broker(base).map_err(|e| e.replace("subject", "stream"))?;
        let Broker::Nats { tls, subject } = b else {
            return Err(format!("`{url}` is not a NATS source"));
        };
        let name_ok = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !name_ok(&subject) || !name_ok(&consumer) {
            return Err(format!(
                "`{url}`: a stream and a consumer are named with letters, digits, `_` and `-`, e.g. \"{example}\""
            ));
        }
        return Ok((
            authority,
            SourceKind::Nats {
                tls,
                stream: subject,
                consumer,
            },
        ));
    }
    if base.starts_with("amqp://") || base.starts_with("amqps://") {
        let example = "amqp://lgsp:secret@mq.example:5672/%2f?queue=cbccvc.HoSoCBCCVC";
        let queue = only("queue", "RabbitMQ", "queue", example)?;
        // The connection part parses as a target on the default exchange.
        let (authority, b) = parse_broker(&format!("{base}?routing_key={queue}"))?;
        let Broker::Amqp {
            tls,
            vhost,
            user,
            password,
            ..
        } = b
        else {
            return Err(format!("`{url}` is not a RabbitMQ source"));
        };
        return Ok((
            authority,
            SourceKind::Amqp {
                tls,
                vhost,
                queue,
                user,
                password,
            },
        ));
    }
    Err(format!(
        "`{url}` is not a broker source; write \"nats://host:port/<stream>?consumer=<durable>\" or \"amqp://user:pass@host:port/<vhost>?queue=<queue>\""
    ))
}

pub(super) fn consumers(
    c: &mut Checker<'_>,
    list: &[FileConsumer],
    hops: &[HopConfig],
) -> Vec<ConsumerConfig> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, f) in list.iter().enumerate() {
        let field = format!("consumer[{i}]");
        let name = f.name.get_ref();
        if !valid_identity(name) {
            c.problem(
                &f.name,
                format!("{field}.name"),
                "write 1–64 of A-Z a-z 0-9 . _ - (it becomes a metric label)",
            );
        } else if !names.insert(name.clone()) {
            c.problem(
                &f.name,
                format!("{field}.name"),
                format!("a second consumer named `{name}`; names are unique"),
            );
        }
        let hop = hops.iter().find(|h| h.name == *f.hop.get_ref());
        let route = match hop {
            None => {
                c.problem(
                    &f.hop,
                    format!("{field}.hop"),
                    format!("no [[hop]] named `{}` in this file", f.hop.get_ref()),
                );
                None
            }
            Some(h) => {
                let r = h.routes.iter().find(|r| r.name == *f.route.get_ref());
                match r {
                    None => c.problem(
                        &f.route,
                        format!("{field}.route"),
                        format!("hop `{}` has no route named `{}`", h.name, f.route.get_ref()),
                    ),
                    Some(r) if r.local() || r.message_type.is_none() || r.upstream.broker.is_some() => c.problem(
                        &f.route,
                        format!("{field}.route"),
                        "name a packet route (with `message_type`) whose upstream is an https URL: the consumer delivers there",
                    ),
                    Some(_) => {}
                }
                r
            }
        };
        let parsed = parse_source(f.source.get_ref());
        let (authority, source) = match parsed {
            Ok(s) => s,
            Err(e) => {
                c.problem(&f.source, format!("{field}.source"), e);
                (
                    String::new(),
                    SourceKind::Nats {
                        tls: false,
                        stream: String::new(),
                        consumer: String::new(),
                    },
                )
            }
        };
        let dead_letter = match parse_broker(f.dead_letter.get_ref()) {
            Ok((authority, broker)) => Upstream {
                authority,
                base_path: String::new(),
                broker: Some(broker),
                origin: c.origin(&f.dead_letter, format!("{field}.dead_letter")),
            },
            Err(e) => {
                c.problem(&f.dead_letter, format!("{field}.dead_letter"), e);
                Upstream::none()
            }
        };
        let max_in_flight = c.bounded(
            f.max_in_flight.as_ref(),
            &format!("{field}.max_in_flight"),
            defaults::CONSUMER_IN_FLIGHT,
            &defaults::CONSUMER_IN_FLIGHT_RANGE,
        );
        if route.is_some() {
            out.push(ConsumerConfig {
                name: name.clone(),
                hop: f.hop.get_ref().clone(),
                route: f.route.get_ref().clone(),
                authority,
                source,
                dead_letter,
                max_in_flight,
                origin: c.origin(&f.source, format!("{field}.source")),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_name_a_durable_consumer_or_a_queue() {
        let (a, s) = parse_source("nats://127.0.0.1:4222/CBCCVC?consumer=ndxp-in").expect("nats");
        assert_eq!(a, "127.0.0.1:4222");
        assert_eq!(
            s,
            SourceKind::Nats {
                tls: false,
                stream: "CBCCVC".into(),
                consumer: "ndxp-in".into()
            }
        );
        let (_, s) = parse_source("amqps://u:p%40ss@mq:5671/%2f?queue=cbccvc.in").expect("amqps");
        assert_eq!(
            s,
            SourceKind::Amqp {
                tls: true,
                vhost: "/".into(),
                queue: "cbccvc.in".into(),
                user: "u".into(),
                password: "p@ss".into()
            }
        );
        assert!(!format!("{s:?}").contains("p@ss"));
        for bad in [
            "nats://127.0.0.1:4222/CBCCVC",
            "nats://127.0.0.1:4222/CB.CCVC?consumer=x",
            "nats://127.0.0.1:4222/CBCCVC?consumer=x&queue=y",
            "amqp://mq:5672/%2f",
            "amqp://mq:5672/%2f?queue=q&exchange=x",
            "https://mq:5672/q",
        ] {
            assert!(parse_source(bad).is_err(), "{bad} taken");
        }
    }
}
