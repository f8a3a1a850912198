//! Broker upstreams: a route's `upstream` (or `trial_upstream`) may name a NATS JetStream subject or a RabbitMQ
//! exchange instead of an HTTPS endpoint.
//!
//! - `nats://host:port/<subject>` (`nats+tls://` over TLS with the hop's client certificate): published to
//!   JetStream with `Nats-Msg-Id` = the message id, delivered once the stream's PubAck arrives.
//! - `amqp://user:pass@host:port/<vhost>?exchange=…&routing_key=…` (`amqps://` over TLS): persistent, mandatory,
//!   under publisher confirms; delivered once the broker acks.

use std::fmt;

/// A broker target, parsed from its URL.
#[derive(Clone, PartialEq, Eq)]
pub enum Broker {
    Nats {
        tls: bool,
        /// The JetStream subject published to (a stream must take it).
        subject: String,
    },
    Amqp {
        tls: bool,
        /// The virtual host, decoded (`%2f` is `/`).
        vhost: String,
        /// The exchange published to; empty: the default exchange (routing key = queue name).
        exchange: String,
        routing_key: String,
        user: String,
        password: String,
    },
}

impl Broker {
    /// `nats` or `amqp`: the `broker` metric label and what logs name.
    pub fn kind(&self) -> &'static str {
        match self {
            Broker::Nats { .. } => "nats",
            Broker::Amqp { .. } => "amqp",
        }
    }

    pub fn tls(&self) -> bool {
        match self {
            Broker::Nats { tls, .. } | Broker::Amqp { tls, .. } => *tls,
        }
    }

    /// Where each message goes on the broker: the subject, or `exchange/routing key`.
    pub fn destination(&self) -> String {
        match self {
            Broker::Nats { subject, .. } => subject.clone(),
            Broker::Amqp {
                exchange,
                routing_key,
                ..
            } => format!("{exchange}/{routing_key}"),
        }
    }
}

/// The password never reaches a log or a problem.
impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Broker::Nats { tls, subject } => f
                .debug_struct("Nats")
                .field("tls", tls)
                .field("subject", subject)
                .finish(),
            Broker::Amqp {
                tls,
                vhost,
                exchange,
                routing_key,
                user,
                ..
            } => f
                .debug_struct("Amqp")
                .field("tls", tls)
                .field("vhost", vhost)
                .field("exchange", exchange)
                .field("routing_key", routing_key)
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// Whether `s` names a broker (and so is parsed by [`parse_broker`]).
pub(crate) fn is_broker_url(s: &str) -> bool {
    ["nats://", "nats+tls://", "amqp://", "amqps://"]
        .iter()
        .any(|p| s.starts_with(p))
}

/// `host:port` with both present.
fn authority(s: &str, url: &str, example: &str) -> Result<String, String> {
    let uri: Option<http::Uri> = format!("https://{s}/").parse().ok();
    match uri {
        Some(u) if u.host().is_some_and(|h| !h.is_empty()) && u.port_u16().is_some() => {
            Ok(s.to_owned())
        }
        _ => Err(format!(
            "`{url}`: `{s}` is not host:port (the port is always written), e.g. \"{example}\""
        )),
    }
}

/// A NATS subject to publish to: tokens of `A-Z a-z 0-9 _ -` joined by dots, no wildcards.
pub fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// Percent-decoding of a URL part (`%2f` → `/`); `None` when it is not well-formed or not UTF-8.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses a broker URL into (`host:port`, the broker).
pub(crate) fn parse_broker(url: &str) -> Result<(String, Broker), String> {
    if let Some((tls, rest)) = url
        .strip_prefix("nats+tls://")
        .map(|r| (true, r))
        .or_else(|| url.strip_prefix("nats://").map(|r| (false, r)))
    {
        let example = "nats://nats.example:4222/cbccvc.in";
        let (auth, subject) = rest.split_once('/').ok_or_else(|| {
            format!(
                "`{url}` names no subject; write the subject after the address, e.g. \"{example}\""
            )
        })?;
        if auth.contains('@') {
            return Err(format!(
                "`{url}`: NATS credentials do not go in the URL; the hop authenticates with its client certificate (nats+tls://)"
            ));
        }
        let authority = authority(auth, url, example)?;
        if !valid_subject(subject) {
            return Err(format!(
                "`{url}`: `{subject}` is not a subject to publish to; write dot-separated tokens of letters, digits, `_` and `-`, without wildcards, e.g. \"cbccvc.in.HoSoCBCCVC\""
            ));
        }
        return Ok((
            authority,
            Broker::Nats {
                tls,
                subject: subject.to_owned(),
            },
        ));
    }
    let (tls, rest) = url
        .strip_prefix("amqps://")
        .map(|r| (true, r))
        .or_else(|| url.strip_prefix("amqp://").map(|r| (false, r)))
        .ok_or_else(|| format!("`{url}` is not a nats://, nats+tls://, amqp:// or amqps:// URL"))?;
    let example = "amqp://lgsp:secret@mq.example:5672/%2f?exchange=cbccvc&routing_key=HoSoCBCCVC";
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (userinfo_host, vhost) = before_query.split_once('/').ok_or_else(|| {
        format!("`{url}` names no virtual host; write it after the address (%2f for \"/\"), e.g. \"{example}\"")
    })?;
    let (userinfo, host) = match userinfo_host.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, userinfo_host),
    };
    let authority = authority(host, url, example)?;
    let bad = |what: &str| format!("`{url}`: {what} is not well-formed percent-encoding");
    let (user, password) = match userinfo {
        Some(u) => {
            let (user, password) = u.split_once(':').ok_or_else(|| {
                format!("`{url}`: write both a user and a password, user:password@host:port")
            })?;
            (
                decode(user).ok_or_else(|| bad("the user"))?,
                decode(password).ok_or_else(|| bad("the password"))?,
            )
        }
        None => ("guest".to_owned(), "guest".to_owned()),
    };
    let vhost = decode(vhost).ok_or_else(|| bad("the virtual host"))?;
    let mut exchange = String::new();
    let mut routing_key = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "exchange" => exchange = v.into_owned(),
            "routing_key" => routing_key = Some(v.into_owned()),
            other => {
                return Err(format!(
                    "`{url}`: unknown parameter `{other}`; a RabbitMQ upstream takes `exchange` and `routing_key`"
                ));
            }
        }
    }
    let routing_key = routing_key.filter(|r| !r.is_empty()).ok_or_else(|| {
        format!("`{url}` names no routing_key; add `?exchange=…&routing_key=…` (with the default exchange, the routing key is the queue's name), e.g. \"{example}\"")
    })?;
    if exchange.len() > 255 || routing_key.len() > 255 {
        return Err(format!(
            "`{url}`: an exchange or routing key is at most 255 bytes"
        ));
    }
    Ok((
        authority,
        Broker::Amqp {
            tls,
            vhost,
            exchange,
            routing_key,
            user,
            password,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_urls_name_a_server_and_a_subject() {
        let (a, b) = parse_broker("nats://127.0.0.1:4222/cbccvc.in.HoSo").expect("nats");
        assert_eq!(a, "127.0.0.1:4222");
        assert_eq!(
            b,
            Broker::Nats {
                tls: false,
                subject: "cbccvc.in.HoSo".into()
            }
        );
        let (_, b) = parse_broker("nats+tls://nats.example:4222/a").expect("nats+tls");
        assert!(b.tls());
        for bad in [
            "nats://127.0.0.1:4222",
            "nats://127.0.0.1/subject",
            "nats://127.0.0.1:4222/a.*",
            "nats://127.0.0.1:4222/a.>",
            "nats://127.0.0.1:4222/a..b",
            "nats://user:pw@127.0.0.1:4222/a",
        ] {
            assert!(parse_broker(bad).is_err(), "{bad} taken");
        }
    }

    #[test]
    fn amqp_urls_name_credentials_vhost_exchange_and_key() {
        let (a, b) = parse_broker(
            "amqp://lgsp:s%40cret@mq.example:5672/%2f?exchange=cbccvc&routing_key=HoSo",
        )
        .expect("amqp");
        assert_eq!(a, "mq.example:5672");
        assert_eq!(
            b,
            Broker::Amqp {
                tls: false,
                vhost: "/".into(),
                exchange: "cbccvc".into(),
                routing_key: "HoSo".into(),
                user: "lgsp".into(),
                password: "s@cret".into(),
            }
        );
        assert!(!format!("{b:?}").contains("s@cret"));
        assert_eq!(b.destination(), "cbccvc/HoSo");
        let (_, b) = parse_broker("amqps://mq.example:5671/lgsp?routing_key=q").expect("amqps");
        assert!(b.tls());
        for bad in [
            "amqp://mq.example:5672/%2f",
            "amqp://mq.example:5672?routing_key=q",
            "amqp://mq.example/%2f?routing_key=q",
            "amqp://mq.example:5672/%2f?routing_key=q&prefetch=3",
            "amqp://user@mq.example:5672/%2f?routing_key=q",
            "amqp://mq.example:5672/%zz?routing_key=q",
        ] {
            assert!(parse_broker(bad).is_err(), "{bad} taken");
        }
    }
}
