//! A running gateway: every hop, the emulator and the admin listener of one config, started together and
//! drained together.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use lgsp_config::{Config, ConfigError, HttpConfig};
use lgsp_delivery::outbox::{LiveTarget, Outbox};
use lgsp_emulator::Emulator;
use lgsp_journal::Journal;
use lgsp_metrics::{Metrics, Readiness, serve_admin};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use crate::connection::Retired;
use crate::limit::LimitPolicy;
use crate::listener::{ListenerSpec, ListenerState, LiveState, spawn_tls_listener};
use crate::prepare::{Prepared, prepare};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config could not be prepared (a certificate, the schemas, the token secret, the rate-limit backend).
    #[error("{0}")]
    Prepare(#[from] ConfigError),
    #[error("cannot listen on {addr} for {what}: {error}; pick a free address in the config")]
    Bind {
        what: String,
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// The registry fails only on a programming error; kept as text so callers need not know prometheus.
    #[error("metrics registry: {0}")]
    Metrics(String),
    /// The journal could not be opened (its file, its database, its migrations).
    #[error("{0}; check [journal] url")]
    Journal(String),
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

fn emulator_service(emu: &Emulator) -> crate::stack::HopService {
    BoxCloneSyncService::new(
        ServiceExt::<http::Request<lgsp_hop::body::Body>>::map_response(emu.clone(), |r| {
            r.map(lgsp_hop::body::boxed)
        }),
    )
}

/// The emulator's listener: the hop defaults.
fn emulator_spec(drain_timeout: std::time::Duration) -> ListenerSpec {
    ListenerSpec::new("emulator", &HttpConfig::default(), drain_timeout)
}

/// The emulator's serving state over its prepared TLS.
fn emulator_state(cfg: &Config, p: &Prepared, emu: &Emulator) -> Option<ListenerState> {
    let (e, tls) = (cfg.emulator.as_ref()?, p.emulator_tls.clone()?);
    Some(ListenerState {
        tls,
        identity_uri_prefix: e.tls.identity_uri_prefix.clone(),
        pins: Default::default(),
        handshake_timeout: e.tls.handshake_timeout,
        http: HttpConfig::default(),
        service: emulator_service(emu),
        // The emulator serves any certificate of its CA: only the certificate is asked again.
        knows: Arc::new(|_| true),
        retired: Retired::default(),
    })
}

/// Exports when each certificate and CRL of the prepared config stops being usable.
fn export_expiry(metrics: &Metrics, p: &Prepared) {
    for (listener, e) in &p.expiry {
        metrics
            .certificate_expiry
            .with_label_values(&[listener, e.role, &e.subject])
            .set(e.at as f64);
    }
}

/// The journal the hop stacks journal packets in. A build with the feature `bench-without-journal` (the load
/// harness's target j, and nothing else) gives them none, so its packet routes forward unjournalled: the same hop
/// without the journal's cost, measured beside the real one in the same run.
fn for_the_stack(journal: &Journal) -> Option<Journal> {
    if cfg!(feature = "bench-without-journal") {
        tracing::warn!(
            "this build journals nothing (feature bench-without-journal): for the load harness only, never for service"
        );
        return None;
    }
    Some(journal.clone())
}

/// The journal's settings from a config: where it lives, how long it keeps what, this process's chain, what each
/// agency may hold undelivered, the disk's floor.
pub fn journal_settings(cfg: &Config) -> lgsp_journal::Settings {
    let mut s = lgsp_journal::Settings::new(cfg.journal.url.clone());
    s.keep_bodies = cfg.journal.keep_bodies;
    s.retention = cfg.journal.retention;
    s.chain = cfg.journal.chain.clone();
    s.quotas = quotas(cfg);
    s.min_free_disk = cfg.journal.min_free_disk;
    s
}

/// `[journal] agency_quota`, and each agency's own `quota`.
fn quotas(cfg: &Config) -> lgsp_journal::Quotas {
    let q = |q: lgsp_config::Quota| lgsp_journal::Quota {
        packets: q.packets,
        bytes: q.bytes,
    };
    lgsp_journal::Quotas {
        default: q(cfg.journal.agency_quota),
        agencies: cfg
            .agencies
            .iter()
            .filter_map(|a| Some((a.code.clone(), q(a.quota?))))
            .collect(),
    }
}

/// A message left in progress with no process holding its delivery (a broker's packet whose consumer stopped) this
/// long after it was last touched is settled as failed: twice the hop's longest route timeout, and never less than
/// ten minutes (a delivery the journal holds a lease of is taken up again instead, at once after a restart).
fn abandoned_after(h: &lgsp_config::HopConfig) -> std::time::Duration {
    h.routes
        .iter()
        .map(|r| r.timeout * 2)
        .max()
        .unwrap_or_default()
        .max(std::time::Duration::from_secs(600))
}

/// Keeps `lgsp_journal_up` (and so `/readyz`) true to the journal: a write checked every 2 s, so the gateway
/// notices by itself when a lost store is back; messages left in progress with no lease settled each minute (so
/// their resends go through); records past the retention pruned hourly.
fn watch_journal(
    journal: Journal,
    hops: Vec<(String, std::time::Duration)>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        let mut last_prune = std::time::Instant::now();
        // At start too: a restart is when abandoned deliveries are found.
        let mut last_sweep: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = lgsp_hop::stopped(&mut shutdown) => return,
                _ = tick.tick() => {}
            }
            let up = journal.ping().await.is_ok();
            metrics.journal_up.set(i64::from(up));
            let w = journal.writer_stats();
            metrics.journal_writer.sync(lgsp_metrics::WriterCounts {
                commits: w.commits,
                jobs: w.jobs,
                records: w.records,
                busy_seconds: w.busy.as_secs_f64(),
                failed: w.failed,
            });
            for (hop, _) in &hops {
                if let Ok((depth, age)) = journal.outbox(hop).await {
                    metrics
                        .outbox_depth
                        .with_label_values(&[hop])
                        .set(i64::try_from(depth).unwrap_or(i64::MAX));
                    metrics.outbox_oldest_age.with_label_values(&[hop]).set(age);
                }
            }
            if up && last_sweep.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
                last_sweep = Some(std::time::Instant::now());
                let after = hops.iter().map(|(_, a)| *a).max().unwrap_or_default();
                let before = lgsp_journal::now_us()
                    .saturating_sub(i64::try_from(after.as_micros()).unwrap_or(i64::MAX));
                match journal.settle_orphans(before).await {
                    Ok(ids) if !ids.is_empty() => tracing::warn!(
                        count = ids.len(),
                        first = %ids[0],
                        "journal: messages left in progress with no delivery under way marked failed; a resend under the same Idempotency-Key delivers them again"
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "journal: looking for messages left in progress failed")
                    }
                }
            }
            if up && last_prune.elapsed() >= std::time::Duration::from_secs(3600) {
                last_prune = std::time::Instant::now();
                // A few thousand records a transaction, so the writer is never held long.
                loop {
                    match journal.prune().await {
                        Ok((records, messages)) => {
                            if records + messages > 0 {
                                tracing::info!(
                                    records,
                                    messages,
                                    "journal: pruned past the retention"
                                );
                            }
                            if records < Journal::PRUNE_BATCH {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "journal: pruning failed");
                            break;
                        }
                    }
                }
            }
        }
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
    let sockets = |c: &Config| -> Vec<(usize, usize)> {
        c.hops
            .iter()
            .map(|h| (h.http.max_connections, h.http.max_handshakes))
            .collect()
    };
    // Quotas apply at once; where the journal lives, its chain and its keeping take a restart.
    let store = |c: &Config| {
        let mut j = c.journal.clone();
        j.agency_quota = lgsp_config::Quota {
            packets: 0,
            bytes: 0,
        };
        j
    };
    if store(old) != store(new) {
        return Err(
            "[journal] changed; that takes a restart (the old config keeps serving)".into(),
        );
    }
    if sockets(old) != sockets(new) {
        return Err("a hop's max_connections or max_handshakes changed; those take a restart (the old config keeps serving)".into());
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
    /// Each hop's outbox target, in hop order.
    deliveries: Vec<LiveTarget>,
    emulator: Option<(LiveState, Emulator)>,
    metrics: Arc<Metrics>,
    limits: std::sync::Mutex<Arc<LimitPolicy>>,
    /// The admin listener's token and names, swapped by a reload.
    admin: lgsp_metrics::LiveAccess,
    /// Told each config a reload applied (the process's log filter, say).
    hooks: std::sync::Mutex<Vec<ApplyHook>>,
    /// The journal every hop appends to (a change of `[journal]` takes a restart).
    journal: Journal,
}

/// Called with each config a reload applied.
pub type ApplyHook = Box<dyn Fn(&Config) + Send + Sync>;

impl Reloader {
    /// Calls `hook` with every config a reload applies from now on.
    pub fn on_apply(&self, hook: impl Fn(&Config) + Send + Sync + 'static) {
        if let Ok(mut hooks) = self.inner.hooks.lock() {
            hooks.push(Box::new(hook));
        }
    }

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
        let mut limits = self
            .inner
            .limits
            .lock()
            .map_err(|_| "the reload lock is poisoned; restart the gateway".to_owned())?;
        let keep = (cfg.ratelimit == current.ratelimit && cfg.overload == current.overload)
            .then(|| limits.clone());
        let fresh_limits = keep.is_none();
        let prepared = prepare(
            &cfg,
            &self.inner.metrics,
            keep,
            for_the_stack(&self.inner.journal),
        )
        .map_err(|e| e.to_string())?;
        export_expiry(&self.inner.metrics, &prepared);
        if fresh_limits {
            self.inner
                .metrics
                .ratelimit_backend_up
                .with_label_values(&[prepared.limits.backend()])
                .set(1);
        }
        *limits = prepared.limits.clone();
        self.inner.journal.set_quotas(quotas(&cfg));
        self.inner.admin.store(Arc::new(prepared.admin.clone()));
        if let Some((live, emu)) = &self.inner.emulator
            && let Some(st) = emulator_state(&cfg, &prepared, emu)
        {
            ListenerState::replace(live, st);
        }
        for ((live, target), hop) in self
            .inner
            .hops
            .iter()
            .zip(&self.inner.deliveries)
            .zip(prepared.hops)
        {
            ListenerState::replace(live, hop.state);
            target.store(Arc::new(hop.delivery));
        }
        let routes: usize = cfg.hops.iter().map(|h| h.routes.len()).sum();
        let summary = format!(
            "{} hops, {routes} routes, {} agencies from {}",
            cfg.hops.len(),
            cfg.agencies.len(),
            cfg.source
        );
        if let Ok(hooks) = self.inner.hooks.lock() {
            for hook in hooks.iter() {
                hook(&cfg);
            }
        }
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
        let metrics = Metrics::new().map_err(|e| StartError::Metrics(e.to_string()))?;
        let drain = cfg.admin.drain_timeout;
        let (shutdown, rx) = watch::channel(false);
        let emu = cfg.emulator.as_ref().map(|e| {
            let emu = Emulator::new(e.max_stored, metrics.clone());
            match &e.share {
                Some((authority, subject)) => emu.sharing(authority.clone(), subject.clone()),
                None => emu,
            }
        });
        let journal = Journal::open(journal_settings(cfg))
            .await
            .map_err(|e| StartError::Journal(e.to_string()))?;
        let prepared = prepare(cfg, &metrics, None, for_the_stack(&journal))?;
        export_expiry(&metrics, &prepared);
        let admin_access: lgsp_metrics::LiveAccess =
            Arc::new(ArcSwap::from_pointee(prepared.admin.clone()));
        metrics
            .ratelimit_backend_up
            .with_label_values(&[prepared.limits.backend()])
            .set(1);
        let limits = prepared.limits.clone();
        let emulator_st = emu.as_ref().and_then(|e| emulator_state(cfg, &prepared, e));

        let mut tasks = Vec::new();
        let mut hops = Vec::new();
        let mut live_hops = Vec::new();
        let mut deliveries = Vec::new();
        for (h, p) in cfg.hops.iter().zip(prepared.hops) {
            let spec = ListenerSpec::new(&h.name, &h.http, drain);
            let identity = p.broker_identity.clone();
            let (addr, live, task) = listen(h.listen, spec, p.state, &metrics, &rx).await?;
            tasks.push(task);
            live_hops.push(live);
            let target: LiveTarget = Arc::new(ArcSwap::from_pointee(p.delivery));
            tasks.push(Outbox::new(journal.clone(), &h.name, target.clone()).spawn(rx.clone()));
            // The hop's broker sources deliver through the same target, swapped by a reload with the rest.
            for c in cfg.consumers.iter().filter(|c| c.hop == h.name) {
                let consumer = lgsp_delivery::consume::Consumer::new(
                    c.clone(),
                    journal.clone(),
                    target.clone(),
                    identity.clone(),
                    &metrics,
                );
                tasks.push(consumer.spawn(rx.clone()));
            }
            deliveries.push(target);
            hops.push(Bound {
                name: h.name.clone(),
                addr,
            });
        }
        let (emulator, live_emulator) = match (&cfg.emulator, emulator_st, emu) {
            (Some(e), Some(st), Some(emu)) => {
                let (addr, live, task) =
                    listen(e.listen, emulator_spec(drain), st, &metrics, &rx).await?;
                tasks.push(task);
                (Some((addr, emu.clone())), Some((live, emu)))
            }
            _ => (None, None),
        };
        let reloader = Reloader {
            inner: Arc::new(ReloadInner {
                config: std::sync::Mutex::new(cfg.clone()),
                source,
                hops: live_hops,
                deliveries,
                emulator: live_emulator,
                metrics: metrics.clone(),
                limits: std::sync::Mutex::new(limits),
                admin: admin_access.clone(),
                hooks: std::sync::Mutex::new(Vec::new()),
                journal: journal.clone(),
            }),
        };
        let swept: Vec<(String, std::time::Duration)> = cfg
            .hops
            .iter()
            .map(|h| (h.name.clone(), abandoned_after(h)))
            .collect();
        tasks.push(watch_journal(
            journal.clone(),
            swept,
            metrics.clone(),
            rx.clone(),
        ));
        let ready = Readiness::default();
        let admin_listener = bind("admin", cfg.admin.listen).await?;
        let hook = reloader.clone();
        let admin = serve_admin(
            admin_listener,
            metrics.clone(),
            ready.clone(),
            rx.clone(),
            Some(Arc::new(move || hook.reload())),
            admin_access,
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

    /// Reports not ready and serves on for `[admin] shutdown_delay` (a load balancer's health check takes the
    /// replica out meanwhile), then stops accepting, lets in-flight requests finish (up to the drain timeout) and
    /// returns.
    pub async fn shutdown(self) {
        self.ready.set(false);
        let delay = self
            .reloader
            .inner
            .config
            .lock()
            .map_or(std::time::Duration::ZERO, |c| c.admin.shutdown_delay);
        if !delay.is_zero() {
            tracing::info!(
                "not ready; serving on for {delay:?} (admin.shutdown_delay) before closing the listeners"
            );
            tokio::time::sleep(delay).await;
        }
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // The chain is no process's now: an operator may rebuild the journal's derived tables at once.
        if let Err(e) = self.reloader.inner.journal.release().await {
            tracing::warn!(error = %e, "journal: marking this process's chain stopped failed");
        }
    }
}

/// The reloadable state: what a reload swaps, what it keeps, and what it refuses while the old config serves on.
#[cfg(test)]
mod tests {
    use super::*;
    use lgsp_hop::testing::Fixture;

    fn state_of(g: &Gateway) -> Arc<ListenerState> {
        g.reloader.inner.hops[0].load_full()
    }

    fn limits_of(g: &Gateway) -> Arc<LimitPolicy> {
        g.reloader.inner.limits.lock().unwrap().clone()
    }

    #[test]
    fn a_direct_delivery_is_abandoned_after_twice_the_longest_route_timeout_and_ten_minutes_at_least()
     {
        let fixture = Fixture::new();
        let mut cfg = fixture.config(&[]);
        let hop = &mut cfg.hops[0];
        assert_eq!(abandoned_after(hop), std::time::Duration::from_secs(600));
        hop.routes[0].timeout = std::time::Duration::from_secs(900);
        assert_eq!(abandoned_after(hop), std::time::Duration::from_secs(1800));
    }

    #[tokio::test]
    async fn a_reload_swaps_the_stacks_and_keeps_the_limiter_when_its_settings_hold() {
        let fixture = Fixture::new();
        let g = Gateway::start(&fixture.config(&[])).await.unwrap();
        let (before, limits) = (state_of(&g), limits_of(&g));
        let summary = g
            .reloader
            .apply(fixture.config(&[("ttl = \"1h\"", "ttl = \"2h\"")]))
            .unwrap();
        assert!(
            summary.starts_with("2 hops, 14 routes, 3 agencies"),
            "{summary}"
        );
        assert!(
            !Arc::ptr_eq(&before, &state_of(&g)),
            "new requests see the new stack"
        );
        assert!(
            Arc::ptr_eq(&limits, &limits_of(&g)),
            "the limiter's state survives"
        );
        g.reloader
            .apply(fixture.config(&[("max_in_flight = 10000", "max_in_flight = 500")]))
            .unwrap();
        assert!(
            !Arc::ptr_eq(&limits, &limits_of(&g)),
            "new overload caps, new limiter"
        );
        g.shutdown().await;
    }

    #[tokio::test]
    async fn what_takes_a_restart_or_does_not_load_is_refused_and_the_old_config_serves_on() {
        let fixture = Fixture::new();
        let g = Gateway::start(&fixture.config(&[])).await.unwrap();
        let moved = fixture.config(&[("name = \"ndxp\"\nrole", "name = \"ndxp2\"\nrole")]);
        let e = g.reloader.apply(moved).unwrap_err();
        assert!(e.contains("take a restart"), "{e}");
        // The listener's semaphores are sized once; the rest of [hop.http] reloads.
        let wider = fixture.config(&[("max_connections = 10000", "max_connections = 20000")]);
        let e = g.reloader.apply(wider).unwrap_err();
        assert!(
            e.contains("max_connections") && e.contains("restart"),
            "{e}"
        );
        let longer = fixture.config(&[("idle_timeout = \"60s\"", "idle_timeout = \"2m\"")]);
        assert!(g.reloader.apply(longer).is_ok());
        assert_eq!(
            state_of(&g).http.idle_timeout,
            std::time::Duration::from_secs(120)
        );
        let before = state_of(&g);
        let missing = fixture.config(&[(
            "crls = [\"certs/ca.crl.pem\"]",
            "crls = [\"certs/gone.pem\"]",
        )]);
        let e = g.reloader.apply(missing).unwrap_err();
        assert!(
            e.contains("test.toml:") && e.contains("hop[0].tls.crls[0]"),
            "{e}"
        );
        assert!(
            Arc::ptr_eq(&before, &state_of(&g)),
            "the old stack still serves"
        );
        g.shutdown().await;
    }

    #[tokio::test]
    async fn reloads_from_the_source_file_are_counted_by_result() {
        let fixture = Fixture::new();
        let path = fixture.dir.path().join("gateway.toml");
        // The file resolves its paths against the working directory, as an operator's does: make them absolute.
        let certs = format!("\"{}/certs/", fixture.dir.path().display());
        let text = fixture.text(&[]).replace("\"certs/", &certs);
        std::fs::write(&path, &text).unwrap();
        let cfg = lgsp_config::load(&path).unwrap();
        let g = Gateway::start_from(&cfg, Some(path.clone())).await.unwrap();
        assert!(g.reloader.reload().is_ok());
        std::fs::write(&path, text.replacen("[admin]", "[admin]\ntypo = 1", 1)).unwrap();
        let e = g.reloader.reload().unwrap_err();
        assert!(e.contains("unknown field `typo`"), "{e}");
        let counted = |result: &str| g.metrics.config_reloads.with_label_values(&[result]).get();
        assert_eq!((counted("success"), counted("failure")), (1, 1));
        g.shutdown().await;
    }
}
