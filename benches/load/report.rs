//! `benches/RESULTS.md`: the latest run and the one before it (so each change reads as before/after) between
//! markers the harness rewrites, and below them the hand-kept log of profiling steps, which it leaves alone.

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use crate::idle::IdleCost;
use crate::oha::Protocol;
use crate::{Args, Run, TARGETS};

const LATEST: &str = "<!-- load:latest -->";
const PREVIOUS: &str = "<!-- load:previous -->";
const END: &str = "<!-- load:end -->";
const LATEST_HEADING: &str = "## Latest run";
const PREVIOUS_HEADING: &str = "## Previous run";

/// A ratio line: its name, the targets over and under, and the figure compared.
type RatioLine = (&'static str, char, char, fn(&Run) -> f64);

pub struct Report<'a> {
    pub args: &'a Args,
    pub started: SystemTime,
    pub medians: Vec<Run>,
    pub idle: Vec<(&'static str, Protocol, IdleCost)>,
    pub oha_command: Vec<String>,
    pub oha: &'a Path,
    pub nginx: &'a Path,
}

/// The first line a command prints of its version (stdout or stderr).
fn version(cmd: &Path, arg: &str) -> String {
    std::process::Command::new(cmd)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .map(|d| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02} UTC",
                d.year(),
                u8::from(d.month()),
                d.day(),
                d.hour(),
                d.minute()
            )
        })
        .unwrap_or_default()
}

fn quoted(arg: &str) -> String {
    if arg
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@".contains(c))
    {
        arg.to_owned()
    } else {
        format!("'{arg}'")
    }
}

impl Report<'_> {
    fn get(&self, target: char, protocol: Protocol) -> Option<&Run> {
        self.medians
            .iter()
            .find(|r| r.target == target && r.protocol == protocol)
    }

    /// `x(over)/x(under)` of a figure, when both targets ran.
    fn ratio(&self, over: char, under: char, p: Protocol, f: fn(&Run) -> f64) -> Option<f64> {
        let (a, b) = (self.get(over, p)?, self.get(under, p)?);
        let r = f(a) / f(b);
        r.is_finite().then_some(r)
    }

    fn idle_kib(&self, server: &str, p: Protocol) -> Option<f64> {
        self.idle
            .iter()
            .find(|(s, q, _)| *s == server && *q == p)
            .map(|(_, _, c)| c.kib_per_connection)
    }

    pub fn markdown(&self) -> String {
        let a = self.args;
        let (cpu, cores, kernel) = crate::procfs::machine();
        let mut s = String::new();
        let _ = writeln!(s, "{LATEST_HEADING} — {}\n", utc(self.started));
        let _ = writeln!(
            s,
            "Machine: {cpu}, {cores} cores, Linux {kernel}. Tools: {}, {}, {}.\n",
            version(self.nginx, "-v"),
            version(self.oha, "--version"),
            version(Path::new("rustc"), "--version"),
        );
        let baseline = a
            .baseline_bin
            .as_ref()
            .map(|b| format!(" --baseline-bin {}", b.display()))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "Command: `cargo bench --bench load -- --duration {} --rounds {} --connections {} --idle {} --targets {} --protocols {}{baseline}`\n",
            a.duration, a.rounds, a.connections, a.idle, a.targets, a.protocols
        );
        let _ = writeln!(
            s,
            "Each run: oha for {} s over {} connections, POST of one 4.8 KiB HoSoCBCCVC packet with agency H29's certificate; \
             the {} rounds alternate the targets, and each figure is the median of its rounds. Target c, HTTP/1.1:\n",
            a.duration, a.connections, a.rounds
        );
        let cmd: Vec<String> = self.oha_command.iter().map(|x| quoted(x)).collect();
        let _ = writeln!(
            s,
            "```\noha {}\n```\n\n(`$PKI`: the dev PKI the harness generates; `$WORK`: its working directory; `$PORT`: the LGSP hop's port.)\n",
            cmd.join(" ")
        );
        let _ = writeln!(s, "Targets:\n");
        for t in TARGETS
            .iter()
            .filter(|t| self.medians.iter().any(|r| r.target == t.key))
        {
            let _ = writeln!(s, "- **{}** {}: {}", t.key, t.name, t.what);
        }
        s.push('\n');

        let _ = writeln!(s, "### Ratios (requests/s unless named)\n\n```");
        let rps = |r: &Run| r.measured.rps;
        let cpu_of = |r: &Run| r.cpu_ms_per_request;
        let p99 = |r: &Run| r.measured.p99_ms;
        for p in Protocol::ALL {
            let suffix = match p {
                Protocol::Http1 => String::new(),
                other => format!(" ({})", other.label()),
            };
            let lines: [RatioLine; 10] = [
                ("gateway/unjournalled", 'c', 'j', rps),
                ("gateway/unjournalled CPU per request", 'c', 'j', cpu_of),
                ("gateway/nginx", 'c', 'b', rps),
                ("gateway/direct", 'c', 'a', rps),
                ("chain/nginx", 'd', 'b', rps),
                ("queued/gateway", 'e', 'c', rps),
                ("gateway/nginx p99", 'c', 'b', p99),
                ("gateway/nginx CPU per request", 'c', 'b', cpu_of),
                ("gateway/baseline", 'c', 'x', rps),
                ("gateway/baseline CPU per request", 'c', 'x', cpu_of),
            ];
            for (name, over, under, f) in lines {
                if let Some(r) = self.ratio(over, under, p, f) {
                    let _ = writeln!(s, "{name}{suffix} = {r:.2}");
                }
            }
            if let Some(w) = self.get('e', p).and_then(|r| r.delivered_while_loaded) {
                let _ = writeln!(s, "outbox delivered/accepted while loaded{suffix} = {w:.3}");
            }
        }
        let _ = writeln!(s, "```\n");

        for p in Protocol::ALL {
            if !self.medians.iter().any(|r| r.protocol == p) {
                continue;
            }
            let _ = writeln!(s, "### {}\n", p.label());
            let _ = writeln!(
                s,
                "| target | req/s | p50 ms | p99 ms | p99.9 ms | server CPU ms/req | peak RSS MiB | answers | not 2xx |\n|---|---|---|---|---|---|---|---|---|"
            );
            for t in &TARGETS {
                let Some(r) = self.get(t.key, p) else {
                    continue;
                };
                let failed: Vec<String> = r
                    .measured
                    .failures
                    .iter()
                    .map(|(w, n)| format!("{n}× {w}"))
                    .collect();
                let drain = r
                    .drain_seconds
                    .zip(r.delivered_while_loaded)
                    .map(|(d, w)| {
                        format!(
                            " ({:.1} % delivered while loaded, the rest {d:.2} s after)",
                            w * 100.0
                        )
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "| {} {}{} | {:.0} | {:.2} | {:.2} | {:.2} | {:.3} | {:.1} | {} | {} |",
                    t.key,
                    t.name,
                    drain,
                    r.measured.rps,
                    r.measured.p50_ms,
                    r.measured.p99_ms,
                    r.measured.p999_ms,
                    r.cpu_ms_per_request,
                    r.peak_rss_mib,
                    r.measured.requests,
                    if failed.is_empty() {
                        "0".to_owned()
                    } else {
                        failed.join(", ")
                    }
                );
            }
            s.push('\n');
        }

        if !self.idle.is_empty() {
            let n = self.idle.first().map_or(0, |(_, _, c)| c.connections);
            let _ = writeln!(
                s,
                "### Idle connections\n\n{n} mTLS connections per server and protocol, each after one request (`GET /idle`, 404), on a fresh process; resident memory after minus before, per connection.\n"
            );
            let _ = writeln!(s, "| server | HTTP/1.1 KiB | HTTP/2 KiB |\n|---|---|---|");
            for server in ["gateway", "nginx"] {
                let cell = |p| {
                    self.idle_kib(server, p)
                        .map_or("–".to_owned(), |k| format!("{k:.1}"))
                };
                let _ = writeln!(
                    s,
                    "| {server} | {} | {} |",
                    cell(Protocol::Http1),
                    cell(Protocol::Http2)
                );
            }
            s.push('\n');
        }

        let _ = writeln!(s, "### Goals\n\n| goal | measured | |\n|---|---|---|");
        // Each goal: its ratio, the bound, and whether the ratio must reach the bound or stay under it.
        let per_protocol: [(RatioLine, f64, bool); 6] = [
            (
                ("(c) ≥ 0.85× the hop without the journal (j)", 'c', 'j', rps),
                0.85,
                true,
            ),
            (("(c) ≥ 1.0× nginx's requests/s", 'c', 'b', rps), 1.0, true),
            (("(c) p99 ≤ 1.2× nginx's", 'c', 'b', p99), 1.2, false),
            (
                ("(c) CPU per request ≤ 1.2× nginx's", 'c', 'b', cpu_of),
                1.2,
                false,
            ),
            (("(d) ≥ 0.6× nginx's requests/s", 'd', 'b', rps), 0.6, true),
            (("(e) ≥ 1.0× (c)'s requests/s", 'e', 'c', rps), 1.0, true),
        ];
        for p in [Protocol::Http1, Protocol::Http2] {
            for ((what, over, under, f), bound, at_least) in per_protocol {
                if let Some(v) = self.ratio(over, under, p, f) {
                    let met = if at_least { v >= bound } else { v <= bound };
                    let _ = writeln!(
                        s,
                        "| {what}, {} | {v:.2}× | {} |",
                        p.label(),
                        if met { "met" } else { "not met" }
                    );
                }
            }
            // The outbox keeps up when what it delivered while the load ran is what was accepted, but for the
            // packets still on their way when the load stopped (at most its workers' worth).
            if let Some(w) = self.get('e', p).and_then(|r| r.delivered_while_loaded) {
                let _ = writeln!(
                    s,
                    "| (e) the outbox drains as fast as the hop accepts: delivered/accepted while loaded ≥ 0.99, {} | {w:.3} | {} |",
                    p.label(),
                    if w >= 0.99 { "met" } else { "not met" }
                );
            }
        }
        let mut goal = |what: String, value: Option<f64>, met: fn(f64) -> bool, unit: &str| {
            if let Some(v) = value {
                let _ = writeln!(
                    s,
                    "| {what} | {v:.2}{unit} | {} |",
                    if met(v) { "met" } else { "not met" }
                );
            }
        };
        goal(
            "new TLS connections per second ≥ 1.0× nginx's (c/b)".into(),
            self.ratio('c', 'b', Protocol::NewConnection, rps),
            |v| v >= 1.0,
            "×",
        );
        for p in [Protocol::Http1, Protocol::Http2] {
            goal(
                format!("an idle gateway connection ≤ 8 KiB, {}", p.label()),
                self.idle_kib("gateway", p),
                |v| v <= 8.0,
                " KiB",
            );
        }
        s
    }
}

/// Writes `latest` as the latest run, the file's former latest run as the previous one, and keeps what follows
/// the generated part.
pub fn write(path: &Path, latest: &str) {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let between = |from: &str, to: &str| -> Option<String> {
        let start = old.find(from)? + from.len();
        let end = start + old[start..].find(to)?;
        Some(old[start..end].trim().to_owned())
    };
    let previous = between(LATEST, PREVIOUS)
        .filter(|p| !p.is_empty())
        .map(|p| p.replacen(LATEST_HEADING, PREVIOUS_HEADING, 1))
        .map(|p| demote(&p))
        .unwrap_or_else(|| format!("{PREVIOUS_HEADING}\n\nNone yet."));
    let head = old
        .find(LATEST)
        .map(|i| old[..i].trim_end().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| {
            "# Load results\n\n`cargo bench --bench load` (see `benches/load/main.rs`) writes the part between the markers: the latest run and the run before it, so each change reads as before and after. The log of profiling steps below them is kept by hand.".to_owned()
        });
    let tail = old
        .find(END)
        .map(|i| old[i + END.len()..].trim().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "## Profile and fix\n\nNothing recorded yet.".to_owned());
    let text = format!(
        "{head}\n\n{LATEST}\n{}\n\n{PREVIOUS}\n{previous}\n\n{END}\n\n{tail}\n",
        latest.trim()
    );
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The previous run's ratio lines no longer read as the latest ones (`gateway/nginx = …` is the latest's alone).
fn demote(previous: &str) -> String {
    previous
        .lines()
        .map(|l| {
            if l.contains(" = ") && !l.starts_with('|') && !l.starts_with('#') {
                format!("previous {l}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
