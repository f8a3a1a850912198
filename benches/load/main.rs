//! The load harness: the gateway against nginx and against its own upstream, on one machine, in one run.
//!
//! `cargo bench --bench load` (options after `--`, see `--help`). Needs oha (`cargo install oha --locked`) and
//! nginx (`apt-get install nginx`). Targets, each a POST of the same 4.8 KiB HoSoCBCCVC packet with agency H29's
//! certificate:
//!
//! - **a** direct: oha → emulator (the ceiling: what the upstream itself costs);
//! - **b** nginx: oha → nginx (mTLS both sides, access log) → emulator (`benches/nginx/nginx.conf`);
//! - **c** gateway: oha → LGSP hop (API key, validation with domain rules, rate limits set high, journal) → emulator;
//! - **d** chain: oha → LGSP hop → NDXP hop (same process) → emulator;
//! - **e** queued: oha → LGSP hop, answered 202 once journalled; the outbox delivers to the emulator;
//! - **j** unjournalled: as c, through a build of this tree whose packet routes forward without the journal
//!   (`--features bench-without-journal`, built here into `target/without-journal`): what the journal costs.
//!
//! Over HTTP/1.1 keep-alive, HTTP/2, and a new TLS connection per request; the targets alternate within each round
//! and the median of the rounds is reported. For each: requests/s (2xx answers only), p50/p99/p99.9, server CPU
//! seconds per request (`/proc`, the target's own processes: the emulator for a, nginx's master and workers for b,
//! the gateway for c–e), peak RSS. Then idle-connection memory with many connections per protocol, to the gateway
//! and to nginx, each on a fresh process. Writes `benches/RESULTS.md`. Timings are never asserted anywhere: this
//! reports; CI does not run it.

mod idle;
mod oha;
mod procfs;
mod report;
mod servers;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use lgsp_testkit::TestPki;
use sha2::{Digest, Sha256};

use oha::{Load, Measured, Protocol};
use servers::{Gateway, GatewayPorts, Nginx, Server};

/// The gateway against nginx and against its own upstream, on this machine, in one run.
#[derive(Parser, Debug, Clone)]
#[command(name = "load")]
pub struct Args {
    /// Seconds of load per run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Rounds over every target (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Concurrent connections of the load client.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Idle connections per server and protocol (0: skip the idle-memory measurement).
    #[arg(long, default_value_t = 10_000)]
    pub idle: usize,
    /// Targets to run, of a,b,c,d,e,j.
    #[arg(long, default_value = "a,b,c,d,e,j")]
    pub targets: String,
    /// Protocols to run, of h1,h2,new.
    #[arg(long, default_value = "h1,h2,new")]
    pub protocols: String,
    /// Where the report goes (its hand-written part, below the generated one, is kept).
    #[arg(long, default_value = "benches/RESULTS.md")]
    pub out: PathBuf,
    /// Print the report only; leave the file alone.
    #[arg(long)]
    pub no_write: bool,
    /// Profile one target instead of comparing: after the warm-up, one run of it (the first protocol given) under
    /// `perf record -e cpu-clock --call-graph dwarf` of its server, written to `--perf-out`.
    #[arg(long)]
    pub perf: Option<char>,
    /// Where `--perf` writes its profile.
    #[arg(long, default_value = "perf.data")]
    pub perf_out: PathBuf,
    /// Another build of the gateway (e.g. the commit before a change, built with `cargo bench --bench load
    /// --no-run` in a worktree): run as target x beside c, with the same config, in the same rounds, so a change is
    /// measured against its baseline in one run.
    #[arg(long)]
    pub baseline_bin: Option<PathBuf>,
    /// The build target j runs (default: this tree built with `--features bench-without-journal` into
    /// `target/without-journal`, which leaves the bench's own build alone).
    #[arg(long)]
    pub without_journal_bin: Option<PathBuf>,
    /// Which target the baseline build plays as x: c (the direct route) or e (the queued one).
    #[arg(long, default_value_t = 'c')]
    pub baseline_target: char,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
}

/// One target of the comparison.
#[derive(Clone, Debug)]
pub struct Target {
    pub key: char,
    pub name: &'static str,
    pub what: &'static str,
    path: &'static str,
}

pub const TARGETS: [Target; 7] = [
    Target {
        key: 'a',
        name: "direct",
        what: "client → emulator",
        path: "/cbccvc/v1/HoSoCBCCVC",
    },
    Target {
        key: 'b',
        name: "nginx",
        what: "client → nginx → emulator",
        path: "/nginx/v1/HoSoCBCCVC",
    },
    Target {
        key: 'c',
        name: "gateway",
        what: "client → gateway hop (key, validation, limits, journal) → emulator",
        path: "/lgsp/v1/HoSoCBCCVC",
    },
    Target {
        key: 'd',
        name: "chain",
        what: "client → LGSP hop → NDXP hop (one process) → emulator",
        path: "/chain/v1/HoSoCBCCVC",
    },
    Target {
        key: 'e',
        name: "queued",
        what: "client → gateway hop, 202 once journalled → outbox → emulator",
        path: "/queued/v1/HoSoCBCCVC",
    },
    Target {
        key: 'j',
        name: "unjournalled",
        what: "as c, through a build without the journal (`--features bench-without-journal`): what the journal costs",
        path: "/lgsp/v1/HoSoCBCCVC",
    },
    Target {
        key: 'x',
        name: "baseline",
        what: "as c (or e, with --baseline-target e), through the build given with --baseline-bin",
        path: "/lgsp/v1/HoSoCBCCVC",
    },
];

const API_KEY: &str = "lgsp_dev_000.00.00.H29_production";
/// The message id oha sends straight to the emulator (a): the emulator requires one; a gateway makes its own.
const DIRECT_MESSAGE_ID: &str = "01939f1c-0000-7000-8000-00000000d1ec";

/// One measured run.
#[derive(Clone, Debug)]
pub struct Run {
    pub target: char,
    pub protocol: Protocol,
    pub measured: Measured,
    pub cpu_ms_per_request: f64,
    pub peak_rss_mib: f64,
    /// Queued target: seconds after the load ended until the emulator held every packet accepted.
    pub drain_seconds: Option<f64>,
    /// Queued target: the packets the outbox delivered while the load ran, over those accepted (1.0: it kept up).
    pub delivered_while_loaded: Option<f64>,
}

/// A HoSoCBCCVC packet of about 4.8 KiB: the full sample with work history added, checked valid.
fn packet() -> Vec<u8> {
    const WORK: &str = "  <QuaTrinhCongTac>\n    <NgayBatDau>2020-01-01</NgayBatDau>\n    <NgayKetThuc>2020-12-31</NgayKetThuc>\n    <DonViCongTac>Văn phòng UBND tỉnh</DonViCongTac>\n    <ChucVu>Chuyên viên</ChucVu>\n  </QuaTrinhCongTac>\n";
    let sample = lgsp_testkit::sample("valid/HoSoCBCCVC-01-day-du.xml");
    let split = sample
        .find("  <QuaTrinhLuong>")
        .expect("the sample has QuaTrinhLuong");
    let (before, after) = sample.split_at(split);
    let mut out = before.to_owned();
    while out.len() + after.len() + WORK.len() <= 4915 {
        out.push_str(WORK);
    }
    out.push_str(after);
    let catalog = lgsp_schema::Catalog::embedded().expect("embedded schemas");
    let verdict = catalog.validate(
        "HoSoCBCCVC",
        lgsp_schema::Format::Xml,
        out.as_bytes(),
        &lgsp_schema::Options::default(),
    );
    assert!(
        verdict.is_valid(),
        "the load packet must be valid: {:?}",
        verdict.violations.first()
    );
    out.into_bytes()
}

/// The build target j runs: `--without-journal-bin`, or this tree built with the feature `bench-without-journal`
/// in the bench's own target directory (only the crates the feature changes are compiled), copied to
/// `target/without-journal/lgsp-gateway`; then `target/release/lgsp-gateway` is built back as it was. `bin`, the
/// gateway this bench measures, is a copy taken before.
fn without_journal_bin(args: &Args, root: &Path, bin: &Path) -> PathBuf {
    if let Some(b) = &args.without_journal_bin {
        // The gateways run in a work directory of their own: a relative path is made absolute here.
        return std::path::absolute(b).expect("--without-journal-bin");
    }
    let cargo = |features: &[&str]| {
        let built = std::process::Command::new(env!("CARGO"))
            .args(["build", "--release", "--bin", "lgsp-gateway"])
            .args(features)
            .current_dir(root)
            .status()
            .expect("cargo");
        assert!(
            built.success(),
            "the build {features:?} failed (or give one with --without-journal-bin)"
        );
    };
    eprintln!("load: building the hop without the journal (target j)");
    cargo(&["--features", "bench-without-journal"]);
    let dir = root.join("target/without-journal");
    std::fs::create_dir_all(&dir).expect("target/without-journal");
    let out = dir.join("lgsp-gateway");
    std::fs::copy(root.join("target/release/lgsp-gateway"), &out).expect("copy of the build");
    cargo(&[]);
    let digest = |p: &Path| Sha256::digest(std::fs::read(p).expect("the gateway binary"));
    assert!(
        digest(&out) != digest(bin),
        "target j's build is the journalled gateway"
    );
    out
}

fn find_nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// The median run of each (target, protocol) over the rounds: each figure its own median.
fn medians(runs: &[Run]) -> Vec<Run> {
    let mut out = Vec::new();
    for p in Protocol::ALL {
        for t in &TARGETS {
            let of: Vec<&Run> = runs
                .iter()
                .filter(|r| r.target == t.key && r.protocol == p)
                .collect();
            let Some(first) = of.first() else { continue };
            let m = |f: &dyn Fn(&Run) -> f64| median(of.iter().map(|r| f(r)).collect());
            let mut failures: Vec<(String, u64)> = Vec::new();
            for r in &of {
                for (what, n) in &r.measured.failures {
                    match failures.iter_mut().find(|(w, _)| w == what) {
                        Some((_, total)) => *total += n,
                        None => failures.push((what.clone(), *n)),
                    }
                }
            }
            out.push(Run {
                target: t.key,
                protocol: p,
                measured: Measured {
                    requests: of.iter().map(|r| r.measured.requests).sum(),
                    ok: of.iter().map(|r| r.measured.ok).sum(),
                    rps: m(&|r| r.measured.rps),
                    p50_ms: m(&|r| r.measured.p50_ms),
                    p99_ms: m(&|r| r.measured.p99_ms),
                    p999_ms: m(&|r| r.measured.p999_ms),
                    failures,
                },
                cpu_ms_per_request: m(&|r| r.cpu_ms_per_request),
                peak_rss_mib: m(&|r| r.peak_rss_mib),
                drain_seconds: first
                    .drain_seconds
                    .map(|_| m(&|r| r.drain_seconds.unwrap_or(f64::NAN))),
                delivered_while_loaded: first
                    .delivered_while_loaded
                    .map(|_| m(&|r| r.delivered_while_loaded.unwrap_or(f64::NAN))),
            });
        }
    }
    out
}

/// Everything a run needs to reach the servers.
struct Bench<'a> {
    args: &'a Args,
    oha: PathBuf,
    pki: &'a TestPki,
    body: PathBuf,
    ticks: f64,
    ports: GatewayPorts,
    baseline_port: u16,
    unjournalled_port: u16,
    nginx_port: u16,
}

impl Bench<'_> {
    fn load(&self, t: &Target, protocol: Protocol, duration: Duration) -> Load<'_> {
        let port = match t.key {
            'a' => self.ports.emulator,
            'b' => self.nginx_port,
            'x' => self.baseline_port,
            'j' => self.unjournalled_port,
            _ => self.ports.lgsp,
        };
        let headers = match t.key {
            'a' => vec![format!("X-LGSP-Message-Id: {DIRECT_MESSAGE_ID}")],
            'b' => Vec::new(),
            _ => vec![format!("X-API-Key: {API_KEY}")],
        };
        Load {
            oha: &self.oha,
            url: format!("https://localhost:{port}{}", self.path_of(t)),
            headers,
            body: &self.body,
            certs: self.pki.dir(),
            connections: self.args.connections,
            duration,
            protocol,
        }
    }

    /// One measured run of `t`: load, then (queued) the outbox drained, CPU and memory of `server` around it.
    /// The path a target posts to; the baseline's is the target it plays.
    fn path_of(&self, t: &Target) -> &'static str {
        let played = match t.key {
            'x' => self.args.baseline_target,
            other => other,
        };
        TARGETS
            .iter()
            .find(|t| t.key == played)
            .map_or(t.path, |t| t.path)
    }

    /// Whether `t` posts to the queued route (its run lasts until the outbox is empty).
    fn queued(&self, t: &Target) -> bool {
        t.key == 'e' || (t.key == 'x' && self.args.baseline_target == 'e')
    }

    fn run(&self, t: &Target, protocol: Protocol, server: &dyn Server, emulator: &Gateway) -> Run {
        // What the emulator holds, counted by its own metric: a queued run's deliveries, as they land.
        let stored = || {
            emulator.metric(
                "lgsp_emulator_packets_total",
                "message_type=\"HoSoCBCCVC\",result=\"accepted\"",
            )
        };
        let stored0 = stored();
        server.reset_peak();
        let cpu0 = server.cpu_seconds(self.ticks);
        let measured = self
            .load(t, protocol, Duration::from_secs(self.args.duration))
            .run();
        let ended = Instant::now();
        let (drain_seconds, delivered_while_loaded) = if self.queued(t) {
            let accepted = measured.ok as f64;
            let at_end = stored() - stored0;
            let deadline = ended + Duration::from_secs(600);
            while stored() - stored0 < accepted {
                assert!(
                    Instant::now() < deadline,
                    "the outbox did not deliver every accepted packet in 10 minutes"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            (
                Some(ended.elapsed().as_secs_f64()),
                Some(at_end / accepted.max(1.0)),
            )
        } else {
            (None, None)
        };
        let cpu = server.cpu_seconds(self.ticks) - cpu0;
        Run {
            target: t.key,
            protocol,
            cpu_ms_per_request: cpu * 1000.0 / measured.ok.max(1) as f64,
            peak_rss_mib: server.peak_rss_kib() as f64 / 1024.0,
            drain_seconds,
            delivered_while_loaded,
            measured,
        }
    }
}

fn main() {
    let args = Args::parse();
    let Some(oha) = oha::find() else {
        eprintln!("load: oha is not installed: cargo install oha --locked");
        std::process::exit(2);
    };
    let Some(nginx_bin) = find_nginx() else {
        eprintln!("load: nginx is not installed: apt-get install nginx");
        std::process::exit(2);
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let template = std::fs::read_to_string(root.join("benches/nginx/nginx.conf"))
        .expect("benches/nginx/nginx.conf");
    let wanted = |list: &str, key: &str| list.split(',').any(|k| k.trim() == key);
    let targets: Vec<&Target> = TARGETS
        .iter()
        .filter(|t| {
            wanted(&args.targets, &t.key.to_string())
                || (t.key == 'x' && args.baseline_bin.is_some())
        })
        .collect();
    let protocols: Vec<Protocol> = Protocol::ALL
        .into_iter()
        .filter(|p| wanted(&args.protocols, p.key()))
        .collect();

    let pki = TestPki::new();
    let work = tempfile::tempdir().expect("work dir");
    // A copy of the gateway cargo built for this bench: building target j replaces target/release's for a while.
    let bin = work.path().join("lgsp-gateway");
    std::fs::copy(env!("CARGO_BIN_EXE_lgsp-gateway"), &bin).expect("copy of the gateway");
    let body = work.path().join("HoSoCBCCVC-4.8KiB.xml");
    std::fs::write(&body, packet()).expect("packet file");
    let ports = GatewayPorts {
        lgsp: servers::free_port(),
        ndxp: servers::free_port(),
        emulator: servers::free_port(),
    };
    let nginx_port = servers::free_port();
    let baseline_ports = GatewayPorts {
        lgsp: servers::free_port(),
        ndxp: servers::free_port(),
        emulator: ports.emulator,
    };
    let unjournalled_ports = GatewayPorts {
        lgsp: servers::free_port(),
        ndxp: servers::free_port(),
        emulator: ports.emulator,
    };
    let unjournalled_bin = targets
        .iter()
        .any(|t| t.key == 'j')
        .then(|| without_journal_bin(&args, root, &bin));
    let journals = AtomicUsize::new(0);
    let start = |bin: &Path, ports: &GatewayPorts, name: &str| {
        let journal = work.path().join(format!(
            "journal-{}.db",
            journals.fetch_add(1, Ordering::Relaxed)
        ));
        let g = Gateway::start(
            bin,
            work.path(),
            name,
            &servers::gateway_config(pki.dir(), &journal, ports),
            &work.path().join(format!("{name}.log")),
        );
        servers::wait_for_port(ports.lgsp);
        g
    };
    let start_gateway = || start(&bin, &ports, "gateway");
    let start_nginx = || {
        Nginx::start(
            &nginx_bin,
            &template,
            work.path(),
            pki.dir(),
            nginx_port,
            ports.emulator,
        )
    };
    let started = std::time::SystemTime::now();
    let emulator = Gateway::start(
        &bin,
        work.path(),
        "emulator",
        &servers::emulator_config(pki.dir(), ports.emulator),
        &work.path().join("emulator.log"),
    );
    servers::wait_for_port(ports.emulator);

    // Idle memory first, each on a fresh process: memory a load run freed would hide what a connection costs.
    let mut idle = Vec::new();
    if args.idle > 0 {
        for protocol in [Protocol::Http1, Protocol::Http2] {
            let g = start_gateway();
            let addr = ([127, 0, 0, 1], ports.lgsp).into();
            let cost = idle::measure(
                &pki,
                &g,
                addr,
                protocol,
                args.idle,
                &[("x-api-key", API_KEY)],
            );
            eprintln!(
                "idle {} gateway: {:.1} KiB per connection",
                protocol.key(),
                cost.kib_per_connection
            );
            idle.push(("gateway", protocol, cost));
            drop(g);
            let n = start_nginx();
            let addr = ([127, 0, 0, 1], nginx_port).into();
            let cost = idle::measure(&pki, &n, addr, protocol, args.idle, &[]);
            eprintln!(
                "idle {} nginx: {:.1} KiB per connection",
                protocol.key(),
                cost.kib_per_connection
            );
            idle.push(("nginx", protocol, cost));
        }
    }

    let gateway = start_gateway();
    let baseline = args
        .baseline_bin
        .as_ref()
        .map(|b| std::path::absolute(b).expect("--baseline-bin"))
        .map(|b| start(&b, &baseline_ports, "baseline"));
    let unjournalled = unjournalled_bin
        .as_ref()
        .map(|b| start(b, &unjournalled_ports, "unjournalled"));
    let nginx = start_nginx();
    let bench = Bench {
        args: &args,
        oha: oha.clone(),
        pki: &pki,
        body,
        ticks: procfs::clock_ticks(),
        ports,
        baseline_port: baseline_ports.lgsp,
        unjournalled_port: unjournalled_ports.lgsp,
        nginx_port,
    };
    let server_of = |t: &Target| -> &dyn Server {
        match t.key {
            'a' => &emulator,
            'b' => &nginx,
            'x' => baseline.as_ref().unwrap_or(&gateway),
            'j' => unjournalled.as_ref().unwrap_or(&gateway),
            _ => &gateway,
        }
    };
    // Warm-up: connection pools, the journal's file, the allocator.
    for p in &protocols {
        for t in &targets {
            let _ = bench.load(t, *p, Duration::from_secs(2)).run();
        }
    }
    if let Some(key) = args.perf {
        let t = TARGETS
            .iter()
            .find(|t| t.key == key)
            .expect("--perf names a target of a,b,c,d,e,j");
        let p = *protocols.first().expect("a protocol");
        let pids: Vec<String> = server_of(t).pids().iter().map(u32::to_string).collect();
        let mut perf = std::process::Command::new("perf")
            .args([
                "record",
                "-e",
                "cpu-clock",
                "-F",
                "499",
                "--call-graph",
                "dwarf,16384",
                "-o",
            ])
            .arg(&args.perf_out)
            .args(["-p", &pids.join(",")])
            .spawn()
            .expect("perf (apt-get install linux-perf)");
        std::thread::sleep(Duration::from_millis(500));
        let r = bench.run(t, p, server_of(t), &emulator);
        let _ = std::process::Command::new("kill")
            .args(["-INT", &perf.id().to_string()])
            .status();
        let _ = perf.wait();
        eprintln!(
            "perf {} {}: {:.0} req/s, {:.3} ms CPU/req; profile in {}",
            p.key(),
            t.name,
            r.measured.rps,
            r.cpu_ms_per_request,
            args.perf_out.display()
        );
        return;
    }
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for p in &protocols {
            for t in &targets {
                let r = bench.run(t, *p, server_of(t), &emulator);
                eprintln!(
                    "round {round} {} {}: {:.0} req/s, p99 {:.2} ms, {:.3} ms CPU/req, {} failed{}",
                    p.key(),
                    t.name,
                    r.measured.rps,
                    r.measured.p99_ms,
                    r.cpu_ms_per_request,
                    r.measured.failures.iter().map(|(_, n)| n).sum::<u64>(),
                    r.drain_seconds
                        .zip(r.delivered_while_loaded)
                        .map(|(d, w)| format!(
                            ", {:.1} % delivered while loaded, the rest {d:.2} s after",
                            w * 100.0
                        ))
                        .unwrap_or_default()
                );
                runs.push(r);
            }
        }
    }
    let sample_command = bench
        .load(
            &TARGETS[2],
            Protocol::Http1,
            Duration::from_secs(args.duration),
        )
        .command()
        .into_iter()
        // The run's own directories and port, named as the report explains them.
        .map(|a| {
            a.replace(&pki.dir().display().to_string(), "$PKI")
                .replace(&work.path().display().to_string(), "$WORK")
                .replace(
                    &format!("localhost:{}", bench.ports.lgsp),
                    "localhost:$PORT",
                )
        })
        .collect();
    let report = report::Report {
        args: &args,
        started,
        medians: medians(&runs),
        idle,
        oha_command: sample_command,
        oha: &oha,
        nginx: &nginx_bin,
    };
    let text = report.markdown();
    println!("{text}");
    if !args.no_write {
        let out = if args.out.is_absolute() {
            args.out.clone()
        } else {
            root.join(&args.out)
        };
        report::write(&out, &text);
        eprintln!("load: wrote {}", out.display());
    }
}
