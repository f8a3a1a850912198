//! `lgsp-gateway run`: every listener of the config, until Ctrl-C or SIGTERM (SIGHUP reloads); prints where the
//! listeners are, the metrics address and a curl that sends a sample packet through the chain.

use std::path::Path;
use std::process::ExitCode;

use std::sync::Arc;

use lgsp_config::{Config, KeyKind};
use lgsp_proxy::Gateway;

use super::logging;

pub fn run(config: Option<&Path>) -> ExitCode {
    let cfg = match super::load(config) {
        Ok(c) => c,
        Err(e) => return super::failed(e),
    };
    let logging = logging::Logging::init(&cfg).map(Arc::new);
    if cfg.pki.dev_autogen && !lgsp_tls::devpki::exists(&cfg.pki.dir) {
        match lgsp_tls::devpki::init(&cfg.pki.dir) {
            Ok(report) => {
                tracing::info!(dir = %report.dir.display(), files = report.files.len(), "created the dev PKI (pki.dev_autogen = true)");
            }
            Err(e) => return super::failed(format!("creating the dev PKI: {e}")),
        }
    }
    // A PKI made before the admin token existed gets one too.
    if cfg.pki.dev_autogen
        && let Some(token) = &cfg.admin.token_file
    {
        match lgsp_tls::devpki::ensure_admin_token(&token.path) {
            Ok(true) => {
                tracing::info!(file = %token.path.display(), "created the admin token (pki.dev_autogen = true)");
            }
            Ok(false) => {}
            Err(e) => return super::failed(format!("creating the admin token: {e}")),
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return super::failed(format!("starting the runtime: {e}")),
    };
    runtime.block_on(async {
        // Listening for signals before anything says ready: a SIGTERM or SIGHUP right after READY=1 (or the
        // printed lines) must stop or reload the gateway, not kill it by the signal's default action.
        let signals = Signals::install();
        let gateway = match Gateway::start_from(&cfg, config.map(Path::to_owned)).await {
            Ok(g) => g,
            Err(e) => return super::failed(e),
        };
        if let Some(logging) = &logging {
            let l = logging.clone();
            gateway.reloader.on_apply(move |cfg| l.apply(cfg));
            logging::export_dropped(logging.clone(), gateway.metrics.clone());
        }
        announce(&cfg, &gateway);
        sd_notify("READY=1");
        signals.wait(&gateway.reloader).await;
        sd_notify("STOPPING=1");
        tracing::info!("draining in-flight requests");
        gateway.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// systemd's readiness protocol: `state` as one datagram to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
/// namespace); nothing when the variable is unset (not run by systemd with `Type=notify`).
fn sd_notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|socket| {
        use std::os::unix::ffi::OsStrExt;
        match target.as_bytes().strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), &target),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "could not tell systemd (NOTIFY_SOCKET)");
    }
}

/// The ready lines: listeners, version, metrics, and the sample curl.
fn announce(cfg: &Config, gateway: &Gateway) {
    for h in &gateway.hops {
        println!("listening: hop {} https://{}", h.name, h.addr);
    }
    if let Some((addr, _)) = &gateway.emulator {
        println!("listening: emulator https://{addr}");
    }
    println!(
        "lgsp-gateway {} ready ({})",
        env!("CARGO_PKG_VERSION"),
        cfg.source
    );
    println!("metrics: http://{}/metrics", gateway.admin);
    if let Some(token) = &cfg.admin.token_file {
        println!(
            "reload: curl -X POST -H \"Authorization: Bearer $(cat {})\" http://{}/admin/reload",
            token.path.display(),
            gateway.admin
        );
    }
    match sample_curl(cfg, gateway) {
        Some(curl) => println!("{curl}"),
        None => println!(
            "# no dev agency certificate and key found for a sample curl; see README \"Connecting an agency\""
        ),
    }
}

/// The signals `run` answers: SIGTERM and Ctrl-C stop it, SIGHUP reloads.
struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Registers the handlers (from now on the signals are queued for [`Signals::wait`]).
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let unix = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) {
                (Ok(term), Ok(hup)) => Some((term, hup)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "SIGTERM/SIGHUP handlers could not be installed; Ctrl-C only");
                    None
                }
            };
            Signals { unix }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Waits for Ctrl-C or SIGTERM; reloads the config on every SIGHUP meanwhile.
    async fn wait(self, reloader: &lgsp_proxy::Reloader) {
        #[cfg(unix)]
        {
            let Some((mut term, mut hup)) = self.unix else {
                let _ = tokio::signal::ctrl_c().await;
                return;
            };
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return,
                    _ = term.recv() => return,
                    _ = hup.recv() => {
                        let r = reloader.clone();
                        // The outcome is logged and counted by the reloader itself.
                        let _ = tokio::task::spawn_blocking(move || r.reload()).await;
                    }
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = reloader;
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A profile packet (HoSoCBCCVC) for the printed curl.
const SAMPLE_PACKET: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><HoSoCBCCVC xmlns=\"urn:lgsp:cbccvc:v1\" phienBan=\"1.0\"><MaDonVi>000.00.00.H29</MaDonVi><SoCCCD>001090012345</SoCCCD><HoVaTen>Nguyễn Văn An</HoVaTen><NgaySinh>1990-05-12</NgaySinh><GioiTinh>Nam</GioiTinh><DanToc>Kinh</DanToc><MaNgach>01.003</MaNgach><BacLuong>3</BacLuong><HeSoLuong>3.00</HeSoLuong><NgayTuyenDung>2015-09-01</NgayTuyenDung><TrinhDoChuyenMon>DaiHoc</TrinhDoChuyenMon></HoSoCBCCVC>";

/// The curl that sends the sample packet through the first hop with a dev agency's certificate and dev key,
/// when the dev PKI and a dev key of the config are there.
fn sample_curl(cfg: &Config, gateway: &Gateway) -> Option<String> {
    let hop = cfg.hops.first()?;
    let addr = gateway.hop_addr(&hop.name)?;
    let route = hop
        .routes
        .iter()
        .find(|r| r.methods.iter().any(|m| m == "POST"))?;
    let keys = lgsp_auth::KeyStore::from_agencies(&cfg.agencies);
    let dir = std::fs::canonicalize(&cfg.pki.dir).ok()?;
    let agency = cfg.agencies.iter().find(|a| {
        let key = lgsp_auth::dev_key(&a.code, KeyKind::Production);
        keys.lookup(key.as_bytes())
            .is_some_and(|r| *r.agency == *a.code)
            && dir
                .join(format!("{}.pem", lgsp_tls::devpki::agency_stem(&a.code)))
                .is_file()
    })?;
    let stem = lgsp_tls::devpki::agency_stem(&agency.code);
    Some(format!(
        "curl --cert {cert} --key {key} --cacert {ca} -H 'X-API-Key: {api_key}' -H 'Content-Type: application/xml' --data-binary '{SAMPLE_PACKET}' https://localhost:{port}{prefix}",
        cert = dir.join(format!("{stem}.pem")).display(),
        key = dir.join(format!("{stem}.key")).display(),
        ca = dir.join("ca.pem").display(),
        api_key = lgsp_auth::dev_key(&agency.code, KeyKind::Production),
        port = addr.port(),
        prefix = route.prefix,
    ))
}
