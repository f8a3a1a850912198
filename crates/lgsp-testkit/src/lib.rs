//! Test fixtures shared by the end-to-end tests: a generated PKI with named identities (`AGENCY_OK`,
//! `AGENCY_OTHER`, `AGENCY_WRONG_CA`, `AGENCY_EXPIRED`, `AGENCY_REVOKED`, `AGENCY_NO_IDENTITY`), configs for each
//! hop on port 0, a whole agency → LGSP → NDXP → emulator chain, and mTLS clients (HTTP/1.1 or HTTP/2, or a bare
//! handshake).
#![forbid(unsafe_code)]

pub mod backends;
pub mod outage;
pub mod process;
pub use backends::{
    amqp_channel, durable_queue, eventually, metric, test_broker, test_stream, unique_name,
};
pub use outage::{
    JournalLock, PgDatabase, Relay, SmallDisk, journal_read_only, journal_url_in, queued,
    with_chain,
};
pub use process::{Haproxy, Proc, free_port, sh, tool, write};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lgsp_proxy::Gateway;
use lgsp_tls::devpki::{self, DevCa, LeafSpec};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Agency with a valid certificate and its own keys (000.00.00.H29).
pub const AGENCY_OK: &str = "agency-000.00.00.H29";
/// Another valid agency (000.00.00.H26).
pub const AGENCY_OTHER: &str = "agency-000.00.00.H26";
/// A trial agency (000.00.00.G09).
pub const AGENCY_TRIAL: &str = "agency-000.00.00.G09";
/// A second LGSP (files `lgsp2-server.*`, `lgsp2-client.*`), known to the NDXP by this identity.
pub const LGSP2_IDENTITY: &str = "LGSP-2";
/// H26's certificate listed in the CRL.
pub const AGENCY_REVOKED: &str = "agency-000.00.00.H26-revoked";
/// H29's identity on a certificate that expired yesterday.
pub const AGENCY_EXPIRED: &str = "agency-expired";
/// H29's identity from a CA the gateway does not trust.
pub const AGENCY_WRONG_CA: &str = "agency-wrong-ca";
/// A certificate of the trusted CA that names nobody: no SAN URI, an empty Subject CN.
pub const AGENCY_NO_IDENTITY: &str = "agency-no-identity";
/// A second certificate of H29, valid today, and `ca.crl-spare-revoked.pem`: the CRL that also revokes it.
pub const AGENCY_SPARE: &str = "agency-000.00.00.H29-spare";
pub const CRL_REVOKING_SPARE: &str = "ca.crl-spare-revoked.pem";
/// A certificate of the trusted CA with the dev LGSP's name as Subject CN and no SAN: not the LGSP.
pub const IMPOSTOR_CN: &str = "impostor-cn";
/// A certificate of the trusted CA whose SAN URI is the dev LGSP's in upper case (`URN:LGSP:ID:LGSP-DEV`).
pub const IMPOSTOR_UPPER_SAN: &str = "impostor-upper-san";

/// Signing key files `<this>-000.00.00.H29.{pem,key}`: an agency signing certificate the mTLS CA issued.
pub const SIGNER_FROM_MTLS_CA: &str = "signing-mtls-ca";

/// Certificates with no SAN URI, their holder named in the subject only: H29's (`gov-h29`, and `gov-h29-renewed`
/// with the same subject and a new key), H26's (`gov-h26`), and one from another CA (`other-ca.pem`) whose subject
/// is H29's (`gov-h29-lookalike`).
pub const GOV_H29: &str = "gov-h29";
pub const GOV_H29_RENEWED: &str = "gov-h29-renewed";
pub const GOV_H26: &str = "gov-h26";
pub const GOV_H29_LOOKALIKE: &str = "gov-h29-lookalike";
pub const GOV_H29_NAME: &str = "Sở Nội vụ thành phố Hà Nội";
pub const GOV_H26_NAME: &str = "Văn phòng UBND tỉnh";
pub const OTHER_CA: &str = "other-ca.pem";
pub const OTHER_CA_CRL: &str = "other-ca.crl.pem";

pub const H29: &str = "000.00.00.H29";
pub const H26: &str = "000.00.00.H26";

/// A PKI in a temporary directory: the dev PKI plus the negative identities.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let report = devpki::init(dir.path()).expect("dev PKI");
        let now = time::OffsetDateTime::now_utc();
        report
            .ca
            .issue(&LeafSpec::identity(H29).valid_between(
                now - time::Duration::days(30),
                now - time::Duration::days(1),
            ))
            .and_then(|l| l.write(dir.path(), AGENCY_EXPIRED))
            .expect("expired identity");
        // A second LGSP, so an NDXP can serve two of them.
        report
            .ca
            .issue(&LeafSpec::localhost_server("lgsp2.lgsp-gateway.localhost"))
            .and_then(|l| l.write(dir.path(), "lgsp2-server"))
            .expect("second LGSP server");
        report
            .ca
            .issue(&LeafSpec::identity(LGSP2_IDENTITY))
            .and_then(|l| l.write(dir.path(), "lgsp2-client"))
            .expect("second LGSP client");
        report
            .ca
            .issue(&LeafSpec::client(""))
            .and_then(|l| l.write(dir.path(), AGENCY_NO_IDENTITY))
            .expect("identity-less certificate");
        report
            .ca
            .issue(&LeafSpec::client(devpki::DEV_LGSP_IDENTITY))
            .and_then(|l| l.write(dir.path(), IMPOSTOR_CN))
            .expect("CN-only impostor");
        report
            .ca
            .issue(
                &LeafSpec::client(devpki::DEV_LGSP_IDENTITY).with_uri(&format!(
                    "{}{}",
                    devpki::DEV_URI_PREFIX.to_uppercase(),
                    devpki::DEV_LGSP_IDENTITY
                )),
            )
            .and_then(|l| l.write(dir.path(), IMPOSTOR_UPPER_SAN))
            .expect("upper-case SAN impostor");
        let spare = report
            .ca
            .issue(&LeafSpec::identity(H29))
            .expect("spare H29 certificate");
        spare
            .write(dir.path(), AGENCY_SPARE)
            .expect("spare H29 files");
        let mut serials: Vec<&[u8]> = report.revoked.iter().map(Vec::as_slice).collect();
        serials.push(&spare.serial);
        let crl = report
            .ca
            .crl(&serials, 365)
            .expect("CRL revoking the spare");
        std::fs::write(dir.path().join(CRL_REVOKING_SPARE), crl).expect("CRL file");
        // A signing certificate of H29 that the mTLS CA issued: trusted for connections, never for signatures.
        report
            .ca
            .issue(&LeafSpec::signer(H29).with_uri(&format!("{}{H29}", devpki::DEV_URI_PREFIX)))
            .and_then(|l| l.write(dir.path(), &format!("{SIGNER_FROM_MTLS_CA}-{H29}")))
            .expect("signer from the mTLS CA");
        // Certificates as a government CA issues them: the organisation in the subject, no SAN URI; one renewed
        // (same subject, new key).
        for (name, file) in [
            (GOV_H29_NAME, GOV_H29),
            (GOV_H29_NAME, GOV_H29_RENEWED),
            (GOV_H26_NAME, GOV_H26),
        ] {
            report
                .ca
                .issue(&LeafSpec::client(name))
                .and_then(|l| l.write(dir.path(), file))
                .expect("government-style certificate");
        }
        let other = DevCa::generate("Some other CA").expect("other CA");
        std::fs::write(dir.path().join(OTHER_CA), other.cert_pem()).expect("other CA file");
        // A hop with CRLs refuses a client CA's certificates whose revocation it cannot tell: the other CA's CRL.
        std::fs::write(
            dir.path().join(OTHER_CA_CRL),
            other.crl(&[], 365).expect("other CA's CRL"),
        )
        .expect("other CA's CRL file");
        other
            .issue(&LeafSpec::client(GOV_H29_NAME))
            .and_then(|l| l.write(dir.path(), GOV_H29_LOOKALIKE))
            .expect("look-alike");
        other
            .issue(&LeafSpec::identity(H29))
            .and_then(|l| l.write(dir.path(), AGENCY_WRONG_CA))
            .expect("wrong-CA identity");
        TestPki { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A journal of its own for each config written (`sqlite://DIR/journal-N.db`), so gateways of one test never
    /// share one, and a reloaded text names the same file again.
    pub fn journal_url(&self) -> String {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!(
            "sqlite://{}",
            self.dir.path().join(format!("journal-{n}.db")).display()
        )
    }

    /// A client TLS config presenting `identity` (a file stem above), trusting the dev CA.
    pub fn client_tls(&self, identity: Option<&str>, alpn: &[&[u8]]) -> rustls::ClientConfig {
        self.client_tls_versions(identity, alpn, rustls::DEFAULT_VERSIONS)
    }

    /// As [`Self::client_tls`], offering only `versions`.
    pub fn client_tls_versions(
        &self,
        identity: Option<&str>,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.path("ca.pem")).expect("ca.pem") {
            roots.add(c.expect("ca cert")).expect("root");
        }
        let builder = rustls::ClientConfig::builder_with_provider(lgsp_tls::provider())
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots);
        let mut cfg = match identity {
            Some(id) => {
                let chain = CertificateDer::pem_file_iter(self.path(&format!("{id}.pem")))
                    .expect("cert")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("cert parse");
                let key =
                    PrivateKeyDer::from_pem_file(self.path(&format!("{id}.key"))).expect("key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client auth")
            }
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        cfg
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// The `[admin]`, `[log]`, `[pki]`, `[journal]` and `[signing]` head of a test config: everything on port 0;
/// approvals signed by the dev signing CA, last month's accepted until 40 days after it ([`signed_approval`]), their
/// profiles not checked against the journal (a test that wants it sets `check_coverage = true`).
fn head(pki: &TestPki) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"5s\"\ntoken_file = \"{dir}/admin.token\"\n[log]\nlevel = \"warn\"\n[pki]\ndir = \"{dir}\"\ndev_autogen = false\n[journal]\nurl = \"{journal}\"\nmin_free_disk = \"1MiB\"\n[signing]\nca = [\"{dir}/signing-ca.pem\"]\napproval_lateness = \"40d\"\ncheck_coverage = false\n",
        dir = pki.dir().display(),
        journal = pki.journal_url(),
    )
}

fn server_tls(table: &str, server: &str) -> String {
    format!(
        "[{table}]\ncert = \"{server}.pem\"\nkey = \"{server}.key\"\nclient_ca = [\"ca.pem\"]\ncrls = [\"ca.crl.pem\"]\nhandshake_timeout = \"5s\"\n"
    )
}

/// The agencies of the default config (same dev keys).
pub fn agencies_toml() -> String {
    let all = lgsp_config::EMBEDDED;
    all.find("\n[[agency]]\n")
        .map(|i| all[i..].to_owned())
        .unwrap_or_default()
}

/// Config of a process that only runs the emulator.
pub fn emulator_config(pki: &TestPki) -> String {
    format!(
        "{}[emulator]\nlisten = \"127.0.0.1:0\"\n{}",
        head(pki),
        server_tls("emulator.tls", "emulator-server")
    )
}

/// Config of one hop forwarding `{prefix}/{MessageType}` to `upstream` + `{rewrite}/{MessageType}`; `peers` are
/// identities, or inline tables (`{ id = "…", sha256 = "…" }`) written as given.
pub fn hop_config(
    pki: &TestPki,
    name: &str,
    prefix: &str,
    upstream: SocketAddr,
    rewrite: &str,
    peers: &[&str],
) -> String {
    let mut s = head(pki);
    let peers = peers
        .iter()
        // An inline table (`{ id = …, sha256 = … }`) as written, a bare identity quoted.
        .map(|p| {
            if p.starts_with('{') {
                (*p).to_owned()
            } else {
                format!("\"{p}\"")
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let role = if name.starts_with("ndxp") {
        "ndxp"
    } else {
        "lgsp"
    };
    s.push_str(&format!("[[hop]]\nname = \"{name}\"\nrole = \"{role}\"\nlisten = \"127.0.0.1:0\"\npeers = [{peers}]\n"));
    s.push_str(&server_tls("hop.tls", &format!("{name}-server")));
    s.push_str(&format!("[hop.upstream_tls]\ncert = \"{name}-client.pem\"\nkey = \"{name}-client.key\"\nca = [\"ca.pem\"]\n"));
    for t in ["HoSoCBCCVC", "BienChe", "PheDuyetDuLieu", "BienDong"] {
        s.push_str(&format!(
            "[[hop.route]]\nname = \"{t}\"\nmethods = [\"POST\", \"PUT\"]\nprefix = \"{prefix}/{t}\"\nupstream = \"https://localhost:{port}\"\nrewrite = \"{rewrite}/{t}\"\ntimeout = \"5s\"\nagencies = [\"*\"]\nmessage_type = \"{t}\"\nmax_body_bytes = 1048576\n",
            port = upstream.port()
        ));
    }
    s.push_str(&format!(
        "[[hop.route]]\nname = \"BienNhan\"\nmethods = [\"GET\"]\nprefix = \"{prefix}/BienNhan\"\nupstream = \"https://localhost:{port}\"\nrewrite = \"{rewrite}/BienNhan\"\ntimeout = \"5s\"\nagencies = [\"*\"]\nowner = \"/agency\"\n",
        port = upstream.port()
    ));
    s.push_str(&format!(
        "[[hop.route]]\nname = \"messages\"\nmethods = [\"GET\"]\nprefix = \"{prefix}/messages\"\nmessages = true\nagencies = [\"*\"]\n"
    ));
    s.push_str(&format!(
        "[[hop.route]]\nname = \"validate\"\nmethods = [\"POST\"]\nprefix = \"{prefix}/validate\"\ndry_run = true\nagencies = [\"*\"]\nmax_body_bytes = 1048576\n"
    ));
    s.push_str(&agencies_toml());
    s
}

/// `text` (a [`hop_config`]) with its hop behind a load balancer at 127.0.0.1 that sends the PROXY protocol, and
/// `http_extra` (more `[hop.http]` lines, or nothing).
pub fn behind_balancer(text: &str, http_extra: &str) -> String {
    text.replacen(
        "[hop.upstream_tls]",
        &format!(
            "[hop.http]\nproxy_protocol = {{ from = [\"127.0.0.1/32\"] }}\n{http_extra}\n[hop.upstream_tls]"
        ),
        1,
    )
}

/// A file of the sample corpus, e.g. `valid/HoSoCBCCVC-02-toi-thieu.xml`.
pub fn sample(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas/cbccvc/samples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Last month's approval (`PheDuyetDuLieu-01-hai-ho-so`, XML or JSON), approved on its last day at noon (Vietnam
/// time) and signed by the dev PKI's approving person and agency H29: accepted by every test config today.
pub fn signed_approval(pki: &TestPki, json: bool) -> String {
    approval_signed_with(
        pki,
        json,
        |text| text,
        &["signing-person", "signing-agency"],
    )
}

/// As [`signed_approval`], with `edit` applied to the unsigned packet, then signed by the dev signing
/// certificates named (`signing-person`, `signing-agency`: of H29), in order.
pub fn approval_signed_with(
    pki: &TestPki,
    json: bool,
    edit: impl Fn(String) -> String,
    signers: &[&str],
) -> String {
    let now = time::OffsetDateTime::now_utc().to_offset(lgsp_sign::approval::VIETNAM);
    let first = now.date().replace_day(1).expect("day 1");
    let last = first.previous_day().expect("last month");
    let month = format!("{:04}-{:02}", last.year(), u8::from(last.month()));
    let at = format!("{month}-{:02}T12:00:00+07:00", last.day());
    let key = |who: &str| {
        let read = |ext: &str| {
            std::fs::read(pki.path(&format!("{who}-{H29}.{ext}"))).expect("dev signing key")
        };
        lgsp_sign::xml::SigningKey::from_pem(&read("key"), &read("pem"), false)
            .expect("signing key")
    };
    let keys: Vec<lgsp_sign::xml::SigningKey> = signers.iter().map(|w| key(w)).collect();
    let base = sample(if json {
        "valid/PheDuyetDuLieu-01-hai-ho-so.json"
    } else {
        "valid/PheDuyetDuLieu-01-hai-ho-so.xml"
    })
    .replace("\"2026-10\"", &format!("\"{month}\""))
    .replace(">2026-10<", &format!(">{month}<"))
    .replace("2026-10-31T16:30:00+07:00", &at);
    if json {
        let mut value: serde_json::Value = serde_json::from_str(&base).expect("json");
        if let Some(o) = value
            .get_mut("PheDuyetDuLieu")
            .and_then(serde_json::Value::as_object_mut)
        {
            o.remove(lgsp_sign::jws::FIELD);
        }
        let text = edit(serde_json::to_string_pretty(&value).expect("text"));
        keys.iter().fold(text, |t, k| {
            lgsp_sign::jws::sign_text(&t, k).expect("signs")
        })
    } else {
        let start = base.find("<ds:Signature").expect("a signature");
        let end = base.rfind("</ds:Signature>").expect("its end") + "</ds:Signature>".len();
        let unsigned = edit(format!("{}{}", &base[..start], &base[end..]));
        keys.iter()
            .fold(unsigned, |t, k| lgsp_sign::xml::sign(&t, k).expect("signs"))
    }
}

/// The hop-signature headers (RFC 9421) a relaying gateway whose client certificate is `identity` (a file stem
/// of the PKI, e.g. `lgsp-client`) sends with `method url` and `body`: `content-digest`, `signature-input`,
/// `signature`, and `x-lgsp-message-id` when `headers` has none. `headers` are the request's others (its
/// `x-lgsp-client`).
pub fn peer_signature(
    pki: &TestPki,
    identity: &str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<(String, String)> {
    let cert = CertificateDer::pem_file_iter(pki.path(&format!("{identity}.pem")))
        .expect("cert")
        .next()
        .expect("a certificate")
        .expect("cert parse");
    let id =
        lgsp_tls::PeerIdentity::from_certificate(&cert, lgsp_config::DEFAULT_IDENTITY_URI_PREFIX)
            .expect("identity")
            .id;
    let pem = std::fs::read(pki.path(&format!("{identity}.key"))).expect("key");
    let key = lgsp_sign::http::HopKey::from_pem(&pem, &id).expect("hop key");
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| (*v).to_owned())
    };
    let mut out = Vec::new();
    let message_id = get("x-lgsp-message-id").unwrap_or_else(|| {
        let id = uuid::Uuid::now_v7().to_string();
        out.push(("x-lgsp-message-id".to_owned(), id.clone()));
        id
    });
    let digest = lgsp_sign::http::content_digest(body);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let signed = key
        .sign(
            &lgsp_sign::http::Covered {
                method,
                target_uri: url,
                content_digest: &digest,
                message_id: &message_id,
                client: &get("x-lgsp-client").unwrap_or_default(),
            },
            now,
        )
        .expect("sign");
    out.push(("content-digest".to_owned(), digest));
    out.push(("signature-input".to_owned(), signed.input));
    out.push(("signature".to_owned(), signed.signature));
    out
}

/// Every record of the journal at `url`, oldest first, as `journal export` writes them (one JSON object each).
pub async fn journal_records(url: &str) -> Vec<serde_json::Value> {
    let journal = lgsp_journal::Journal::open_reader(url)
        .await
        .expect("journal");
    let mut out = Vec::new();
    journal.export(0, i64::MAX, &mut out).await.expect("export");
    String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .collect()
}

/// The records of a running gateway's journal once `ready` holds for them (up to 10 s): such a gateway commits what
/// it answered within milliseconds, not at once (SQLite: its redo log holds it until then), and another
/// connection reads what it committed.
pub async fn journal_records_once(
    url: &str,
    what: &str,
    ready: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let records = journal_records(url).await;
        if ready(&records) {
            return records;
        }
        assert!(
            std::time::Instant::now() < until,
            "the journal at {url} never held {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Verifies again a relaying hop's signature as a journal record keeps it (`record.hop_signature` of an export
/// line) with the public key and identity of the certificate in `cert_pem` alone; `overrides` replace covered values (to show a
/// record naming something else fails).
pub fn recorded_hop_signature_verifies(
    sig: &serde_json::Value,
    cert_pem: &Path,
    overrides: &[(&str, &str)],
) -> Result<(), String> {
    let cert = CertificateDer::pem_file_iter(cert_pem)
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no certificate")?
        .map_err(|e| e.to_string())?;
    let identity =
        lgsp_tls::PeerIdentity::from_certificate(&cert, lgsp_config::DEFAULT_IDENTITY_URI_PREFIX)
            .map_err(|e| e.to_string())?;
    let text = |k: &str| {
        overrides
            .iter()
            .find(|(o, _)| *o == k)
            .map(|(_, v)| (*v).to_owned())
            .unwrap_or_else(|| sig["covered"][k].as_str().unwrap_or_default().to_owned())
    };
    let (method, target, digest, id, client) = (
        text("@method"),
        text("@target-uri"),
        text("content-digest"),
        text("x-lgsp-message-id"),
        text("x-lgsp-client"),
    );
    lgsp_sign::http::verify(
        &identity.spki,
        &identity.id,
        &lgsp_sign::http::Covered {
            method: &method,
            target_uri: &target,
            content_digest: &digest,
            message_id: &id,
            client: &client,
        },
        sig["signature_input"].as_str(),
        sig["signature"].as_str(),
        sig["created"].as_i64().unwrap_or_default(),
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Parses a test config (relative paths resolve in the PKI directory).
pub fn parse(pki: &TestPki, text: &str) -> lgsp_config::Config {
    lgsp_config::parse(text, "test.toml", pki.dir())
        .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{text}"))
}

/// An LGSP hop config before `upstream`, with `route_extra` appended to every route (e.g. `rate = "1/h"`) and
/// `extra` appended to the file (e.g. a `[ratelimit]` section).
pub fn lgsp_config_with(
    pki: &TestPki,
    upstream: SocketAddr,
    route_extra: &str,
    extra: &str,
) -> String {
    let base = hop_config(pki, "lgsp", "/lgsp/v1", upstream, "/ndxp/v1", &[]);
    let mut text = base.replace(
        "max_body_bytes = 1048576\n",
        &format!("max_body_bytes = 1048576\n{route_extra}\n"),
    );
    text.push('\n');
    text.push_str(extra);
    text
}

/// `https://localhost:PORT{path}` of the hop named `hop` of a gateway.
pub fn hop_url(g: &Gateway, hop: &str, path: &str) -> String {
    format!(
        "https://localhost:{}{path}",
        g.hop_addr(hop).map_or(0, |a| a.port())
    )
}

/// agency → LGSP → NDXP → emulator, each its own [`Gateway`] on port 0.
pub struct Chain {
    pub pki: TestPki,
    pub emulator: Gateway,
    pub ndxp: Gateway,
    /// The NDXP hop's journal (what it received, with the LGSP's signatures).
    pub ndxp_journal: String,
    pub lgsp: Gateway,
}

impl Chain {
    pub async fn start() -> Chain {
        Self::start_with("", "").await
    }

    /// A chain whose LGSP hop has `route_extra` on every route and `extra` in its config.
    pub async fn start_with(route_extra: &str, extra: &str) -> Chain {
        let pki = TestPki::new();
        let emulator = Gateway::start(&parse(&pki, &emulator_config(&pki)))
            .await
            .expect("emulator");
        let emu_addr = emulator
            .emulator
            .as_ref()
            .map(|e| e.0)
            .expect("emulator addr");
        let ndxp_text = hop_config(
            &pki,
            "ndxp",
            "/ndxp/v1",
            emu_addr,
            "/cbccvc/v1",
            &["LGSP-DEV"],
        );
        let ndxp = Gateway::start(&parse(&pki, &ndxp_text))
            .await
            .expect("ndxp");
        let ndxp_addr = ndxp.hop_addr("ndxp").expect("ndxp addr");
        let lgsp = Gateway::start(&parse(
            &pki,
            &lgsp_config_with(&pki, ndxp_addr, route_extra, extra),
        ))
        .await
        .expect("lgsp");
        Chain {
            pki,
            emulator,
            ndxp,
            ndxp_journal: journal_url_in(&ndxp_text),
            lgsp,
        }
    }

    /// `https://localhost:PORT` of the LGSP hop.
    pub fn lgsp_url(&self, path: &str) -> String {
        hop_url(&self.lgsp, "lgsp", path)
    }

    pub async fn shutdown(self) {
        self.lgsp.shutdown().await;
        self.ndxp.shutdown().await;
        self.emulator.shutdown().await;
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// An mTLS HTTP client for one identity and one protocol.
#[derive(Clone)]
pub struct TestClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl TestClient {
    /// `http2 = false` offers only http/1.1 by ALPN; `true` only h2.
    pub fn new(pki: &TestPki, identity: Option<&str>, http2: bool) -> Self {
        // hyper-rustls sets ALPN itself from the protocols enabled below.
        let tls = pki.client_tls(identity, &[]);
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only();
        let https = if http2 {
            b.enable_http2().wrap_connector(http)
        } else {
            b.enable_http1().wrap_connector(http)
        };
        let mut cb = Client::builder(TokioExecutor::new());
        cb.http2_only(http2);
        TestClient {
            client: cb.build(https),
        }
    }

    /// An HTTP/1.1 client that opens a new connection, with its own TLS handshake, for every request (as an
    /// agency's batch job does): what an L4 balancer spreads over its servers.
    pub fn fresh_connections(pki: &TestPki, identity: Option<&str>) -> Self {
        let tls = pki.client_tls(identity, &[]);
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let mut cb = Client::builder(TokioExecutor::new());
        cb.pool_max_idle_per_host(0);
        TestClient {
            client: cb.build(https),
        }
    }

    /// The status of one request; panics when the exchange itself fails (tests only).
    pub async fn status(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> u16 {
        self.send(method, url, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
            .status
            .as_u16()
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Answer, String> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| e.to_string())?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| error_chain(&e))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Answer {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut s = e.source();
    while let Some(x) = s {
        out.push_str(": ");
        out.push_str(&x.to_string());
        s = x.source();
    }
    out
}

/// Connects with `tls`, sends a request and returns the first error seen: the handshake's, or the alert a
/// TLS 1.3 server sends after the client believes the handshake done. `Ok` means the server answered.
pub async fn tls_exchange(addr: SocketAddr, tls: rustls::ClientConfig) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    tls_exchange_on(tcp, tls).await
}

/// [`tls_exchange`] on a connection already open (after whatever the test wrote on it first).
pub async fn tls_exchange_on(
    tcp: tokio::net::TcpStream,
    tls: rustls::ClientConfig,
) -> Result<String, String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| error_chain(&e))?;
    stream
        .write_all(
            b"GET /lgsp/v1/BienNhan/x HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
        )
        .await
        .map_err(|e| error_chain(&e))?;
    let mut buf = Vec::new();
    stream
        .read_to_end(&mut buf)
        .await
        .map_err(|e| error_chain(&e))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// One HTTP/2 connection held open (no pool, no reconnect): what the gateway does to it, the test sees.
pub struct H2Connection {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl H2Connection {
    /// Connects to `addr` over TLS as `identity` (a file stem of `pki`), offering h2 only.
    pub async fn open(pki: &TestPki, addr: SocketAddr, identity: &str) -> Result<Self, String> {
        let tls = pki.client_tls(Some(identity), &[b"h2"]);
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| error_chain(&e))?;
        let (sender, conn) = hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(|e| error_chain(&e))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(H2Connection { sender, driver })
    }

    /// The status of a GET of `path` on this connection.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<u16, String> {
        let mut b = Request::get(format!("https://localhost{path}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        self.sender
            .send_request(req)
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| error_chain(&e))
    }

    /// Whether the gateway closes the connection within `within`.
    pub async fn closed_within(self, within: std::time::Duration) -> bool {
        tokio::time::timeout(within, self.driver).await.is_ok()
    }
}

/// A loopback address nothing listens on (bound then released).
pub async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

/// An upstream that signals `arrived` when a request reaches it and answers 200 only once `release` is notified:
/// lets tests hold a request in flight (drain) or never answer (timeout) without sleeping.
pub struct HeldUpstream {
    pub addr: SocketAddr,
    pub arrived: Arc<tokio::sync::Notify>,
    pub release: Arc<tokio::sync::Notify>,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

impl HeldUpstream {
    pub async fn start(pki: &TestPki) -> HeldUpstream {
        let arrived = Arc::new(tokio::sync::Notify::new());
        let release = Arc::new(tokio::sync::Notify::new());
        let (a, r) = (arrived.clone(), release.clone());
        let upstream = Upstream::start(pki, move |_req| {
            let (a, r) = (a.clone(), r.clone());
            async move {
                a.notify_one();
                r.notified().await;
                http::Response::new(lgsp_proxy::body::full("released"))
            }
        })
        .await;
        HeldUpstream {
            addr: upstream.addr,
            arrived,
            release,
            _shutdown: upstream._shutdown,
        }
    }
}

/// An upstream over the emulator's TLS that answers every request with `answer`.
pub struct Upstream {
    pub addr: SocketAddr,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

impl Upstream {
    pub async fn start<F, Fut>(pki: &TestPki, answer: F) -> Upstream
    where
        F: Fn(Request<lgsp_proxy::body::Body>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = http::Response<lgsp_proxy::body::Body>> + Send + 'static,
    {
        let cfg = parse(pki, &emulator_config(pki));
        let tls = cfg.emulator.expect("emulator section").tls;
        let spec = lgsp_proxy::ListenerSpec::new(
            "upstream",
            &lgsp_config::HttpConfig::default(),
            std::time::Duration::from_secs(5),
        );
        let svc = tower::service_fn(move |req: Request<lgsp_proxy::body::Body>| {
            let answer = answer.clone();
            async move { Ok::<_, std::convert::Infallible>(answer(req).await) }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::watch::channel(false);
        let state = lgsp_proxy::ListenerState {
            tls: lgsp_tls::server_tls(&tls).expect("server config"),
            identity_uri_prefix: tls.identity_uri_prefix.clone(),
            pins: Default::default(),
            handshake_timeout: tls.handshake_timeout,
            http: lgsp_config::HttpConfig::default(),
            service: tower::util::BoxCloneSyncService::new(svc),
            knows: Arc::new(|_| true),
            retired: lgsp_proxy::Retired::default(),
        };
        let live = Arc::new(arc_swap::ArcSwap::from_pointee(state));
        lgsp_proxy::spawn_tls_listener(listener, spec, live, lgsp_metrics_handle(), rx);
        Upstream {
            addr,
            _shutdown: tx,
        }
    }
}

fn lgsp_metrics_handle() -> Arc<lgsp_metrics::Metrics> {
    lgsp_metrics::Metrics::new().expect("metrics")
}
