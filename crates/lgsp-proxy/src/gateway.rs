//! A running gateway: every hop, the emulator and the admin listener of one config, started together and
//! drained together.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lgsp_auth::AuthPolicy;
use lgsp_config::{Config, ServerTlsConfig};
use lgsp_emulator::Emulator;
use lgsp_metrics::{Metrics, Readiness, serve_admin};
use lgsp_tls::TlsError;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;
use tower::util::BoxCloneService;

use crate::forward::upstream_client;
use crate::limit::LimitPolicy;
use crate::listener::{ListenerSpec, spawn_tls_listener};
use crate::route::RouteTable;
use crate::stack::hop_stack;
use crate::trace::HopContext;
use crate::validate::ValidationPolicy;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr} for {what}: {error}; pick a free address in the config")]
    Bind {
        what: String,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("rate limits: {0}")]
    RateLimit(String),
    #[error("packet schemas: {0}")]
    Schemas(#[from] lgsp_schema::CatalogError),
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus_error::Error),
}

mod prometheus_error {
    /// The registry fails only on a programming error; kept as text so callers need not know prometheus.
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    pub struct Error(pub String);
}

/// Bound address of one listener.
#[derive(Debug, Clone)]
pub struct Bound {
    pub name: String,
    pub addr: SocketAddr,
}

pub struct Gateway {
    pub hops: Vec<Bound>,
    pub admin: SocketAddr,
    pub emulator: Option<(SocketAddr, Emulator)>,
    pub metrics: Arc<Metrics>,
    ready: Readiness,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| StartError::Bind {
            what: what.to_owned(),
            addr,
            error,
        })
}

fn spec(name: &str, tls: &ServerTlsConfig, drain: Duration) -> Result<ListenerSpec, TlsError> {
    Ok(ListenerSpec {
        name: Arc::from(name),
        tls: lgsp_tls::server_config(tls)?,
        identity_uri_prefix: tls.identity_uri_prefix.clone(),
        handshake_timeout: tls.handshake_timeout,
        header_read_timeout: Duration::from_secs(10),
        max_header_bytes: 64 * 1024,
        max_connections: 10_000,
        drain_timeout: drain,
    })
}

/// Exports when each certificate and CRL of a listener (and its upstream identity) stops being usable.
fn export_expiry(
    metrics: &Metrics,
    hop: &str,
    tls: &ServerTlsConfig,
    upstream: Option<&lgsp_config::ClientTlsConfig>,
) -> Result<(), TlsError> {
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
    for e in all {
        metrics
            .certificate_expiry
            .with_label_values(&[hop, e.role, &e.subject])
            .set(e.at as f64);
    }
    Ok(())
}

impl Gateway {
    /// Loads every certificate first (so a bad file fails before anything listens), then binds and serves.
    pub async fn start(cfg: &Config) -> Result<Gateway, StartError> {
        let metrics = Metrics::new().map_err(|e| prometheus_error::Error(e.to_string()))?;
        let drain = cfg.admin.drain_timeout;
        let (shutdown, rx) = watch::channel(false);

        let catalog = Arc::new(match &cfg.validation.schemas {
            lgsp_config::SchemaSource::Embedded => lgsp_schema::Catalog::embedded()?,
            lgsp_config::SchemaSource::Dir(dir) => lgsp_schema::Catalog::load(dir)?,
        });
        let v = &cfg.validation;
        let options = lgsp_schema::Options {
            limits: lgsp_schema::Limits {
                max_depth: v.max_depth,
                max_attributes: v.max_attributes,
                max_text: v.max_text_bytes,
                max_errors: v.max_errors,
            },
            domain: v.domain_rules,
            today: None,
        };
        let validation = Arc::new(ValidationPolicy::new(catalog, options, &cfg.agencies));
        let limits = Arc::new(
            LimitPolicy::new(&cfg.ratelimit, &cfg.overload)
                .map_err(|e| StartError::RateLimit(e.to_string()))?,
        );
        metrics
            .ratelimit_backend_up
            .with_label_values(&[limits.backend()])
            .set(1);
        let mut prepared = Vec::new();
        for h in &cfg.hops {
            let mut s = spec(&h.name, &h.tls, drain)?;
            s.header_read_timeout = h.header_read_timeout;
            s.max_header_bytes = h.max_header_bytes;
            s.max_connections = h.max_connections;
            let client = upstream_client(lgsp_tls::client_config(&h.upstream_tls)?);
            export_expiry(&metrics, &h.name, &h.tls, Some(&h.upstream_tls))?;
            let hop = Arc::new(HopContext {
                name: Arc::from(h.name.as_str()),
                peers: h.peers.iter().cloned().collect::<HashSet<_>>(),
                metrics: metrics.clone(),
            });
            let auth = Arc::new(AuthPolicy::new(
                &h.name,
                &cfg.agencies,
                &h.peers,
                metrics.clone(),
            ));
            let routes = Arc::new(RouteTable::new(&h.routes));
            prepared.push((
                h,
                s,
                hop_stack(
                    hop,
                    auth,
                    routes,
                    limits.clone(),
                    validation.clone(),
                    client,
                ),
            ));
        }
        if let Some(e) = &cfg.emulator {
            export_expiry(&metrics, "emulator", &e.tls, None)?;
        }
        let emulator = match &cfg.emulator {
            Some(e) => Some((
                e,
                spec("emulator", &e.tls, drain)?,
                Emulator::new(e.max_stored, metrics.clone()),
            )),
            None => None,
        };

        let mut tasks = Vec::new();
        let mut hops = Vec::new();
        for (h, s, svc) in prepared {
            let listener = bind(&format!("hop {}", h.name), h.listen).await?;
            let addr = listener.local_addr().map_err(|error| StartError::Bind {
                what: h.name.clone(),
                addr: h.listen,
                error,
            })?;
            tasks.push(spawn_tls_listener(
                listener,
                s,
                svc,
                metrics.clone(),
                rx.clone(),
            ));
            hops.push(Bound {
                name: h.name.clone(),
                addr,
            });
        }
        let emulator = match emulator {
            Some((e, s, emu)) => {
                let listener = bind("emulator", e.listen).await?;
                let addr = listener.local_addr().map_err(|error| StartError::Bind {
                    what: "emulator".into(),
                    addr: e.listen,
                    error,
                })?;
                let svc: crate::stack::HopService = BoxCloneService::new(ServiceExt::<
                    http::Request<crate::body::Body>,
                >::map_response(
                    emu.clone(),
                    |r| r.map(crate::body::boxed),
                ));
                tasks.push(spawn_tls_listener(
                    listener,
                    s,
                    svc,
                    metrics.clone(),
                    rx.clone(),
                ));
                Some((addr, emu))
            }
            None => None,
        };
        let ready = Readiness::default();
        let admin_listener = bind("admin", cfg.admin.listen).await?;
        let admin = serve_admin(admin_listener, metrics.clone(), ready.clone(), rx.clone())
            .map_err(|error| StartError::Bind {
                what: "admin".into(),
                addr: cfg.admin.listen,
                error,
            })?;
        tasks.push(admin.task);
        ready.set(true);
        Ok(Gateway {
            hops,
            admin: admin.local_addr,
            emulator,
            metrics,
            ready,
            shutdown,
            tasks,
        })
    }

    /// Address of the hop named `name`.
    pub fn hop_addr(&self, name: &str) -> Option<SocketAddr> {
        self.hops.iter().find(|h| h.name == name).map(|h| h.addr)
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain timeout), then returns.
    pub async fn shutdown(self) {
        self.ready.set(false);
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
