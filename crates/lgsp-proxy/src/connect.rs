//! `check-config --connect`: after [`crate::prepare`], open what the config points at — the journal (read only),
//! the shared rate-limit backend, and every upstream (production and trial) of every hop, over TLS with that hop's
//! own client identity; for a broker upstream, its server and the stream or exchange that takes the route's
//! packets — without sending a request, and report each.

use std::time::Duration;

use lgsp_config::{Config, Origin, RateLimitBackend};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::prepare::Prepared;

/// One thing opened, and how it went.
#[derive(Debug)]
pub struct Reach {
    /// What was opened, e.g. `hop lgsp → localhost:8444 (upstream of HoSoCBCCVC, BienChe)`.
    pub what: String,
    /// Where the config names it.
    pub origin: Origin,
    /// What answered, or why nothing did.
    pub outcome: Result<String, String>,
}

/// Opens the rate-limit backend and each distinct upstream of each hop, at most `timeout` each.
pub async fn connect(cfg: &Config, prepared: &Prepared, timeout: Duration) -> Vec<Reach> {
    let mut out = Vec::new();
    if let RateLimitBackend::Redis { url, origin } = &cfg.ratelimit.backend {
        let outcome = match tokio::time::timeout(timeout, prepared.limits.ping()).await {
            Ok(Ok(())) => Ok("answered a rate-limit decision".to_owned()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        out.push(Reach {
            what: format!("rate-limit backend {}", redacted(url)),
            origin: origin.clone(),
            outcome,
        });
    }
    let outcome = match tokio::time::timeout(timeout, lgsp_journal::inspect(&cfg.journal.url)).await
    {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    };
    out.push(Reach {
        what: format!("journal {}", redacted(&cfg.journal.url)),
        origin: cfg.journal.origin.clone(),
        outcome,
    });
    for (h, p) in cfg.hops.iter().zip(&prepared.hops) {
        // Each address once per hop, named by the first route that uses it.
        let mut targets: Vec<(&str, Vec<&str>, &Origin)> = Vec::new();
        let upstreams = h.routes.iter().flat_map(|r| {
            let production = (!r.local()).then_some(&r.upstream);
            production
                .into_iter()
                .chain(&r.trial_upstream)
                .map(move |u| (u, r.name.as_str()))
        });
        let mut brokers: Vec<(&lgsp_config::Upstream, Vec<&str>)> = Vec::new();
        for (u, route) in upstreams {
            if u.broker.is_some() {
                match brokers.iter_mut().find(|(b, _)| *b == u) {
                    Some((_, routes)) if !routes.contains(&route) => routes.push(route),
                    Some(_) => {}
                    None => brokers.push((u, vec![route])),
                }
                continue;
            }
            match targets.iter_mut().find(|(a, ..)| *a == u.authority) {
                Some((_, routes, _)) if !routes.contains(&route) => routes.push(route),
                Some(_) => {}
                None => targets.push((&u.authority, vec![route], &u.origin)),
            }
        }
        for (authority, routes, origin) in targets {
            out.push(Reach {
                what: format!(
                    "hop {} → {authority} (routes {})",
                    h.name,
                    routes.join(", ")
                ),
                origin: origin.clone(),
                outcome: handshake(authority, p.upstream_tls.clone(), timeout).await,
            });
        }
        let reach = lgsp_broker::Brokers::new();
        // Inbox routes: a stream takes every agency's subject under the prefix.
        for r in h.routes.iter().filter(|r| r.inbox.is_some()) {
            let Some(u) = &r.inbox else { continue };
            let Some(lgsp_config::Broker::Nats { tls, subject }) = &u.broker else {
                continue;
            };
            let every = lgsp_config::Broker::Nats {
                tls: *tls,
                subject: format!("{subject}.>"),
            };
            out.push(Reach {
                what: format!(
                    "hop {} inbox {} ← nats {} {subject}.<agency>",
                    h.name, r.name, u.authority
                ),
                origin: u.origin.clone(),
                outcome: reach
                    .check(
                        &h.name,
                        p.broker_identity.as_ref(),
                        &u.authority,
                        &every,
                        timeout,
                    )
                    .await,
            });
        }
        for c in cfg.consumers.iter().filter(|c| c.hop == h.name) {
            out.push(Reach {
                what: format!(
                    "consumer {} ({}) ← {} {}",
                    c.name,
                    h.name,
                    c.source.kind(),
                    c.authority
                ),
                origin: c.origin.clone(),
                outcome: lgsp_broker::check_source(
                    &h.name,
                    p.broker_identity.as_ref(),
                    &c.authority,
                    &c.source,
                    timeout,
                )
                .await,
            });
            if let Some(b) = &c.dead_letter.broker {
                out.push(Reach {
                    what: format!(
                        "consumer {} dead letters → {} {} {}",
                        c.name,
                        b.kind(),
                        c.dead_letter.authority,
                        b.destination()
                    ),
                    origin: c.dead_letter.origin.clone(),
                    outcome: reach
                        .check(
                            &h.name,
                            p.broker_identity.as_ref(),
                            &c.dead_letter.authority,
                            b,
                            timeout,
                        )
                        .await,
                });
            }
        }
        for (u, routes) in brokers {
            let Some(b) = &u.broker else { continue };
            let outcome = reach
                .check(
                    &h.name,
                    p.broker_identity.as_ref(),
                    &u.authority,
                    b,
                    timeout,
                )
                .await;
            out.push(Reach {
                what: format!(
                    "hop {} → {} {}{} {} (routes {})",
                    h.name,
                    b.kind(),
                    u.authority,
                    if b.tls() { " over TLS" } else { "" },
                    b.destination(),
                    routes.join(", ")
                ),
                origin: u.origin.clone(),
                outcome,
            });
        }
    }
    out
}

/// A Redis or PostgreSQL URL without its password.
fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://…@{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// TCP, then a TLS handshake as this hop; closes without sending anything.
async fn handshake(
    authority: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<String, String> {
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .trim_matches(['[', ']']);
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host} is not a TLS server name: {e}"))?;
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(authority))
        .await
        .map_err(|_| format!("no TCP answer within {timeout:?}"))?
        .map_err(|e| format!("cannot connect: {e}"))?;
    let stream = tokio::time::timeout(
        timeout,
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .map_err(|_| format!("the TLS handshake did not finish within {timeout:?}"))?
    .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let mut stream = stream;
    refused_after_handshake(&mut stream, timeout).await?;
    let (_, conn) = stream.get_ref();
    let version = conn
        .protocol_version()
        .map_or_else(|| "TLS".to_owned(), |v| format!("{v:?}"));
    let subject = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| lgsp_tls::describe_certificate(c.as_ref()))
        .map(|(s, _)| s)
        .unwrap_or_default();
    Ok(format!("{version}, server certificate {subject}"))
}

/// How long to listen after a TLS 1.3 handshake for the upstream's verdict on this hop's certificate (TLS 1.3
/// servers send it after the client thinks the handshake done).
const VERDICT_WAIT: Duration = Duration::from_millis(500);

/// An alert the upstream sends once it has checked this hop's certificate; silence means it was accepted.
async fn refused_after_handshake(
    stream: &mut tokio_rustls::client::TlsStream<TcpStream>,
    timeout: Duration,
) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(VERDICT_WAIT.min(timeout), stream.read(&mut byte)).await {
        Err(_) | Ok(Ok(1..)) => Ok(()),
        Ok(Ok(0)) => Err("the upstream closed the connection after the handshake".into()),
        Ok(Err(e)) => Err(format!(
            "the upstream refused this hop's client certificate: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_reports() {
        assert_eq!(
            redacted("redis://:secret@10.0.0.1:6379/0"),
            "redis://…@10.0.0.1:6379/0"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
