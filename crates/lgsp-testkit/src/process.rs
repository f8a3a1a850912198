//! Driving the built binary: a gateway process whose printed lines a test waits for, files it reads, and the
//! real clients it is checked with (each skipped with a reason when missing, except in CI).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a process may take to print a line the test waits for.
pub const STARTUP: Duration = Duration::from_secs(30);

/// A tool the test drives; in CI (`CI` set) its absence fails the test, elsewhere the test is skipped with a reason.
pub fn tool(name: &str) -> bool {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
        || Command::new(name)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is missing in CI: .ci/run must install it"
        );
        eprintln!("skipped: {name} is not installed (apt-get install it, or run .ci/run)");
    }
    found
}

/// A running gateway process whose stdout lines arrive on a channel.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    /// The read end of a stderr nobody reads ([`Proc::spawn_with_stalled_stderr`]).
    _stalled: Option<std::process::ChildStderr>,
}

impl Proc {
    /// Runs `bin` (the test's `env!("CARGO_BIN_EXE_lgsp-gateway")`) with `args` in `cwd`.
    pub fn spawn(bin: &str, args: &[&str], cwd: &Path) -> Proc {
        Self::spawn_logging(bin, args, cwd, None)
    }

    /// Spawns with the config's own log settings, stderr written to `log` (None: `RUST_LOG=warn`, inherited).
    pub fn spawn_logging(bin: &str, args: &[&str], cwd: &Path, log: Option<&Path>) -> Proc {
        let mut cmd = Command::new(bin);
        cmd.args(args).current_dir(cwd).stdout(Stdio::piped());
        match log {
            Some(file) => {
                cmd.env_remove("RUST_LOG")
                    .stderr(Stdio::from(std::fs::File::create(file).expect("log file")));
            }
            None => {
                cmd.env("RUST_LOG", "warn").stderr(Stdio::inherit());
            }
        }
        Self::started(cmd)
    }

    /// Spawns with the config's own log settings and a stderr pipe nobody reads: once the pipe is full, every
    /// write to stderr would block.
    pub fn spawn_with_stalled_stderr(bin: &str, args: &[&str], cwd: &Path) -> Proc {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG");
        let mut p = Self::started(cmd);
        p._stalled = p.child.stderr.take();
        p
    }

    fn started(mut cmd: Command) -> Proc {
        let mut child = cmd.spawn().expect("spawn lgsp-gateway");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
            _stalled: None,
        }
    }

    /// The first stdout line starting with `prefix` (waits for the process to print it).
    pub fn line(&mut self, prefix: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            return l.clone();
        }
        loop {
            match self.lines.recv_timeout(STARTUP) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(e) => panic!(
                    "no line starting with {prefix:?} ({e}); saw {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Port of a `listening: … https://127.0.0.1:PORT` line.
    pub fn port(&mut self, prefix: &str) -> u16 {
        let l = self.line(prefix);
        l.rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {l:?}"))
    }

    /// The process id (for signals).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and returns whether the process exited 0.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `text` to `dir/name` and returns the path as text.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p.display().to_string()
}

/// Runs `cmd` with `sh -c`: (success, stdout, stderr).
pub fn sh(cmd: &str) -> (bool, String, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A free TCP port on 127.0.0.1 (free when asked; a test binds it soon after).
///
/// Below the kernel's range of ephemeral ports (`ip_local_port_range`): a port a killed process held and its
/// restart binds again must not be taken meanwhile as the local port of some outgoing connection (seen in the crash
/// matrix: "cannot listen on … Address already in use" after a kill -9).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, span) = (10_000u16, low.saturating_sub(10_000));
    if span > 1_000 {
        for _ in 0..200 {
            // A random port of the range (std's randomly keyed hasher, fed the time).
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos()));
            let port = from + u16::try_from(h.finish() % u64::from(span)).unwrap_or(0);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// HAProxy in TCP mode (an L4 balancer, TLS passed through) in front of `servers`, each sent the PROXY protocol
/// v2 header, round robin over a new connection each; a server that refuses a connection is retried on another
/// (`option redispatch`), and one failing its checks is taken out. Killed when dropped.
pub struct Haproxy {
    child: Child,
    pub port: u16,
}

impl Haproxy {
    /// Starts it with its config in `dir` and waits until it accepts connections. Health checks are TCP connects.
    pub fn start(dir: &Path, servers: &[std::net::SocketAddr]) -> Haproxy {
        let lines: String = servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!("  server gw{i} {s} send-proxy-v2 check inter 500ms fall 2 rise 2\n")
            })
            .collect();
        Self::launch(dir, "", &lines)
    }

    /// As [`Haproxy::start`], but each server's health is `GET /readyz` on its admin listener (`(hop address,
    /// admin port)`): a gateway shutting down with `[admin] shutdown_delay` is taken out before it stops listening.
    pub fn start_with_readyz(dir: &Path, servers: &[(std::net::SocketAddr, u16)]) -> Haproxy {
        let lines: String = servers
            .iter()
            .enumerate()
            .map(|(i, (s, admin))| {
                format!("  server gw{i} {s} send-proxy-v2 check port {admin} inter 200ms fall 2 rise 2\n")
            })
            .collect();
        Self::launch(
            dir,
            "  option httpchk\n  http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost\n  http-check expect status 200\n",
            &lines,
        )
    }

    fn launch(dir: &Path, backend_options: &str, servers: &str) -> Haproxy {
        let port = free_port();
        let cfg = format!(
            "global\n  maxconn 4096\n\
defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  timeout check 1s\n  retries 3\n  option redispatch 1\n\
frontend agencies\n  bind 127.0.0.1:{port}\n  default_backend gateways\n\
backend gateways\n  balance roundrobin\n{backend_options}{servers}"
        );
        let path = dir.join(format!("haproxy-{port}.cfg"));
        std::fs::write(&path, cfg).expect("haproxy.cfg");
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy");
        // Listening once the port cannot be bound (no probe connection: it would reach a server as a client).
        let deadline = std::time::Instant::now() + STARTUP;
        while std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "HAProxy did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Haproxy { child, port }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
