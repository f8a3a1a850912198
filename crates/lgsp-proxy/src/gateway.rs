//! A running gateway: every hop, the emulator and the admin listener of one config, started together and
//! drained together.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use lgsp_auth::AuthPolicy;
use lgsp_config::{Config, ServerTlsConfig};
use lgsp_emulator::Emulator;
use lgsp_metrics::{Metrics, Readiness, serve_admin};
use lgsp_tls::TlsError;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use crate::forward::upstream_client;
use crate::limit::LimitPolicy;
use crate::listener::{ListenerSpec, ListenerState, LiveState, spawn_tls_listener};
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
    #[error("{0}")]
    Reload(String),
    #[error("token.secret_file {path}: {reason}")]
    TokenSecret { path: String, reason: String },
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

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| StartError::Bind {
            what: what.to_owned(),
            addr,
            error,
        })
}

fn state(
    tls: &ServerTlsConfig,
    service: crate::stack::HopService,
) -> Result<ListenerState, TlsError> {
    Ok(ListenerState {
        tls: lgsp_tls::server_config(tls)?,
        identity_uri_prefix: tls.identity_uri_prefix.clone(),
        handshake_timeout: tls.handshake_timeout,
        service,
    })
}

/// Binds `addr` and serves `state` there; returns the bound address, the swappable state and the task.
async fn listen(
    addr: SocketAddr,
    spec: ListenerSpec,
    state: ListenerState,
    metrics: &Arc<Metrics>,
    shutdown: &watch::Receiver<bool>,
) -> Result<(SocketAddr, LiveState, tokio::task::JoinHandle<()>), StartError> {
    let what = spec.name.to_string();
    let listener = bind(&what, addr).await?;
    let bound = listener
        .local_addr()
        .map_err(|error| StartError::Bind { what, addr, error })?;
    let live: LiveState = Arc::new(ArcSwap::from_pointee(state));
    let task = spawn_tls_listener(
        listener,
        spec,
        live.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    Ok((bound, live, task))
}

/// Everything a config builds, before anything listens: certificates, CRLs, schemas, policies, stacks.
struct Built {
    hops: Vec<ListenerState>,
    emulator: Option<ListenerState>,
    limits: Arc<LimitPolicy>,
}

fn emulator_service(emu: &Emulator) -> crate::stack::HopService {
    BoxCloneSyncService::new(
        ServiceExt::<http::Request<crate::body::Body>>::map_response(emu.clone(), |r| {
            r.map(crate::body::boxed)
        }),
    )
}

/// Builds the serving state of every listener of `cfg`. Fails without side effects other than metrics.
fn build(
    cfg: &Config,
    metrics: &Arc<Metrics>,
    emulator: Option<&Emulator>,
    limits: Option<Arc<LimitPolicy>>,
) -> Result<Built, StartError> {
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
    let mut validation = ValidationPolicy::new(catalog, options, &cfg.agencies);
    validation.trial_max_errors = v.trial_max_errors;
    let validation = Arc::new(validation);
    // The limiter state (every key's TAT, the in-flight counts) survives a reload that keeps its settings.
    let limits = match limits {
        Some(l) => l,
        None => {
            let l = Arc::new(
                LimitPolicy::new(&cfg.ratelimit, &cfg.overload)
                    .map_err(|e| StartError::RateLimit(e.to_string()))?,
            );
            metrics
                .ratelimit_backend_up
                .with_label_values(&[l.backend()])
                .set(1);
            l
        }
    };
    let secret = match &cfg.token.secret_file {
        None => None,
        Some(p) => {
            let fail = |reason: String| StartError::TokenSecret {
                path: p.path.display().to_string(),
                reason,
            };
            let bytes = std::fs::read(&p.path).map_err(|e| fail(e.to_string()))?;
            if bytes.len() < 32 {
                return Err(fail(format!(
                    "holds {} bytes; write at least 32 random bytes (e.g. `head -c 32 /dev/urandom > FILE`)",
                    bytes.len()
                )));
            }
            Some(bytes)
        }
    };
    let mut hops = Vec::new();
    for h in &cfg.hops {
        let client = upstream_client(lgsp_tls::client_config(&h.upstream_tls)?);
        export_expiry(metrics, &h.name, &h.tls, Some(&h.upstream_tls))?;
        let hop = Arc::new(HopContext {
            name: Arc::from(h.name.as_str()),
            peers: h.peers.iter().cloned().collect::<HashSet<_>>(),
            metrics: metrics.clone(),
        });
        let tokens = lgsp_auth::TokenIssuer::new(&h.name, secret.as_deref(), cfg.token.ttl);
        let auth = Arc::new(AuthPolicy::new(
            &h.name,
            &cfg.agencies,
            &h.peers,
            metrics.clone(),
            tokens,
        ));
        let routes = Arc::new(RouteTable::new(&h.routes));
        let service = hop_stack(
            hop,
            auth,
            routes,
            limits.clone(),
            validation.clone(),
            client,
        );
        hops.push(state(&h.tls, service)?);
    }
    let emulator = match (&cfg.emulator, emulator) {
        (Some(e), Some(emu)) => {
            export_expiry(metrics, "emulator", &e.tls, None)?;
            Some(state(&e.tls, emulator_service(emu))?)
        }
        _ => None,
    };
    Ok(Built {
        hops,
        emulator,
        limits,
    })
}

/// Listener addresses, hop names and the emulator's presence need a restart to change; the rest reloads.
fn reloadable(old: &Config, new: &Config) -> Result<(), String> {
    let shape = |c: &Config| -> Vec<(String, std::net::SocketAddr)> {
        c.hops.iter().map(|h| (h.name.clone(), h.listen)).collect()
    };
    if shape(old) != shape(new) {
        return Err("the hops or their listen addresses changed; those take a restart (the old config keeps serving)".into());
    }
    if old.emulator.as_ref().map(|e| e.listen) != new.emulator.as_ref().map(|e| e.listen)
        || old.admin.listen != new.admin.listen
    {
        return Err("the emulator or admin listener changed; that takes a restart (the old config keeps serving)".into());
    }
    Ok(())
}

/// Swaps a running gateway's config: new requests see it, in-flight ones finish on the old.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<ReloadInner>,
}

struct ReloadInner {
    config: std::sync::Mutex<Config>,
    /// Where the config is read from on reload (`None`: the embedded default, re-read with its certificates).
    source: Option<std::path::PathBuf>,
    hops: Vec<LiveState>,
    emulator: Option<(LiveState, Emulator)>,
    metrics: Arc<Metrics>,
    limits: std::sync::Mutex<Arc<LimitPolicy>>,
}

impl Reloader {
    /// Re-reads the config source and applies it. On failure the old config keeps serving.
    pub fn reload(&self) -> Result<String, String> {
        let parsed = match &self.inner.source {
            Some(p) => lgsp_config::load(p),
            None => lgsp_config::embedded(),
        };
        let result = parsed
            .map_err(|e| e.to_string())
            .and_then(|cfg| self.apply(cfg));
        let label = if result.is_ok() { "success" } else { "failure" };
        self.inner
            .metrics
            .config_reloads
            .with_label_values(&[label])
            .inc();
        match &result {
            Ok(m) => tracing::info!("config reloaded: {m}"),
            Err(e) => tracing::error!("config reload refused, the old config keeps serving: {e}"),
        }
        result
    }

    /// Applies an already parsed config.
    pub fn apply(&self, cfg: Config) -> Result<String, String> {
        let mut current = self
            .inner
            .config
            .lock()
            .map_err(|_| "the reload lock is poisoned; restart the gateway".to_owned())?;
        reloadable(&current, &cfg)?;
        let emu = self.inner.emulator.as_ref().map(|(_, e)| e);
        let mut limits = self
            .inner
            .limits
            .lock()
            .map_err(|_| "the reload lock is poisoned; restart the gateway".to_owned())?;
        let keep = (cfg.ratelimit == current.ratelimit && cfg.overload == current.overload)
            .then(|| limits.clone());
        let built = build(&cfg, &self.inner.metrics, emu, keep).map_err(|e| e.to_string())?;
        *limits = built.limits.clone();
        for (live, st) in self.inner.hops.iter().zip(built.hops) {
            live.store(Arc::new(st));
        }
        if let (Some((live, _)), Some(st)) = (&self.inner.emulator, built.emulator) {
            live.store(Arc::new(st));
        }
        let routes: usize = cfg.hops.iter().map(|h| h.routes.len()).sum();
        let summary = format!(
            "{} hops, {routes} routes, {} agencies from {}",
            cfg.hops.len(),
            cfg.agencies.len(),
            cfg.source
        );
        *current = cfg;
        Ok(summary)
    }
}

pub struct Gateway {
    pub hops: Vec<Bound>,
    pub admin: SocketAddr,
    pub emulator: Option<(SocketAddr, Emulator)>,
    pub metrics: Arc<Metrics>,
    pub reloader: Reloader,
    ready: Readiness,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
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
    /// Builds everything first (a bad certificate fails before anything listens), then binds and serves.
    pub async fn start(cfg: &Config) -> Result<Gateway, StartError> {
        Self::start_from(cfg, None).await
    }

    /// As [`Gateway::start`]; reloads re-read `source` (the file `cfg` came from).
    pub async fn start_from(
        cfg: &Config,
        source: Option<std::path::PathBuf>,
    ) -> Result<Gateway, StartError> {
        let metrics = Metrics::new().map_err(|e| prometheus_error::Error(e.to_string()))?;
        let drain = cfg.admin.drain_timeout;
        let (shutdown, rx) = watch::channel(false);
        let emu = cfg
            .emulator
            .as_ref()
            .map(|e| Emulator::new(e.max_stored, metrics.clone()));
        let built = build(cfg, &metrics, emu.as_ref(), None)?;
        let limits = built.limits.clone();

        let mut tasks = Vec::new();
        let mut hops = Vec::new();
        let mut live_hops = Vec::new();
        for (h, st) in cfg.hops.iter().zip(built.hops) {
            let spec = ListenerSpec {
                name: Arc::from(h.name.as_str()),
                header_read_timeout: h.header_read_timeout,
                max_header_bytes: h.max_header_bytes,
                max_connections: h.max_connections,
                drain_timeout: drain,
            };
            let (addr, live, task) = listen(h.listen, spec, st, &metrics, &rx).await?;
            tasks.push(task);
            live_hops.push(live);
            hops.push(Bound {
                name: h.name.clone(),
                addr,
            });
        }
        let mut live_emulator = None;
        let mut emulator = None;
        if let (Some(e), Some(st), Some(emu)) = (&cfg.emulator, built.emulator, emu) {
            let spec = ListenerSpec {
                name: Arc::from("emulator"),
                header_read_timeout: Duration::from_secs(10),
                max_header_bytes: 64 * 1024,
                max_connections: 10_000,
                drain_timeout: drain,
            };
            let (addr, live, task) = listen(e.listen, spec, st, &metrics, &rx).await?;
            tasks.push(task);
            live_emulator = Some((live, emu.clone()));
            emulator = Some((addr, emu));
        }
        let reloader = Reloader {
            inner: Arc::new(ReloadInner {
                config: std::sync::Mutex::new(cfg.clone()),
                source,
                hops: live_hops,
                emulator: live_emulator,
                metrics: metrics.clone(),
                limits: std::sync::Mutex::new(limits),
            }),
        };
        let ready = Readiness::default();
        let admin_listener = bind("admin", cfg.admin.listen).await?;
        let hook = reloader.clone();
        let admin = serve_admin(
            admin_listener,
            metrics.clone(),
            ready.clone(),
            rx.clone(),
            Some(Arc::new(move || hook.reload())),
        )
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
            reloader,
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
