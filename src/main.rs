//! `lgsp-gateway`: the command line. Parses arguments, loads config, calls the library crates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use lgsp_config::{Config, KeyKind, LogFormat};
use lgsp_proxy::Gateway;

#[derive(Parser)]
#[command(
    name = "lgsp-gateway",
    version,
    about = "mTLS + API-key gateway for the national CBCCVC database (LGSP / NDXP hop)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default when no command is given).
    Run {
        /// Config file; without it the embedded default gateway.toml is used.
        #[arg(long, short, env = "LGSP_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Manage the dev PKI.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Validate a config file: print every problem with its line, and load every certificate it names.
    CheckConfig { file: PathBuf },
    /// Validate packet files offline with the gateway's own validator; exits non-zero when any is invalid.
    Validate {
        /// Check the schema only, not the domain rules.
        #[arg(long)]
        schema_only: bool,
        /// Message type (HoSoCBCCVC, BienChe, PheDuyetDuLieu, BienDong); default: read from the root element / JSON key.
        #[arg(long = "type", value_name = "T")]
        message_type: Option<String>,
        /// Schema directory instead of the schemas compiled into the binary.
        #[arg(long, value_name = "DIR")]
        schemas: Option<PathBuf>,
        /// Print one JSON object per file instead of text.
        #[arg(long)]
        json: bool,
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Check an agency's connection to a gateway step by step (TCP, TLS, client certificate, API key, route,
    /// sample packet, round trip) and say what to fix; exits 0 only when no step fails.
    Probe {
        /// A connection profile (TOML: url, cert, key, ca, api_key_env, sample, type; see
        /// deploy/examples/agency-direct.toml); the options below override it.
        #[arg(long, value_name = "FILE")]
        profile: Option<PathBuf>,
        /// The gateway's API base, e.g. https://lgsp.example.gov.vn:8443/lgsp/v1.
        #[arg(long)]
        url: Option<String>,
        /// Your agency's client certificate (PEM).
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Its private key (PEM).
        #[arg(long)]
        key: Option<PathBuf>,
        /// The CA certificate the gateway's server certificate chains to (PEM).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Your agency's API key (default: the variable the profile's `api_key_env` names, else LGSP_API_KEY).
        #[arg(long, hide_env_values = true)]
        api_key: Option<String>,
        /// A packet to dry-run and then send (XML or JSON); without it the last two steps are skipped.
        #[arg(long)]
        sample: Option<PathBuf>,
        /// Message type of the sample (default: read from it).
        #[arg(long = "type", value_name = "T")]
        message_type: Option<String>,
        /// Print the steps as one JSON object.
        #[arg(long)]
        json: bool,
        /// Bound on each network step, in seconds.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a dev PKI: CA + CRL, a server certificate per hop, client certificates for the hops and three agencies.
    Init {
        /// Target directory (default: the embedded config's `pki.dir`, i.e. ./certs).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Replace an existing dev PKI.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a fresh random API key and the gateway.toml line holding its SHA-256.
    New {
        /// The agency's code (mã định danh), e.g. 000.00.00.H29.
        #[arg(long)]
        agency: String,
        #[arg(long, value_enum, default_value_t = Kind::Production)]
        kind: Kind,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Trial,
    Production,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run { config: None }) {
        Command::Run { config } => run(config.as_deref()),
        Command::Certs {
            command: CertsCommand::Init { dir, force },
        } => certs_init(dir, force),
        Command::CheckConfig { file } => return check_config(&file),
        Command::Keys {
            command: KeysCommand::New { agency, kind },
        } => keys_new(&agency, kind),
        Command::Probe {
            profile,
            url,
            cert,
            key,
            ca,
            api_key,
            sample,
            message_type,
            json,
            timeout,
        } => {
            let given = Profile {
                url,
                cert,
                key,
                ca,
                api_key_env: None,
                sample,
                message_type,
            };
            let opts = match probe_options(profile.as_deref(), given, api_key, timeout) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            };
            return probe(&opts, json);
        }
        Command::Validate {
            schema_only,
            message_type,
            schemas,
            json,
            files,
        } => {
            return validate(
                schema_only,
                message_type.as_deref(),
                schemas.as_deref(),
                json,
                &files,
            );
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    let cfg = match path {
        Some(p) => lgsp_config::load(p),
        None => lgsp_config::embedded(),
    };
    cfg.map_err(|e| anyhow::anyhow!("the config is invalid:\n{e}"))
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

fn run(config: Option<&Path>) -> anyhow::Result<()> {
    let cfg = load(config)?;
    init_logging(&cfg);
    if cfg.pki.dev_autogen && !lgsp_tls::devpki::exists(&cfg.pki.dir) {
        let report = lgsp_tls::devpki::init(&cfg.pki.dir).context("creating the dev PKI")?;
        tracing::info!(dir = %report.dir.display(), files = report.files.len(), "created the dev PKI (pki.dev_autogen = true)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let gateway = Gateway::start_from(&cfg, config.map(Path::to_owned)).await?;
        for h in &gateway.hops {
            println!("listening: hop {} https://{}", h.name, h.addr);
        }
        if let Some((addr, _)) = &gateway.emulator {
            println!("listening: emulator https://{addr}");
        }
        println!("lgsp-gateway {} ready ({})", env!("CARGO_PKG_VERSION"), cfg.source);
        println!("metrics: http://{}/metrics", gateway.admin);
        match sample_curl(&cfg, &gateway) {
            Some(curl) => println!("{curl}"),
            None => println!("# no dev agency certificate and key found for a sample curl; see README \"Connecting an agency\""),
        }
        wait_for_signal(&gateway.reloader).await;
        tracing::info!("draining in-flight requests");
        gateway.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Waits for Ctrl-C or SIGTERM; reloads the config on every SIGHUP meanwhile.
async fn wait_for_signal(reloader: &lgsp_proxy::Reloader) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
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

fn certs_init(dir: Option<PathBuf>, force: bool) -> anyhow::Result<()> {
    let dir = match dir {
        Some(d) => d,
        None => load(None)?.pki.dir,
    };
    if lgsp_tls::devpki::exists(&dir) && !force {
        anyhow::bail!(
            "{} already holds a dev PKI (ca.pem); pass --force to replace all of it",
            dir.display()
        );
    }
    let report = lgsp_tls::devpki::init(&dir)?;
    println!("wrote the dev PKI to {}:", report.dir.display());
    for f in &report.files {
        println!("  {f}");
    }
    println!("Dev certificates only: see certs/README.md for production PKI.");
    Ok(())
}

fn check_config(file: &Path) -> ExitCode {
    let cfg = match lgsp_config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{}: {} problem(s)", file.display(), e.problems.len());
            return ExitCode::FAILURE;
        }
    };
    let mut failures = Vec::new();
    for h in &cfg.hops {
        if let Err(e) = lgsp_tls::server_config(&h.tls) {
            failures.push(format!("hop {}: {e}", h.name));
        }
        if let Err(e) = lgsp_tls::client_config(&h.upstream_tls) {
            failures.push(format!("hop {} upstream_tls: {e}", h.name));
        }
    }
    if let Some(e) = &cfg.emulator {
        if let Err(e) = lgsp_tls::server_config(&e.tls) {
            failures.push(format!("emulator: {e}"));
        }
    }
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("{}: {f}", file.display());
        }
        eprintln!("{}: {} problem(s)", file.display(), failures.len());
        return ExitCode::FAILURE;
    }
    let routes: usize = cfg.hops.iter().map(|h| h.routes.len()).sum();
    println!(
        "{}: ok ({} hops, {routes} routes, {} agencies)",
        file.display(),
        cfg.hops.len(),
        cfg.agencies.len()
    );
    ExitCode::SUCCESS
}

/// A connection profile for `probe` (an agency keeps its connection settings in one file).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    url: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    /// The environment variable holding the API key (never the key itself in a file).
    api_key_env: Option<String>,
    sample: Option<PathBuf>,
    #[serde(rename = "type")]
    message_type: Option<String>,
}

/// The probe's options: the command line over the profile (whose relative paths resolve against its folder).
fn probe_options(
    profile: Option<&Path>,
    given: Profile,
    api_key: Option<String>,
    timeout: u64,
) -> anyhow::Result<lgsp_proxy::probe::ProbeOptions> {
    let file = match profile {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the profile {}", p.display()))?;
            let mut f: Profile = toml::from_str(&text)
                .with_context(|| format!("the profile {} is not valid", p.display()))?;
            let dir = p.parent().unwrap_or(Path::new("."));
            for path in [&mut f.cert, &mut f.key, &mut f.ca, &mut f.sample]
                .into_iter()
                .flatten()
            {
                if path.is_relative() {
                    *path = dir.join(&*path);
                }
            }
            f
        }
        None => Profile::default(),
    };
    let need = |v: Option<PathBuf>, name: &str| {
        v.ok_or_else(|| anyhow::anyhow!("give --{name} (or `{name}` in a --profile)"))
    };
    let env_name = file
        .api_key_env
        .clone()
        .unwrap_or_else(|| "LGSP_API_KEY".to_owned());
    let api_key = api_key
        .or_else(|| std::env::var(&env_name).ok())
        .ok_or_else(|| {
            anyhow::anyhow!("give --api-key, or put the key in the environment variable {env_name}")
        })?;
    Ok(lgsp_proxy::probe::ProbeOptions {
        url: given
            .url
            .or(file.url)
            .ok_or_else(|| anyhow::anyhow!("give --url (or `url` in a --profile)"))?,
        cert: need(given.cert.or(file.cert), "cert")?,
        key: need(given.key.or(file.key), "key")?,
        ca: need(given.ca.or(file.ca), "ca")?,
        api_key,
        sample: given.sample.or(file.sample),
        message_type: given.message_type.or(file.message_type),
        timeout: std::time::Duration::from_secs(timeout.max(1)),
    })
}

fn probe(opts: &lgsp_proxy::probe::ProbeOptions, json: bool) -> ExitCode {
    use lgsp_proxy::probe::Outcome;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(lgsp_proxy::probe::probe(opts));
    // Written, not printed: a closed pipe (`| head`) ends the output, not the process.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        for s in &report.steps {
            let mark = match s.outcome {
                Outcome::Pass => "✓",
                Outcome::Fail => "✗",
                Outcome::Skipped => "–",
            };
            let _ = writeln!(
                out,
                "{mark} {:<18} {:>8.1} ms  {}",
                s.name, s.millis, s.detail
            );
            if let Some(fix) = &s.fix {
                let _ = writeln!(out, "  fix: {fix}");
            }
        }
        let verdict = if report.ok {
            "connection OK"
        } else {
            "connection NOT OK"
        };
        let _ = writeln!(out, "{verdict}");
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn keys_new(agency: &str, kind: Kind) -> anyhow::Result<()> {
    if !lgsp_config::valid_agency_code(agency) {
        anyhow::bail!(
            "`{agency}` is not an agency code (mã định danh): dot-separated groups of 0-9 and A-Z, e.g. 000.00.00.H29"
        );
    }
    let kind = match kind {
        Kind::Trial => KeyKind::Trial,
        Kind::Production => KeyKind::Production,
    };
    let key = lgsp_auth::generate_key(kind)
        .map_err(|e| anyhow::anyhow!("the OS random generator failed: {e}"))?;
    let hash = lgsp_auth::sha256_hex(&key);
    println!(
        "API key for {agency} ({}), shown once — hand it over on a secure channel:",
        kind.as_str()
    );
    println!("  {key}");
    println!(
        "Add this entry to `keys` of the [[agency]] with code = \"{agency}\" in gateway.toml:"
    );
    println!("  {{ sha256 = \"{hash}\", kind = \"{}\" }},", kind.as_str());
    Ok(())
}

/// The packet format of a file: its extension, else its first non-blank byte.
fn file_format(path: &Path, bytes: &[u8]) -> Option<lgsp_schema::Format> {
    lgsp_schema::Format::from_path(path).or_else(|| {
        match bytes.iter().find(|b| !b.is_ascii_whitespace())? {
            b'<' => Some(lgsp_schema::Format::Xml),
            b'{' | b'[' => Some(lgsp_schema::Format::Json),
            _ => None,
        }
    })
}

fn validate(
    schema_only: bool,
    message_type: Option<&str>,
    schemas: Option<&Path>,
    json: bool,
    files: &[PathBuf],
) -> ExitCode {
    let catalog = match schemas {
        Some(dir) => lgsp_schema::Catalog::load(dir),
        None => lgsp_schema::Catalog::embedded(),
    };
    let catalog = match catalog {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: the schemas do not load: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(t) = message_type.filter(|t| !catalog.knows(t)) {
        eprintln!(
            "error: unknown message type {t}; use one of {}",
            lgsp_schema::MESSAGE_TYPES.join(", ")
        );
        return ExitCode::from(2);
    }
    let opts = lgsp_schema::Options {
        domain: !schema_only,
        ..lgsp_schema::Options::default()
    };
    let mut invalid = 0usize;
    for path in files {
        let shown = path.display().to_string();
        let verdict = std::fs::read(path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|bytes| {
                let format = file_format(path, &bytes)
                    .ok_or("cannot tell XML from JSON; name the file .xml or .json")?;
                let t = match message_type {
                    Some(t) => t.to_owned(),
                    None => catalog
                        .detect(format, &bytes)
                        .ok_or("cannot tell the message type from the root; pass --type")?
                        .to_owned(),
                };
                let report = catalog.validate(&t, format, &bytes, &opts);
                Ok((t, format, report))
            });
        match verdict {
            Err(e) => {
                invalid += 1;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"file": shown, "valid": false, "error": e})
                    );
                } else {
                    println!("{shown}: error: {e}");
                }
            }
            Ok((t, format, report)) => {
                let fmt = match format {
                    lgsp_schema::Format::Xml => "xml",
                    lgsp_schema::Format::Json => "json",
                };
                if !report.is_valid() {
                    invalid += 1;
                }
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"file": shown, "message_type": t, "format": fmt, "valid": report.is_valid(), "errors": report.violations, "truncated": report.truncated})
                    );
                    continue;
                }
                if report.is_valid() {
                    println!("{shown}: valid ({t}, {fmt})");
                    continue;
                }
                let more = if report.truncated { "+" } else { "" };
                println!(
                    "{shown}: invalid ({t}, {fmt}): {}{more} error(s)",
                    report.violations.len()
                );
                for v in &report.violations {
                    let at = match (v.line, v.column) {
                        (Some(l), Some(c)) => format!("{l}:{c}"),
                        (Some(l), None) => format!("{l}"),
                        _ => "-".to_owned(),
                    };
                    println!("  {at} {} [{}] {}", v.path, v.rule, v.message);
                }
            }
        }
    }
    if invalid > 0 {
        eprintln!("{invalid} of {} file(s) invalid", files.len());
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
