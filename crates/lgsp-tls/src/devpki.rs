//! The dev PKI: a CA, its CRL, a server certificate per hop, client certificates for the hops and for three
//! agencies (one also revoked). Made with rcgen; also the building blocks the test fixtures use.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::load::write_private;

/// The identity URI prefix the dev PKI writes into SANs (same as the config default).
pub const DEV_URI_PREFIX: &str = lgsp_config::DEFAULT_IDENTITY_URI_PREFIX;
/// The dev agencies: their codes (mã định danh).
pub const DEV_AGENCIES: &[&str] = &["000.00.00.H29", "000.00.00.H26", "000.00.00.G09"];
/// The dev agency that also gets a revoked certificate (`agency-<code>-revoked.pem`).
pub const DEV_REVOKED_AGENCY: &str = "000.00.00.H26";
/// Identity of the LGSP hop's client certificate (what the NDXP hop lists in `peers`).
pub const DEV_LGSP_IDENTITY: &str = "LGSP-DEV";
/// Identity of the NDXP hop's client certificate.
pub const DEV_NDXP_IDENTITY: &str = "NDXP-DEV";
/// The agency of the dev signing certificates, and the person who approves its data (người phê duyệt).
pub const DEV_SIGNING_AGENCY: &str = "000.00.00.H29";
pub const DEV_SIGNING_PERSON: &str = "Nguyễn Văn An";

#[derive(Debug, thiserror::Error)]
pub enum DevPkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A certificate authority that issues leaves and CRLs.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

/// What a leaf certificate says.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub server: bool,
    pub client: bool,
    /// A signing certificate (approvals, Thông tư 06/2023): digitalSignature and nonRepudiation, no TLS use.
    pub signing: bool,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// An issued leaf: PEM certificate and key, and the serial a CRL names it by.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: Vec<u8>,
}

impl LeafSpec {
    fn base(common_name: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            common_name: common_name.to_owned(),
            uris: Vec::new(),
            dns: Vec::new(),
            ips: Vec::new(),
            server: false,
            client: false,
            signing: false,
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(825),
        }
    }

    /// A client certificate whose CN is `name`.
    pub fn client(name: &str) -> Self {
        LeafSpec {
            client: true,
            ..Self::base(name)
        }
    }

    /// A client certificate for an identity, written both as SAN URI (with the dev prefix) and CN.
    pub fn identity(id: &str) -> Self {
        Self::client(id).with_uri(&format!("{DEV_URI_PREFIX}{id}"))
    }

    /// A signing certificate whose CN is `name` (a person, or an agency with its identity added by `with_uri`).
    /// Valid from 62 days back: an approval is signed within the last days of the month it approves, so the dev
    /// keys must have been valid when last month's approval was signed.
    pub fn signer(name: &str) -> Self {
        let base = Self::base(name);
        LeafSpec {
            signing: true,
            not_before: base.not_before - Duration::days(62),
            ..base
        }
    }

    /// A server certificate for `localhost`, 127.0.0.1 and ::1.
    pub fn localhost_server(name: &str) -> Self {
        LeafSpec {
            server: true,
            dns: vec!["localhost".to_owned()],
            ips: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
            ..Self::base(name)
        }
    }

    pub fn with_uri(mut self, uri: &str) -> Self {
        self.uris.push(uri.to_owned());
        self
    }

    pub fn valid_between(mut self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
}

impl Leaf {
    pub fn cert_der(&self) -> CertificateDer<'static> {
        use rustls_pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .unwrap_or_else(|_| CertificateDer::from(Vec::new()))
    }

    /// Writes `<stem>.pem` and `<stem>.key` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), DevPkiError> {
        write_file(&dir.join(format!("{stem}.pem")), &self.cert_pem, false)?;
        write_file(&dir.join(format!("{stem}.key")), &self.key_pem, true)
    }
}

fn write_file(path: &Path, text: &str, private: bool) -> Result<(), DevPkiError> {
    let r = if private {
        write_private(path, text)
    } else {
        std::fs::write(path, text)
    };
    r.map_err(|source| DevPkiError::Io {
        path: path.to_owned(),
        source,
    })
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // A failing OS RNG leaves zeros; the counter below still keeps serials distinct within one CA.
    let _ = getrandom::fill(&mut bytes);
    bytes[0] &= 0x7f; // positive INTEGER
    bytes[0] |= 0x01; // no leading zero byte to strip
    SerialNumber::from_slice(&bytes)
}

fn ia5(s: &str) -> Result<Ia5String, rcgen::Error> {
    Ia5String::try_from(s.to_owned()).map_err(|_| {
        rcgen::Error::InvalidAsn1String(rcgen::InvalidAsn1String::Ia5String(s.to_owned()))
    })
}

impl DevCa {
    /// A new self-signed CA valid for ten years.
    pub fn generate(name: &str) -> Result<Self, DevPkiError> {
        let now = OffsetDateTime::now_utc();
        Self::generate_valid(name, now - Duration::hours(1), now + Duration::days(3650))
    }

    pub fn generate_valid(
        name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Self, DevPkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "lgsp-gateway dev PKI");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a leaf certificate with a fresh key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Leaf, DevPkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.common_name.as_str());
        params.distinguished_name = dn;
        for uri in &spec.uris {
            params.subject_alt_names.push(SanType::URI(ia5(uri)?));
        }
        for name in &spec.dns {
            params.subject_alt_names.push(SanType::DnsName(ia5(name)?));
        }
        params
            .subject_alt_names
            .extend(spec.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.signing {
            params.key_usages.push(KeyUsagePurpose::ContentCommitment);
        }
        if spec.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial.to_bytes(),
        })
    }

    /// A CRL naming `revoked` serials, valid for `days`.
    pub fn crl(&self, revoked: &[&[u8]], days: i64) -> Result<String, DevPkiError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(days),
            crl_number: SerialNumber::from(u64::try_from(now.unix_timestamp()).unwrap_or(1)),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now - Duration::minutes(5),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// What `init` wrote, and the CA that signed it (tests issue more certificates with it).
pub struct DevPkiReport {
    pub dir: PathBuf,
    pub files: Vec<String>,
    pub ca: DevCa,
    /// Serials `ca.crl.pem` lists, so a test can write a CRL that lists more.
    pub revoked: Vec<Vec<u8>>,
}

/// The file stem of an agency's dev client certificate.
pub fn agency_stem(code: &str) -> String {
    format!("agency-{code}")
}

/// True when `dir` already holds a dev PKI (its CA certificate).
pub fn exists(dir: &Path) -> bool {
    dir.join("ca.pem").is_file()
}

/// The dev admin token's file name in the PKI directory (`[admin] token_file` of the default config).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Writes a random admin token (64 hex digits, owner-only) to `path` unless one is there; whether it wrote one.
pub fn ensure_admin_token(path: &Path) -> Result<bool, DevPkiError> {
    if path.is_file() {
        return Ok(false);
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| DevPkiError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(format!("no OS randomness for the admin token: {e}")),
    })?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| DevPkiError::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    write_file(path, &format!("{}\n", hex::encode(bytes)), true)?;
    Ok(true)
}

/// Writes a complete dev PKI into `dir` (created when missing). Existing files are replaced.
pub fn init(dir: &Path) -> Result<DevPkiReport, DevPkiError> {
    std::fs::create_dir_all(dir).map_err(|source| DevPkiError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let ca = DevCa::generate("lgsp-gateway dev CA")?;
    let mut files = Vec::new();
    let mut put = |leaf: &Leaf, stem: &str| -> Result<(), DevPkiError> {
        leaf.write(dir, stem)?;
        files.push(format!("{stem}.pem"));
        files.push(format!("{stem}.key"));
        Ok(())
    };
    for hop in ["lgsp", "ndxp", "emulator"] {
        put(
            &ca.issue(&LeafSpec::localhost_server(&format!(
                "{hop}.lgsp-gateway.localhost"
            )))?,
            &format!("{hop}-server"),
        )?;
    }
    put(
        &ca.issue(&LeafSpec::identity(DEV_LGSP_IDENTITY))?,
        "lgsp-client",
    )?;
    put(
        &ca.issue(&LeafSpec::identity(DEV_NDXP_IDENTITY))?,
        "ndxp-client",
    )?;
    for code in DEV_AGENCIES {
        put(&ca.issue(&LeafSpec::identity(code))?, &agency_stem(code))?;
    }
    let revoked = ca.issue(&LeafSpec::identity(DEV_REVOKED_AGENCY))?;
    put(
        &revoked,
        &format!("{}-revoked", agency_stem(DEV_REVOKED_AGENCY)),
    )?;
    let crl = ca.crl(&[&revoked.serial], 365)?;
    write_file(&dir.join("ca.crl.pem"), &crl, false)?;
    // Signing certificates come from a CA of their own: the CA a gateway trusts for mTLS never vouches for an
    // approval's signature, nor the other way round.
    let signing_ca = DevCa::generate("lgsp-gateway dev signing CA")?;
    put(
        &signing_ca.issue(
            &LeafSpec::signer(DEV_SIGNING_AGENCY)
                .with_uri(&format!("{DEV_URI_PREFIX}{DEV_SIGNING_AGENCY}")),
        )?,
        &format!("signing-agency-{DEV_SIGNING_AGENCY}"),
    )?;
    put(
        &signing_ca.issue(&LeafSpec::signer(DEV_SIGNING_PERSON))?,
        &format!("signing-person-{DEV_SIGNING_AGENCY}"),
    )?;
    write_file(&dir.join("signing-ca.key"), &signing_ca.key_pem(), true)?;
    write_file(&dir.join("signing-ca.pem"), signing_ca.cert_pem(), false)?;
    ensure_admin_token(&dir.join(ADMIN_TOKEN_FILE))?;
    write_file(&dir.join("ca.key"), &ca.key_pem(), true)?;
    // The CA certificate last: its presence is what `exists` looks for, so a half-written PKI is redone.
    write_file(&dir.join("ca.pem"), ca.cert_pem(), false)?;
    files.extend([
        "signing-ca.key".to_owned(),
        "signing-ca.pem".to_owned(),
        ADMIN_TOKEN_FILE.to_owned(),
        "ca.crl.pem".to_owned(),
        "ca.key".to_owned(),
        "ca.pem".to_owned(),
    ]);
    Ok(DevPkiReport {
        dir: dir.to_owned(),
        files,
        ca,
        revoked: vec![revoked.serial],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_every_file_the_default_config_names() {
        let dir = std::env::temp_dir().join(format!("lgsp-devpki-{}", std::process::id()));
        let report = init(&dir).unwrap();
        assert!(exists(&dir));
        let cfg = lgsp_config::parse(lgsp_config::EMBEDDED, "t", &dir.join("..")).unwrap();
        // Every certificate path of the embedded config is one init wrote (compare file names).
        let mut named = Vec::new();
        for h in &cfg.hops {
            named.extend([
                &h.tls.cert,
                &h.tls.key,
                &h.upstream_tls.cert,
                &h.upstream_tls.key,
            ]);
            named.extend(
                h.tls
                    .client_ca
                    .iter()
                    .chain(&h.tls.crls)
                    .chain(&h.upstream_tls.ca),
            );
        }
        for p in named {
            let file = p.path.file_name().unwrap().to_string_lossy().to_string();
            assert!(report.files.contains(&file), "{file} not written");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
