//! The one preparation path: a parsed [`Config`] becomes everything a running gateway needs — TLS configs, the
//! schema catalogue, the token secret, the rate-limit backend, route tables and each hop's stack. `run`, reload and
//! `check-config` all call [`prepare`], so `check-config` refuses exactly what `run` refuses, every problem at the
//! line of the config that caused it.

use std::sync::Arc;

use lgsp_auth::{AuthPolicy, TokenIssuer};
use lgsp_broker::ClientIdentity;
use lgsp_config::{
    ClientTlsConfig, Config, ConfigError, HopConfig, Origin, Problem, RateLimitBackend,
    SchemaSource, ServerTlsConfig, SigningConfig,
};
use lgsp_journal::Journal;
use lgsp_metrics::{AdminAccess, Metrics};
use lgsp_schema::{Catalog, Limits, Options};
use lgsp_tls::{Expiry, ServerTls, TlsError};

use crate::connection::Retired;
use crate::limit::{LimitLayer, LimitPolicy};
use crate::listener::{KnowsIdentity, ListenerState};
use crate::stack::{HopParts, hop_stack};
use crate::validate::{ValidateLayer, ValidationPolicy};
use lgsp_delivery::journal::JournalLayer;
use lgsp_delivery::outbox::{Deliveries, DeliveryTarget};
use lgsp_hop::HopContext;
use lgsp_hop::route::RouteTable;
use lgsp_upstream::forward::{Forward, upstream_client};

/// A config made ready to serve. Nothing listens yet.
pub struct Prepared {
    /// One per `[[hop]]`, in config order.
    pub hops: Vec<PreparedHop>,
    /// The emulator's server TLS, when the config runs one.
    pub emulator_tls: Option<ServerTls>,
    pub limits: Arc<LimitPolicy>,
    /// When each configured certificate and CRL stops being usable, by listener name.
    pub expiry: Vec<(String, Expiry)>,
    /// Who may use the admin listener (its token, its names).
    pub admin: AdminAccess,
}

pub struct PreparedHop {
    pub name: String,
    pub state: ListenerState,
    /// What its outbox delivers with.
    pub delivery: DeliveryTarget,
    /// This hop's client identity towards its upstreams.
    pub upstream_tls: Arc<rustls::ClientConfig>,
    /// The same identity for its brokers over TLS, when a route has one.
    pub broker_identity: Option<ClientIdentity>,
}

/// What every hop of a config shares.
struct Shared {
    validation: Arc<ValidationPolicy>,
    secret: Secrets,
    limits: Arc<LimitPolicy>,
    journal: Option<Journal>,
}

/// The TLS material of one listener, loaded.
struct Tls {
    server: ServerTls,
    client: Option<Arc<rustls::ClientConfig>>,
    expiry: Vec<Expiry>,
}

/// Prepares `cfg`. `keep` is the rate limiter of the config being replaced when its settings are unchanged (its
/// state — every key's TAT, the in-flight counts — survives the reload). Every problem is reported, not the first.
pub fn prepare(
    cfg: &Config,
    metrics: &Arc<Metrics>,
    keep: Option<Arc<LimitPolicy>>,
    journal: Option<Journal>,
) -> Result<Prepared, ConfigError> {
    let mut problems = Vec::new();
    let catalog = ok(&mut problems, catalog(&cfg.validation.schemas));
    let secret = ok(&mut problems, token_secret(cfg));
    let admin = ok(&mut problems, admin_access(cfg));
    let limits = ok(&mut problems, keep.map_or_else(|| limiter(cfg), Ok));
    let mut tls = Vec::new();
    for h in &cfg.hops {
        tls.push(listener_tls(&h.tls, Some(&h.upstream_tls), &mut problems));
    }
    let broker_pems: Vec<Option<BrokerPems>> = cfg
        .hops
        .iter()
        .map(|h| ok(&mut problems, broker_pems(h, &cfg.consumers)).flatten())
        .collect();
    let emulator = cfg
        .emulator
        .as_ref()
        .map(|e| listener_tls(&e.tls, None, &mut problems));
    let signing = match &cfg.signing {
        None => Some(None),
        Some(s) => signing(s, &mut problems).map(Some),
    };
    let (Some(catalog), Some(secret), Some(limits), Some(admin), Some(signing), true) =
        (catalog, secret, limits, admin, signing, problems.is_empty())
    else {
        return Err(ConfigError {
            source: cfg.source.clone(),
            problems,
        });
    };
    let mut expiry = Vec::new();
    let signing = signing.map(|(policy, expiries)| {
        expiry.extend(expiries.into_iter().map(|e| ("signing".to_owned(), e)));
        Arc::new(policy)
    });
    let shared = Shared {
        validation: Arc::new(validation(cfg, catalog, signing)),
        secret,
        limits: limits.clone(),
        journal,
    };
    let mut hops = Vec::new();
    for ((h, t), pems) in cfg
        .hops
        .iter()
        .zip(tls.into_iter().flatten())
        .zip(broker_pems)
    {
        expiry.extend(t.expiry.into_iter().map(|e| (h.name.clone(), e)));
        let Some(client) = t.client else { continue };
        let identity = pems.map(|p| ClientIdentity {
            rustls: client.clone(),
            cert_pem: p.cert,
            key_pem: p.key,
            ca_pem: p.ca,
        });
        let signer = match hop_key(h) {
            Ok(k) => k,
            Err(p) => {
                return Err(ConfigError {
                    source: cfg.source.clone(),
                    problems: vec![p],
                });
            }
        };
        hops.push(hop(
            cfg,
            h,
            &shared,
            metrics,
            (t.server, client),
            identity,
            signer,
        ));
    }
    let emulator_tls = emulator.flatten().map(|t| {
        expiry.extend(t.expiry.into_iter().map(|e| ("emulator".to_owned(), e)));
        t.server
    });
    Ok(Prepared {
        hops,
        emulator_tls,
        limits,
        expiry,
        admin,
    })
}

/// The PEM files of a hop's client identity, as RabbitMQ's TLS stack takes them.
struct BrokerPems {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: String,
}

/// The hop's `[hop.upstream_tls]` files read for its brokers over TLS (`nats+tls://`, `amqps://`); `None` when no
/// route or consumer of the hop has one.
fn broker_pems(
    h: &HopConfig,
    consumers: &[lgsp_config::ConsumerConfig],
) -> Result<Option<BrokerPems>, Problem> {
    let tls = |u: &lgsp_config::Upstream| u.broker.as_ref().is_some_and(lgsp_config::Broker::tls);
    let tls_broker = h.routes.iter().any(|r| {
        std::iter::once(&r.upstream)
            .chain(r.trial_upstream.as_ref())
            .any(tls)
    }) || consumers
        .iter()
        .filter(|c| c.hop == h.name)
        .any(|c| c.source.tls() || tls(&c.dead_letter));
    if !tls_broker {
        return Ok(None);
    }
    let read = |p: &lgsp_config::ConfigPath| {
        std::fs::read(&p.path).map_err(|e| {
            p.origin.problem(format!(
                "{} cannot be read for the hop's TLS brokers: {e}",
                p.path.display()
            ))
        })
    };
    let t = &h.upstream_tls;
    let mut ca = String::new();
    for c in &t.ca {
        ca.push_str(&String::from_utf8_lossy(&read(c)?));
        ca.push('\n');
    }
    Ok(Some(BrokerPems {
        cert: read(&t.cert)?,
        key: read(&t.key)?,
        ca,
    }))
}

/// The value, or `None` with its problem recorded.
fn ok<T>(problems: &mut Vec<Problem>, r: Result<T, Problem>) -> Option<T> {
    r.map_err(|p| problems.push(p)).ok()
}

fn catalog(source: &SchemaSource) -> Result<Catalog, Problem> {
    match source {
        SchemaSource::Embedded => Catalog::embedded()
            .map_err(|e| Origin::named("validation.schemas").problem(format!("the embedded schemas do not load: {e}"))),
        SchemaSource::Dir(dir) => Catalog::load(&dir.path).map_err(|e| {
            dir.origin.problem(format!(
                "the schemas in {} do not load: {e}; the directory needs {{type}}.xsd and {{type}}.schema.json for each of {}, and the code lists codes/*.csv",
                dir.path.display(),
                lgsp_schema::MESSAGE_TYPES.join(", ")
            ))
        }),
    }
}

/// The admin listener's access rules: the token's SHA-256 (never the token) and its host names.
fn admin_access(cfg: &Config) -> Result<AdminAccess, Problem> {
    let token = match &cfg.admin.token_file {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(&p.path).map_err(|e| {
                p.origin
                    .problem(format!("{}: cannot read: {e}", p.path.display()))
            })?;
            let token = text.trim();
            let min = lgsp_config::defaults::ADMIN_TOKEN_MIN_CHARS;
            if token.len() < min || token.chars().any(|c| !c.is_ascii_graphic()) {
                return Err(p.origin.problem(format!(
                    "{} must hold one token of at least {min} printable characters (no spaces), e.g. from `openssl rand -hex 32 > FILE`",
                    p.path.display()
                )));
            }
            Some(token.to_owned())
        }
    };
    Ok(AdminAccess::new(token.as_deref(), cfg.admin.hosts.clone()))
}

/// The token secret and the one before it (`[token] secret_file`, `previous_secret_file`), when named.
type Secrets = (Option<Vec<u8>>, Option<Vec<u8>>);

/// The shared token secret and the previous one, when the config names them.
fn token_secret(cfg: &Config) -> Result<Secrets, Problem> {
    Ok((
        read_secret(cfg.token.secret_file.as_ref())?,
        read_secret(cfg.token.previous_secret_file.as_ref())?,
    ))
}

/// A secret file of at least the minimum size.
fn read_secret(p: Option<&lgsp_config::ConfigPath>) -> Result<Option<Vec<u8>>, Problem> {
    let Some(p) = p else {
        return Ok(None);
    };
    let bytes = std::fs::read(&p.path).map_err(|e| {
        p.origin
            .problem(format!("{}: cannot read: {e}", p.path.display()))
    })?;
    let min = lgsp_config::defaults::TOKEN_SECRET_MIN_BYTES;
    if bytes.len() < min {
        return Err(p.origin.problem(format!(
            "{} holds {} bytes; write at least {min} random bytes (e.g. `head -c 32 /dev/urandom > FILE`)",
            p.path.display(),
            bytes.len()
        )));
    }
    Ok(Some(bytes))
}

fn limiter(cfg: &Config) -> Result<Arc<LimitPolicy>, Problem> {
    LimitPolicy::new(&cfg.ratelimit, &cfg.overload)
        .map(Arc::new)
        .map_err(|e| {
            let origin = match &cfg.ratelimit.backend {
                RateLimitBackend::Redis { origin, .. } => origin.clone(),
                RateLimitBackend::Local => Origin::named("ratelimit.backend"),
            };
            origin.problem(format!(
                "{e}; write a Redis URL like \"redis://127.0.0.1:6379\" (or \"rediss://…\" for TLS)"
            ))
        })
}

/// A listener's server TLS, its upstream client TLS when it has upstreams, and their expiries; `None` with the
/// problems recorded when any file fails (each file's problem once).
fn listener_tls(
    server: &ServerTlsConfig,
    upstream: Option<&ClientTlsConfig>,
    problems: &mut Vec<Problem>,
) -> Option<Tls> {
    let mut failed = |e: TlsError| problems.push(e.problem());
    let server_cfg = lgsp_tls::server_tls(server).map_err(&mut failed).ok();
    let client = upstream.map(|u| {
        lgsp_tls::client_config(u)
            .map(Arc::new)
            .map_err(&mut failed)
            .ok()
    });
    let (server_cfg, client) = match (server_cfg, client) {
        (Some(s), None) => (s, None),
        (Some(s), Some(Some(c))) => (s, Some(c)),
        _ => return None,
    };
    // Every file loaded once already; what is left to fail here is a certificate x509-parser cannot read.
    let expiry = expiries(server, upstream).map_err(&mut failed).ok()?;
    Some(Tls {
        server: server_cfg,
        client,
        expiry,
    })
}

/// When each certificate and CRL of a listener (and its upstream identity) stops being usable.
fn expiries(
    tls: &ServerTlsConfig,
    upstream: Option<&ClientTlsConfig>,
) -> Result<Vec<Expiry>, TlsError> {
    let mut all = lgsp_tls::cert_expiry(&tls.cert, "server")?;
    for ca in &tls.client_ca {
        all.extend(lgsp_tls::cert_expiry(ca, "ca")?);
    }
    for crl in &tls.crls {
        all.extend(lgsp_tls::crl_expiry(crl)?);
    }
    if let Some(u) = upstream {
        all.extend(lgsp_tls::cert_expiry(&u.cert, "client")?);
        for ca in &u.ca {
            all.extend(lgsp_tls::cert_expiry(ca, "ca")?);
        }
    }
    Ok(all)
}

/// The approval policy of a `[signing]` section (for `lgsp-gateway verify`), or every problem of its files.
pub fn signing_policy(s: &SigningConfig) -> Result<lgsp_sign::Policy, Vec<Problem>> {
    let mut problems = Vec::new();
    signing(s, &mut problems)
        .map(|(policy, _)| policy)
        .ok_or(problems)
}

/// The signing CAs and CRLs loaded into the approval policy, with their expiries; `None` with the problems
/// recorded when a file fails (each at the field naming it).
fn signing(
    s: &SigningConfig,
    problems: &mut Vec<Problem>,
) -> Option<(lgsp_sign::Policy, Vec<Expiry>)> {
    let before = problems.len();
    let mut cas = Vec::new();
    let mut expiry = Vec::new();
    for p in &s.ca {
        let loaded = lgsp_tls::load_certs(p).and_then(|certs| {
            // Each file on its own first, so a certificate that is no CA is named by its own line.
            lgsp_sign::TrustStore::new(&certs, &[])
                .map_err(|e| TlsError::at(p, format!("not usable as a signing CA: {e}")))?;
            expiry.extend(lgsp_tls::cert_expiry(p, "signing_ca")?);
            Ok(certs)
        });
        match loaded {
            Ok(certs) => cas.extend(certs),
            Err(e) => problems.push(e.problem()),
        }
    }
    let mut crls = Vec::new();
    for p in &s.crls {
        let loaded = lgsp_tls::load_crls(p).and_then(|list| {
            let der: Vec<Vec<u8>> = list.iter().map(|c| c.as_ref().to_vec()).collect();
            if !cas.is_empty() {
                lgsp_sign::TrustStore::new(&cas, &der)
                    .map_err(|e| TlsError::at(p, format!("not usable as a CRL: {e}")))?;
            }
            expiry.extend(lgsp_tls::crl_expiry(p)?);
            Ok(der)
        });
        match loaded {
            Ok(der) => crls.extend(der),
            Err(e) => problems.push(e.problem()),
        }
    }
    if problems.len() > before {
        return None;
    }
    let trust = lgsp_sign::TrustStore::new(&cas, &crls)
        .map_err(|e| problems.push(Origin::named("signing.ca").problem(e)))
        .ok()?;
    let policy = lgsp_sign::Policy {
        trust,
        identity_prefix: s.identity_uri_prefix.clone(),
        window: lgsp_sign::Window {
            days: s.approval_window_days,
            lateness: time::Duration::try_from(s.approval_lateness).unwrap_or(time::Duration::ZERO),
        },
    };
    Some((policy, expiry))
}

fn validation(
    cfg: &Config,
    catalog: Catalog,
    signing: Option<Arc<lgsp_sign::Policy>>,
) -> ValidationPolicy {
    let v = &cfg.validation;
    let options = Options {
        limits: Limits {
            max_depth: v.max_depth,
            max_attributes: v.max_attributes,
            max_text: v.max_text_bytes,
            max_errors: v.max_errors,
        },
        domain: v.domain_rules,
        today: None,
    };
    ValidationPolicy::new(
        Arc::new(catalog),
        options,
        v.trial_max_errors,
        &cfg.agencies,
    )
    .signing(
        signing,
        cfg.signing.as_ref().is_some_and(|s| s.check_coverage),
    )
}

/// One hop's stack over its loaded TLS.
/// The hop's signing key (RFC 9421): the key of its upstream client certificate, named by that certificate's
/// identity (what the next hop's `peers` lists).
fn hop_key(h: &HopConfig) -> Result<Arc<lgsp_sign::http::HopKey>, Problem> {
    let t = &h.upstream_tls;
    let certs = lgsp_tls::load_certs(&t.cert).map_err(|e| e.problem())?;
    let first = certs.first().ok_or_else(|| {
        t.cert
            .origin
            .problem(format!("{}: holds no certificate", t.cert.path.display()))
    })?;
    let identity = lgsp_tls::PeerIdentity::from_certificate(first, &h.tls.identity_uri_prefix)
        .map_err(|e| {
            t.cert
                .origin
                .problem(format!("{}: {e}", t.cert.path.display()))
        })?;
    let pem = std::fs::read(&t.key.path).map_err(|e| {
        t.key
            .origin
            .problem(format!("{} cannot be read: {e}", t.key.path.display()))
    })?;
    lgsp_sign::http::HopKey::from_pem(&pem, &identity.id)
        .map(Arc::new)
        .map_err(|e| {
            t.key.origin.problem(format!(
                "{}: cannot sign this hop's requests: {e}",
                t.key.path.display()
            ))
        })
}

fn hop(
    cfg: &Config,
    h: &HopConfig,
    shared: &Shared,
    metrics: &Arc<Metrics>,
    (server, client): (ServerTls, Arc<rustls::ClientConfig>),
    identity: Option<ClientIdentity>,
    signer: Arc<lgsp_sign::http::HopKey>,
) -> PreparedHop {
    let hop = Arc::new(
        HopContext::new(&h.name, &h.peers, metrics.clone())
            .stripping(h.strip_headers.iter().map(String::as_str)),
    );
    crate::validate::export_rules(&hop, &h.routes);
    // The outbox gauges from start-up (the journal watcher sets them every 2 s).
    metrics.outbox_depth.with_label_values(&[h.name.as_str()]);
    metrics
        .outbox_oldest_age
        .with_label_values(&[h.name.as_str()]);
    let tokens = TokenIssuer::new(&h.name, shared.secret.0.as_deref(), cfg.token.ttl)
        .with_previous(shared.secret.1.as_deref());
    let auth = Arc::new(
        AuthPolicy::new(&h.name, &cfg.agencies, &h.peers, metrics.clone(), tokens)
            .throttling(cfg.auth.failures),
    );
    let knows: KnowsIdentity = {
        let auth = auth.clone();
        Arc::new(move |id| auth.knows(id))
    };
    let routes = Arc::new(RouteTable::new(&hop, &h.routes));
    let forward = Forward::new(
        upstream_client((*client).clone(), h.upstream.protocol),
        hop.clone(),
        &h.routes,
        h.upstream.max_connections,
        identity.clone(),
        Some(signer),
    );
    let delivery = DeliveryTarget {
        hop: hop.clone(),
        routes: routes.clone(),
        forward: forward.clone(),
        deliveries: Arc::new(Deliveries::new(&hop, &h.routes)),
        settings: cfg.delivery.clone(),
    };
    let parts = HopParts {
        auth,
        routes,
        limit: LimitLayer::new(shared.limits.clone(), hop.clone(), &h.routes, &cfg.agencies),
        validate: ValidateLayer::new(shared.validation.clone(), hop.clone()),
        journal: JournalLayer::new(
            shared.journal.clone(),
            hop.clone(),
            &h.routes,
            cfg.delivery.lease,
        ),
        forward,
        hop,
    };
    PreparedHop {
        name: h.name.clone(),
        delivery,
        state: ListenerState {
            tls: server,
            identity_uri_prefix: h.tls.identity_uri_prefix.clone(),
            pins: Arc::new(lgsp_tls::CertificatePins::new(&cfg.agencies)),
            handshake_timeout: h.tls.handshake_timeout,
            http: h.http.clone(),
            service: hop_stack(parts),
            knows,
            retired: Retired::default(),
        },
        upstream_tls: client,
        broker_identity: identity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lgsp_hop::testing::{Fixture, metrics};

    #[test]
    fn a_config_prepares_every_listener_with_its_expiries() {
        let fixture = Fixture::new();
        let p = prepare(&fixture.config(&[]), &metrics(), None, None).unwrap();
        let names: Vec<&str> = p.hops.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["lgsp", "ndxp"]);
        assert!(p.emulator_tls.is_some());
        assert_eq!(p.limits.backend(), "local");
        for (listener, role) in [
            ("lgsp", "server"),
            ("lgsp", "client"),
            ("lgsp", "crl"),
            ("emulator", "ca"),
        ] {
            assert!(
                p.expiry
                    .iter()
                    .any(|(l, e)| l == listener && e.role == role),
                "{listener} {role}: {:?}",
                p.expiry
            );
        }
    }

    #[test]
    fn every_problem_is_reported_at_its_origin_and_a_kept_limiter_is_used() {
        let fixture = Fixture::new();
        let cfg = fixture.config(&[
            (
                "cert = \"certs/lgsp-client.pem\"",
                "cert = \"certs/none.pem\"",
            ),
            (
                "key = \"certs/emulator-server.key\"",
                "key = \"certs/ndxp-server.key\"",
            ),
            (
                "# secret_file = \"token.secret\"",
                "secret_file = \"certs/ca.pem.none\"",
            ),
        ]);
        let e = prepare(&cfg, &metrics(), None, None)
            .err()
            .expect("refused");
        let fields: Vec<&str> = e.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "token.secret_file",
                "hop[0].upstream_tls.cert",
                "emulator.tls.key"
            ]
        );
        assert!(e.problems.iter().all(|p| p.line.is_some()), "{e}");
        assert!(
            e.problems[2]
                .message
                .contains("does not fit the certificate"),
            "{e}"
        );

        let good = fixture.config(&[]);
        let kept = Arc::new(LimitPolicy::new(&good.ratelimit, &good.overload).unwrap());
        let p = prepare(&good, &metrics(), Some(kept.clone()), None).unwrap();
        assert!(Arc::ptr_eq(&kept, &p.limits));
    }
}
