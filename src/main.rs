//! `lgsp-gateway`: the command line. Parses arguments and hands each subcommand to its module in `cmd/`.

mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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
    /// Check a config file as `run` would load it: every problem with its line (the file itself, then every
    /// certificate, CRL, schema directory, token secret and rate-limit backend it names); exit 1 on any problem.
    CheckConfig {
        file: PathBuf,
        /// Also open the rate-limit backend and every upstream's TLS, as each hop (nothing is sent), and report each.
        #[arg(long)]
        connect: bool,
        /// Bound on each connection of --connect, in seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
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
    /// Sign an approval packet (PheDuyetDuLieu) the way the gateway verifies it: XML-DSig for XML, JWS for JSON.
    /// Run it once with the approving person's key and once with the agency's, in either order.
    Sign {
        /// The private key (PEM: PKCS#8, SEC1 or PKCS#1), with --cert.
        #[arg(
            long,
            value_name = "KEY.pem",
            requires = "cert",
            conflicts_with = "p12"
        )]
        key: Option<PathBuf>,
        /// The key's certificate, then any intermediates (PEM).
        #[arg(long, value_name = "CERT.pem", requires = "key")]
        cert: Option<PathBuf>,
        /// A PKCS#12 file holding the key and its certificates, as CAs hand signing keys out.
        #[arg(long, value_name = "FILE", required_unless_present = "key")]
        p12: Option<PathBuf>,
        /// The environment variable holding the PKCS#12 password (none: an empty password).
        #[arg(long, value_name = "VAR", requires = "p12")]
        password_env: Option<String>,
        /// Sign an RSA key with RSA-PSS (PS256 / sha256-rsa-MGF1) instead of PKCS#1 v1.5.
        #[arg(long)]
        pss: bool,
        /// Write the signed packet here (default: standard output).
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
        #[arg(value_name = "PACKET")]
        packet: PathBuf,
    },
    /// Verify approval packets offline with the gateway's own checks: each signature, its chain to the signing
    /// CAs (default: the config's [signing]), key usage, validity, the approval window. Exits 1 when any fails.
    Verify {
        /// Config whose [signing] names the CAs; without it (and without --ca) the embedded default's.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// A signing CA (PEM), instead of the config's; repeat for several.
        #[arg(long, value_name = "CA.pem")]
        ca: Vec<PathBuf>,
        /// A CRL of a signing CA (PEM), with --ca.
        #[arg(long, value_name = "CRL.pem", requires = "ca")]
        crl: Vec<PathBuf>,
        /// The sending agency: the agency signature must be its own.
        #[arg(long, value_name = "CODE")]
        agency: Option<String>,
        /// When the packet arrived (RFC 3339): also check it arrived within the window's lateness.
        #[arg(long, value_name = "TIME")]
        received: Option<String>,
        /// Print one JSON object per file instead of text.
        #[arg(long)]
        json: bool,
        #[arg(required = true, value_name = "PACKET")]
        files: Vec<PathBuf>,
    },
    /// Check an agency's connection to a gateway step by step (TCP, TLS, client certificate, API key, route,
    /// sample packet, round trip) and say what to fix; exits 0 only when no step fails.
    Probe {
        #[command(flatten)]
        connection: Connection,
        /// A packet to dry-run and then send (XML or JSON); without it the last two steps are skipped.
        #[arg(long)]
        sample: Option<PathBuf>,
        /// Message type of the sample (default: read from it).
        #[arg(long = "type", value_name = "T")]
        message_type: Option<String>,
        /// Print the steps as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Turn a filled spreadsheet template (one row per person; schemas/cbccvc/templates/) into one packet per row,
    /// check each with the gateway's validator and report every bad cell as `Sheet!D12: field: …`; `--send` posts
    /// the good ones with the connection settings of `probe`. Exits 0 only when every row is good (and sent).
    Import {
        /// The filled template: .xlsx, .xlsm, .xls, .ods or .csv.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Message type of the rows.
        #[arg(long = "type", value_name = "T", default_value = "HoSoCBCCVC")]
        message_type: String,
        /// Where the good rows' packets are written (made when missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The sheet to read (default: the first).
        #[arg(long)]
        sheet: Option<String>,
        /// Schema directory (with its codes/) instead of the schemas compiled into the binary.
        #[arg(long, value_name = "DIR")]
        schemas: Option<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Send the good packets to the gateway (connection settings as for `probe`).
        #[arg(long)]
        send: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// The message journal: check its hash chain, export or report on it, apply its migrations.
    Journal {
        /// Config file naming the journal (`[journal] url`); without it the embedded default's.
        #[arg(long, short, env = "LGSP_CONFIG", global = true)]
        config: Option<PathBuf>,
        /// A journal to use instead of the config's (`sqlite://FILE` or `postgres://…`), e.g. a backup's copy.
        #[arg(long, global = true, value_name = "URL")]
        url: Option<String>,
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Compare your agency's list of sent packets (CSV: idempotency_key and/or message_id, sha256) with what the
    /// gateway holds of your messages in a period: delivered / pending / rejected (with the reason) / failed /
    /// changed / missing, and what the gateway holds that the list does not (unexpected). Exits 1 when a packet is
    /// missing, failed or changed (it must be sent again), 0 otherwise.
    Reconcile {
        #[command(flatten)]
        connection: Connection,
        /// Start of the period: an RFC 3339 time, or a date (midnight in Vietnam, UTC+07:00).
        #[arg(long)]
        from: String,
        /// End of the period (exclusive), as --from.
        #[arg(long)]
        to: String,
        /// Your list of sent packets (CSV with a header row).
        #[arg(long, value_name = "FILE")]
        sent: PathBuf,
        /// Also look each delivered packet up at the national endpoint, through the gateway's receipt route: one
        /// without a receipt there is `lost` (exit 1).
        #[arg(long)]
        end_to_end: bool,
        /// The receipt route's path under the API base (with --end-to-end).
        #[arg(
            long,
            value_name = "PATH",
            default_value = "BienNhan",
            requires = "end_to_end"
        )]
        receipts: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Walk every hash chain and check everything derived from them (messages, outbox, bodies, the records' own
    /// columns); name the first disagreement and exit 1 if there is one.
    Verify,
    /// Write the derived tables (messages, outbox, the records' columns) anew from the chains, then verify; refused
    /// while a gateway writes the journal.
    RebuildIndex,
    /// Write the records of a period as JSON lines (seq, prev_hash, hash, record); with --sign, as an XML document
    /// signed by the operator (XML-DSig), which `lgsp-gateway verify` and xmlsec1 verify.
    Export {
        /// Start: an RFC 3339 time, or a date (midnight in Vietnam, UTC+07:00); default: the first record.
        #[arg(long)]
        from: Option<String>,
        /// End (exclusive), as --from; default: now.
        #[arg(long)]
        to: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Sign the export (`<XuatNhatKy>`, streamed: any size) with the operator's key: --key and --cert, or --p12.
        #[arg(long)]
        sign: bool,
        /// The operator's signing key (PEM), with --cert.
        #[arg(long, value_name = "KEY.pem", requires_all = ["sign", "cert"], conflicts_with = "p12")]
        key: Option<PathBuf>,
        /// Its certificate, then any intermediates (PEM).
        #[arg(long, value_name = "CERT.pem", requires = "key")]
        cert: Option<PathBuf>,
        /// A PKCS#12 file with the key and its certificates.
        #[arg(long, value_name = "FILE", requires = "sign")]
        p12: Option<PathBuf>,
        /// The environment variable holding the PKCS#12 password.
        #[arg(long, value_name = "VAR", requires = "p12")]
        password_env: Option<String>,
    },
    /// Apply the schema migrations not yet applied (the gateway also applies them at start).
    Migrate,
    /// Copy a SQLite journal to FILE while gateways keep writing it (SQLite's online backup: one consistent
    /// state), then walk the copy's hash chain. PostgreSQL: use pg_dump (README, Backups).
    Backup {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Per hop, agency and message type: received, delivered, rejected, pending and failed in one month.
    Report {
        /// The month, YYYY-MM (Vietnam time, UTC+07:00).
        #[arg(long)]
        month: String,
        /// Also ask the far end, as each hop through its receipt route, whether it holds every message the journal
        /// says was delivered in the month; exit 1 when one is missing there (or cannot be checked).
        #[arg(long)]
        end_to_end: bool,
        /// The hops' receipt route (a look-up route by message id), with --end-to-end.
        #[arg(
            long,
            value_name = "ROUTE",
            default_value = "BienNhan",
            requires = "end_to_end"
        )]
        receipts: String,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// How to reach a gateway as an agency: a connection profile, and options over it.
#[derive(clap::Args)]
struct Connection {
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
    /// Bound on each network step, in seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

impl Connection {
    /// The probe's options: these over the profile; `sample` and `message_type` from the command.
    fn options(
        self,
        sample: Option<PathBuf>,
        message_type: Option<String>,
    ) -> Result<lgsp_probe::ProbeOptions, String> {
        let file = match self
            .profile
            .as_deref()
            .map(lgsp_probe::Profile::read)
            .transpose()
        {
            Ok(p) => p.unwrap_or_default(),
            Err(e) => return Err(e.to_string()),
        };
        let given = lgsp_probe::Profile {
            url: self.url,
            cert: self.cert,
            key: self.key,
            ca: self.ca,
            api_key_env: None,
            sample,
            message_type,
        };
        let lookup = |name: &str| std::env::var(name).ok();
        file.options(
            given,
            self.api_key,
            lookup,
            std::time::Duration::from_secs(self.timeout),
        )
        .map_err(|e| e.to_string())
    }
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
    /// Write a new key and a certificate request for a hop, to send to a real CA (the province's, the national
    /// platform's): the hop's identity as CN and SAN URI, its DNS names and addresses, serverAuth + clientAuth.
    Csr {
        /// The hop's identity, as the next hop's `peers` lists it (e.g. LGSP-HN).
        #[arg(long, value_name = "IDENTITY")]
        hop: String,
        /// A DNS name (or an IP address) clients reach the hop by; repeat for several.
        #[arg(long, value_name = "HOST")]
        dns: Vec<String>,
        /// The organisation running the hop (O).
        #[arg(long)]
        organisation: Option<String>,
        #[arg(long, value_enum, default_value = "ecdsa-p256")]
        algorithm: Algorithm,
        /// Where `<identity>.key` (owner-only) and `<identity>.csr.pem` are written.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// The SAN URI prefix identities are read after ([hop.tls] identity_uri_prefix).
        #[arg(long, default_value = lgsp_config::DEFAULT_IDENTITY_URI_PREFIX)]
        identity_prefix: String,
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
    /// Rotate an agency's API key: a new key (printed once) beside its current ones of the kind, which get a
    /// `not_after` at the end of the overlap; prints the agency's new `keys`, or writes them into the config with
    /// --write (comments and layout kept, the result checked as check-config does first).
    Rotate {
        /// The gateway.toml holding the agency.
        #[arg(long, value_name = "FILE")]
        config: std::path::PathBuf,
        /// The agency's code (mã định danh), e.g. 000.00.00.H29.
        #[arg(long)]
        agency: String,
        #[arg(long, value_enum, default_value_t = Kind::Production)]
        kind: Kind,
        /// How long the current keys keep working beside the new one, e.g. 30d, 12h.
        #[arg(long, default_value = "30d", value_parser = overlap)]
        overlap: std::time::Duration,
        /// The new key's label (default: rotated-<date>).
        #[arg(long)]
        label: Option<String>,
        /// Write the config file (atomically, keeping its mode and owner) instead of printing the change.
        #[arg(long)]
        write: bool,
    },
    /// Write a new key and a certificate request for the agency's SIGNING certificate (approvals, Thông tư
    /// 06/2023), to send to the CA the ministry names; the key stays with the agency.
    Csr {
        /// The agency's code (mã định danh), e.g. 000.00.00.H29: the request's CN and its SAN URI.
        #[arg(long)]
        agency: String,
        /// The agency's name, as the certificate's organisation (O).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_enum, default_value_t = Algorithm::EcdsaP256)]
        algorithm: Algorithm,
        /// Where `<code>-signing.key` (owner-only) and `<code>-signing.csr.pem` are written.
        #[arg(long, default_value = ".")]
        out: std::path::PathBuf,
        /// The SAN URI prefix the gateways recognise identities by ([hop.tls] identity_uri_prefix).
        #[arg(long, default_value = lgsp_config::DEFAULT_IDENTITY_URI_PREFIX)]
        identity_prefix: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Algorithm {
    EcdsaP256,
    Rsa2048,
    Rsa3072,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Trial,
    Production,
}

impl From<Kind> for lgsp_config::KeyKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Trial => lgsp_config::KeyKind::Trial,
            Kind::Production => lgsp_config::KeyKind::Production,
        }
    }
}

/// `--overlap`: a duration as the config writes one, or zero ("0", "0s": the current keys end now).
fn overlap(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    if !digits.is_empty()
        && digits.chars().all(|c| c == '0')
        && matches!(unit, "" | "ms" | "s" | "m" | "h" | "d")
    {
        return Ok(std::time::Duration::ZERO);
    }
    lgsp_config::parse_duration(s)
}

/// `error: …` on stderr, exit 2: the command line (or a profile) cannot be used.
fn usage(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    match Cli::parse()
        .command
        .unwrap_or(Command::Run { config: None })
    {
        Command::Run { config } => cmd::run::run(config.as_deref()),
        Command::Certs {
            command: CertsCommand::Init { dir, force },
        } => cmd::certs::init(dir, force),
        Command::Certs {
            command:
                CertsCommand::Csr {
                    hop,
                    dns,
                    organisation,
                    algorithm,
                    out,
                    identity_prefix,
                },
        } => cmd::certs::csr(&cmd::certs::HopRequest {
            identity: &hop,
            names: &dns,
            organisation: organisation.as_deref(),
            algorithm: match algorithm {
                Algorithm::EcdsaP256 => lgsp_tls::csr::KeyAlgorithm::EcdsaP256,
                Algorithm::Rsa2048 => lgsp_tls::csr::KeyAlgorithm::Rsa2048,
                Algorithm::Rsa3072 => lgsp_tls::csr::KeyAlgorithm::Rsa3072,
            },
            out: &out,
            identity_prefix: &identity_prefix,
        }),
        Command::CheckConfig {
            file,
            connect,
            timeout,
        } => cmd::check_config::check(
            &file,
            connect.then(|| std::time::Duration::from_secs(timeout.max(1))),
        ),
        Command::Keys {
            command:
                KeysCommand::Csr {
                    agency,
                    name,
                    algorithm,
                    out,
                    identity_prefix,
                },
        } => cmd::keys::csr(
            &agency,
            name.as_deref(),
            match algorithm {
                Algorithm::EcdsaP256 => lgsp_tls::csr::KeyAlgorithm::EcdsaP256,
                Algorithm::Rsa2048 => lgsp_tls::csr::KeyAlgorithm::Rsa2048,
                Algorithm::Rsa3072 => lgsp_tls::csr::KeyAlgorithm::Rsa3072,
            },
            &out,
            &identity_prefix,
        ),
        Command::Keys {
            command: KeysCommand::New { agency, kind },
        } => cmd::keys::new(&agency, kind.into()),
        Command::Keys {
            command:
                KeysCommand::Rotate {
                    config,
                    agency,
                    kind,
                    overlap,
                    label,
                    write,
                },
        } => cmd::keys::rotate(&cmd::keys::Rotation {
            config: &config,
            agency: &agency,
            kind: kind.into(),
            overlap,
            label: label.as_deref(),
            write,
        }),
        Command::Sign {
            key,
            cert,
            p12,
            password_env,
            pss,
            out,
            packet,
        } => {
            let source = match (&key, &cert, &p12) {
                (Some(key), Some(cert), None) => cmd::sign::KeySource::Pem { key, cert },
                (None, None, Some(file)) => cmd::sign::KeySource::Pkcs12 {
                    file,
                    password_env: password_env.as_deref(),
                },
                _ => return usage("sign with --key and --cert, or with --p12"),
            };
            cmd::sign::sign(&source, pss, &packet, out.as_deref())
        }
        Command::Verify {
            config,
            ca,
            crl,
            agency,
            received,
            json,
            files,
        } => cmd::sign::verify(&cmd::sign::VerifyAsk {
            config: config.as_deref(),
            ca: &ca,
            crls: &crl,
            agency: agency.as_deref(),
            received: received.as_deref(),
            json,
            files: &files,
        }),
        Command::Probe {
            connection,
            sample,
            message_type,
            json,
        } => match connection.options(sample, message_type) {
            Ok(opts) => cmd::probe::probe(&opts, json),
            Err(e) => usage(e),
        },
        Command::Import {
            file,
            message_type,
            out,
            sheet,
            schemas,
            json,
            send,
            connection,
        } => {
            let send = match send.then(|| connection.options(None, None)).transpose() {
                Ok(s) => s,
                Err(e) => return usage(e),
            };
            cmd::import::import(&cmd::import::Ask {
                file: &file,
                message_type: &message_type,
                out: &out,
                sheet: sheet.as_deref(),
                schemas: schemas.as_deref(),
                json,
                send,
            })
        }
        Command::Journal {
            config,
            url,
            command,
        } => {
            let ask = match command {
                JournalCommand::Verify => cmd::journal::Ask::Verify,
                JournalCommand::RebuildIndex => cmd::journal::Ask::RebuildIndex,
                JournalCommand::Export {
                    from,
                    to,
                    out,
                    sign,
                    key,
                    cert,
                    p12,
                    password_env,
                } => {
                    let signer = match (sign, key, cert, p12) {
                        (false, ..) => None,
                        (true, Some(key), Some(cert), None) => {
                            Some(cmd::sign::KeyFiles::Pem { key, cert })
                        }
                        (true, None, None, Some(file)) => {
                            Some(cmd::sign::KeyFiles::Pkcs12 { file, password_env })
                        }
                        _ => return usage("--sign needs --key and --cert, or --p12"),
                    };
                    cmd::journal::Ask::Export {
                        from,
                        to,
                        out,
                        signer,
                    }
                }
                JournalCommand::Migrate => cmd::journal::Ask::Migrate,
                JournalCommand::Backup { file } => cmd::journal::Ask::Backup { file },
                JournalCommand::Report {
                    month,
                    end_to_end,
                    receipts,
                    json,
                } => cmd::journal::Ask::Report {
                    month,
                    json,
                    receipts: end_to_end.then_some(receipts),
                },
            };
            cmd::journal::journal(config.as_deref(), url, ask)
        }
        Command::Reconcile {
            connection,
            from,
            to,
            sent,
            end_to_end,
            receipts,
            json,
        } => match connection.options(None, None) {
            Ok(opts) => cmd::reconcile::reconcile(
                &opts,
                &cmd::reconcile::Ask {
                    from: &from,
                    to: &to,
                    sent: &sent,
                    json,
                    receipts: end_to_end.then_some(receipts.as_str()),
                },
            ),
            Err(e) => usage(e),
        },
        Command::Validate {
            schema_only,
            message_type,
            schemas,
            json,
            files,
        } => cmd::validate::validate(&cmd::validate::Ask {
            schema_only,
            message_type: message_type.as_deref(),
            schemas: schemas.as_deref(),
            json,
            files: &files,
        }),
    }
}
