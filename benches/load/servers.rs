//! The servers under load, each a process of its own so its CPU and memory are its own: the emulator (the national
//! endpoint every target ends at), one gateway process playing the LGSP hop and the NDXP hop, and nginx.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lgsp_testkit::{Proc, write};

use crate::procfs;

/// A running server: the processes whose CPU and memory count as its own.
pub trait Server {
    fn pids(&self) -> Vec<u32>;

    fn cpu_seconds(&self, ticks: f64) -> f64 {
        self.pids()
            .iter()
            .map(|p| procfs::cpu_seconds(*p, ticks))
            .sum()
    }

    fn rss_kib(&self) -> u64 {
        self.pids().iter().map(|p| procfs::rss_kib(*p)).sum()
    }

    fn peak_rss_kib(&self) -> u64 {
        self.pids().iter().map(|p| procfs::peak_rss_kib(*p)).sum()
    }

    fn reset_peak(&self) {
        for p in self.pids() {
            procfs::reset_peak(p);
        }
    }
}

/// A port free now (the servers are given fixed ports because the LGSP hop's route must name the NDXP hop's).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An `lgsp-gateway run` process.
pub struct Gateway {
    proc: Proc,
    pub admin: SocketAddr,
}

impl Server for Gateway {
    fn pids(&self) -> Vec<u32> {
        vec![self.proc.id()]
    }
}

impl Gateway {
    /// Starts the binary with `config`, its log (access lines included) written to `log`.
    pub fn start(bin: &Path, work: &Path, name: &str, config: &str, log: &Path) -> Gateway {
        let file = write(work, &format!("{name}.toml"), config);
        let mut proc = Proc::spawn_logging(
            &bin.display().to_string(),
            &["run", "--config", &file],
            work,
            Some(log),
        );
        let metrics = proc.line("metrics: ");
        let admin = metrics
            .trim_start_matches("metrics: http://")
            .trim_end_matches("/metrics")
            .parse()
            .unwrap_or_else(|e| panic!("admin address in {metrics:?}: {e}"));
        Gateway { proc, admin }
    }

    /// A gauge or counter of `/metrics`: the sum of the series of `family` whose labels hold `labels`.
    pub fn metric(&self, family: &str, labels: &str) -> f64 {
        let text = admin_get(self.admin, "/metrics").unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
            .filter(|l| l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// `GET path` of an admin listener (plain HTTP/1.0 on loopback).
fn admin_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_owned())
}

/// nginx from Debian with `benches/nginx/nginx.conf` (its `@NAME@`s filled in).
pub struct Nginx {
    child: Child,
    workers: Vec<u32>,
}

impl Server for Nginx {
    fn pids(&self) -> Vec<u32> {
        let mut all = vec![self.child.id()];
        all.extend(&self.workers);
        all
    }
}

impl Nginx {
    pub fn start(
        nginx: &Path,
        template: &str,
        work: &Path,
        certs: &Path,
        port: u16,
        emulator: u16,
    ) -> Nginx {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let conf = template
            .replace("@WORK@", &work.display().to_string())
            .replace("@CERTS@", &certs.display().to_string())
            .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
            .replace("@EMULATOR@", &format!("127.0.0.1:{emulator}"))
            .replace("@WORKERS@", &cores.to_string());
        let file = write(work, "nginx.conf", &conf);
        let check = Command::new(nginx)
            .args(["-t", "-q", "-c", &file, "-p"])
            .arg(work)
            .output()
            .expect("nginx -t");
        assert!(
            check.status.success(),
            "nginx refuses {file}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new(nginx)
            .args(["-c", &file, "-p"])
            .arg(work)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx {
            child,
            workers: Vec::new(),
        };
        wait_for_port(port);
        let deadline = Instant::now() + Duration::from_secs(10);
        while nginx.workers.len() < cores && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            nginx.workers = procfs::children(nginx.child.id());
        }
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: nginx's graceful stop; the master takes its workers with it.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something accepts on `127.0.0.1:port`.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `[admin]`, `[log]`, `[pki]` and `[journal]` head of a harness config: info-level logs (an access line per
/// request, as nginx's access log), the dev PKI in `certs`.
fn head(certs: &Path, journal: Option<&Path>) -> String {
    let mut s = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"5s\"\ntoken_file = \"{c}/admin.token\"\n[log]\nformat = \"human\"\nlevel = \"info\"\n[pki]\ndir = \"{c}\"\ndev_autogen = false\n",
        c = certs.display()
    );
    if let Some(j) = journal {
        s.push_str(&format!("[journal]\nurl = \"sqlite://{}\"\n", j.display()));
    }
    s
}

fn server_tls(table: &str, certs: &Path, server: &str) -> String {
    format!(
        "[{table}]\ncert = \"{c}/{server}.pem\"\nkey = \"{c}/{server}.key\"\nclient_ca = [\"{c}/ca.pem\"]\ncrls = [\"{c}/ca.crl.pem\"]\n",
        c = certs.display()
    )
}

/// The emulator alone, on `port`.
pub fn emulator_config(certs: &Path, port: u16) -> String {
    format!(
        "{}[emulator]\nlisten = \"127.0.0.1:{port}\"\nmax_stored = 100000\n{}",
        head(certs, None),
        server_tls("emulator.tls", certs, "emulator-server")
    )
}

/// A packet route: `POST {prefix}` to `upstream` + `rewrite`, validated as HoSoCBCCVC and journalled, its limits
/// lifted far above what one machine can send.
fn packet_route(name: &str, prefix: &str, upstream: u16, rewrite: &str, queued: bool) -> String {
    format!(
        "[[hop.route]]\nname = \"{name}\"\nmethods = [\"POST\"]\nprefix = \"{prefix}\"\nupstream = \"https://localhost:{upstream}\"\nrewrite = \"{rewrite}\"\ntimeout = \"30s\"\nagencies = [\"*\"]\nmessage_type = \"HoSoCBCCVC\"\ndelivery = \"{}\"\nmax_body_bytes = 8388608\nrate = \"1000000/s\"\nburst = 1000000\n",
        if queued { "queued" } else { "direct" }
    )
}

/// Ports of the gateway process.
pub struct GatewayPorts {
    pub lgsp: u16,
    pub ndxp: u16,
    pub emulator: u16,
}

/// One process, two hops, as an operator runs LGSP and NDXP on one host: the LGSP hop's `/lgsp/v1/HoSoCBCCVC`
/// goes straight to the emulator (target c), `/chain/v1/HoSoCBCCVC` through the NDXP hop (d), and
/// `/queued/v1/HoSoCBCCVC` is a queued route to the emulator (e). Connection caps are raised for the idle-memory
/// run; everything else — key check, validation with domain rules, rate limits (set high), the SQLite journal with
/// durable group commit, the access log — is the default pipeline.
pub fn gateway_config(certs: &Path, journal: &Path, p: &GatewayPorts) -> String {
    let mut s = head(certs, Some(journal));
    s.push_str("[overload]\nmax_in_flight = 1000000\nmax_in_flight_per_agency = 1000000\n");
    let hop = |s: &mut String, name: &str, port: u16, peers: &str| {
        s.push_str(&format!(
            "[[hop]]\nname = \"{name}\"\nrole = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\npeers = [{peers}]\n"
        ));
        s.push_str(&server_tls("hop.tls", certs, &format!("{name}-server")));
        s.push_str(&format!(
            "[hop.upstream_tls]\ncert = \"{c}/{name}-client.pem\"\nkey = \"{c}/{name}-client.key\"\nca = [\"{c}/ca.pem\"]\n",
            c = certs.display()
        ));
        s.push_str("[hop.http]\nidle_timeout = \"600s\"\nmax_connections = 30000\nmax_connections_per_agency = 30000\n");
    };
    hop(&mut s, "lgsp", p.lgsp, "");
    for (name, prefix, upstream, rewrite, queued) in [
        (
            "HoSoCBCCVC",
            "/lgsp/v1/HoSoCBCCVC",
            p.emulator,
            "/cbccvc/v1/HoSoCBCCVC",
            false,
        ),
        (
            "chain",
            "/chain/v1/HoSoCBCCVC",
            p.ndxp,
            "/ndxp/v1/HoSoCBCCVC",
            false,
        ),
        (
            "queued",
            "/queued/v1/HoSoCBCCVC",
            p.emulator,
            "/cbccvc/v1/HoSoCBCCVC",
            true,
        ),
    ] {
        s.push_str(&packet_route(name, prefix, upstream, rewrite, queued));
    }
    s.push_str("[[hop.route]]\nname = \"messages\"\nmethods = [\"GET\"]\nprefix = \"/lgsp/v1/messages\"\nmessages = true\nagencies = [\"*\"]\nrate = \"1000000/s\"\nburst = 1000000\n");
    hop(&mut s, "ndxp", p.ndxp, "\"LGSP-DEV\"");
    s.push_str(&packet_route(
        "HoSoCBCCVC",
        "/ndxp/v1/HoSoCBCCVC",
        p.emulator,
        "/cbccvc/v1/HoSoCBCCVC",
        false,
    ));
    s.push_str(&lgsp_testkit::agencies_toml());
    s
}
