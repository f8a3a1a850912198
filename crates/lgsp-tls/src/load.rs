//! Reading PEM certificates, keys and CRLs, with errors that name the file and the config line that points at it.

use std::path::Path;

use lgsp_config::{ConfigPath, Origin};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// A certificate, key or CRL that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{file} ({}): {message}", where_named(origin))]
pub struct TlsError {
    pub file: String,
    /// Where the config names the file.
    pub origin: Origin,
    pub message: String,
}

fn where_named(o: &Origin) -> String {
    match o.line {
        Some(line) => format!("{}, config line {line}", o.field),
        None => o.field.clone(),
    }
}

impl TlsError {
    pub fn at(p: &ConfigPath, message: impl Into<String>) -> Self {
        TlsError {
            file: p.path.display().to_string(),
            origin: p.origin.clone(),
            message: message.into(),
        }
    }

    /// The config problem this is: at the field that names the file, saying which file and what is wrong.
    pub fn problem(&self) -> lgsp_config::Problem {
        self.origin
            .problem(format!("{}: {}", self.file, self.message))
    }
}

fn read(p: &ConfigPath) -> Result<Vec<u8>, TlsError> {
    std::fs::read(&p.path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            "; run `lgsp-gateway certs init` for a dev PKI, or fix the path"
        } else {
            ""
        };
        TlsError::at(p, format!("cannot read: {e}{hint}"))
    })
}

/// All certificates in a PEM file, in file order (leaf first for a chain).
pub fn load_certs(p: &ConfigPath) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(p)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::at(p, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::at(
            p,
            "holds no -----BEGIN CERTIFICATE----- block",
        ));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn load_key(p: &ConfigPath) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(p)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| TlsError::at(p, format!("no usable private key: {e}")))
}

/// The CRLs in a file: PEM (`-----BEGIN X509 CRL-----`) or a single DER CRL.
pub fn load_crls(p: &ConfigPath) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = read(p)?;
    if is_der(&bytes) {
        return Ok(vec![CertificateRevocationListDer::from(bytes)]);
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::at(p, format!("not a PEM CRL file: {e}")))?;
    if crls.is_empty() {
        return Err(TlsError::at(p, "holds no -----BEGIN X509 CRL----- block"));
    }
    Ok(crls)
}

/// DER starts with a SEQUENCE tag; PEM starts with text.
fn is_der(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x30)
}

/// Writes a private key readable by its owner only.
pub(crate) fn write_private(path: &Path, pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    // Owner-only from its creation: never readable by others, not even for a moment.
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    #[cfg(unix)]
    {
        // A file that existed keeps its mode through open: set it too.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(pem.as_bytes())
}
