//! XML-DSig over packets, through bergshamra (pure Rust, on aws-lc-rs): the digest and the signature value of each
//! `ds:Signature` child of the packet's root, and signing a packet the same way.
//!
//! The profile (also `schemas/cbccvc/xmldsig-profile.xsd`, which refuses anything else before this runs): one
//! Reference with `URI=""` (the whole packet), its transforms either the enveloped-signature transform or XPath
//! Filter 2.0 subtracting `//ds:Signature`, then exclusive c14n; SHA-256; RSA-SHA256, RSA-PSS-SHA256 or
//! ECDSA-P256-SHA256; the signer's certificate first in `KeyInfo/X509Data`. Signing uses the XPath filter, so
//! the person's and the agency's signatures are independent of each other and of their order.

use base64::Engine;
use bergshamra::{DsigContext, KeysManager, VerifyResult};
use uppsala::{Document, NodeId};

pub const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const FILTER2: &str = "http://www.w3.org/2002/06/xmldsig-filter2";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
pub const ECDSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256";
pub const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
pub const RSA_PSS_SHA256: &str = "http://www.w3.org/2007/05/xmldsig-more#sha256-rsa-MGF1";

/// What checking one `ds:Signature` found, before any question of trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Digest and signature value verify; the signer's chain as sent (signer first).
    Verified { chain: Vec<Vec<u8>> },
    /// The signed content was changed after signing.
    DigestMismatch(String),
    /// The signature value does not verify with the certificate's key.
    Invalid(String),
    /// Outside the profile (transforms, references, certificates).
    Unsupported(String),
}

/// One `ds:Signature` of a packet: its position among the root's signatures (1-based) and the verdict.
#[derive(Debug, Clone)]
pub struct Found {
    pub index: usize,
    pub check: Check,
}

/// The packet could not be read as XML at all.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

/// Parses a packet (bergshamra's DOM; the schema validator has bounded it already).
pub fn parse(text: &str) -> Result<Document<'_>, Unreadable> {
    uppsala::parse(text).map_err(|e| Unreadable(e.to_string()))
}

fn is(doc: &Document<'_>, n: NodeId, ns: &str, local: &str) -> bool {
    doc.element(n).is_some_and(|e| {
        *e.name.local_name == *local && e.name.namespace_uri.as_deref() == Some(ns)
    })
}

fn child_elements(doc: &Document<'_>, n: NodeId) -> Vec<NodeId> {
    doc.children(n)
        .into_iter()
        .filter(|c| doc.element(*c).is_some())
        .collect()
}

fn first_child(doc: &Document<'_>, n: NodeId, ns: &str, local: &str) -> Option<NodeId> {
    child_elements(doc, n)
        .into_iter()
        .find(|c| is(doc, *c, ns, local))
}

/// The namespace `prefix` is bound to at `n` (its own declarations, then its ancestors').
fn namespace_of(doc: &Document<'_>, mut n: NodeId, prefix: &str) -> Option<String> {
    loop {
        if let Some(e) = doc.element(n)
            && let Some((_, uri)) = e
                .namespace_declarations
                .iter()
                .find(|(p, _)| **p == *prefix)
        {
            return Some(uri.to_string());
        }
        n = doc.parent(n)?;
    }
}

/// The `ds:Signature` children of the document element, in order.
pub fn signatures(doc: &Document<'_>) -> Vec<NodeId> {
    doc.document_element()
        .map(|root| {
            child_elements(doc, root)
                .into_iter()
                .filter(|c| is(doc, *c, DSIG, "Signature"))
                .collect()
        })
        .unwrap_or_default()
}

/// The child elements `local` (in `ns`) of `n`, in order.
pub fn children(doc: &Document<'_>, n: NodeId, ns: &str, local: &str) -> Vec<NodeId> {
    child_elements(doc, n)
        .into_iter()
        .filter(|c| is(doc, *c, ns, local))
        .collect()
}

/// The text of the first child element `local` (in `ns`) of `n`, trimmed.
pub fn child_text(doc: &Document<'_>, n: NodeId, ns: &str, local: &str) -> Option<String> {
    first_child(doc, n, ns, local).map(|c| doc.text_content_deep(c).trim().to_owned())
}

/// The text of the first child element `local` (in `ns`) of the document element.
pub fn root_field(doc: &Document<'_>, ns: &str, local: &str) -> Option<String> {
    child_text(doc, doc.document_element()?, ns, local)
}

/// Whether a signature keeps to the profile: one reference to the whole packet with the allowed transforms, and
/// the signer's certificates (returned, signer first).
fn profile(doc: &Document<'_>, sig: NodeId) -> Result<Vec<Vec<u8>>, String> {
    let signed_info = first_child(doc, sig, DSIG, "SignedInfo").ok_or("it has no SignedInfo")?;
    let references: Vec<NodeId> = child_elements(doc, signed_info)
        .into_iter()
        .filter(|c| is(doc, *c, DSIG, "Reference"))
        .collect();
    let [reference] = references.as_slice() else {
        return Err(format!(
            "it has {} References; sign the whole packet with one Reference URI=\"\"",
            references.len()
        ));
    };
    if doc.get_attribute(*reference, "URI") != Some("") {
        return Err("its Reference does not cover the whole packet (URI=\"\")".into());
    }
    let transforms = first_child(doc, *reference, DSIG, "Transforms")
        .map(|t| {
            child_elements(doc, t)
                .into_iter()
                .filter(|c| is(doc, *c, DSIG, "Transform"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let algorithms: Vec<&str> = transforms
        .iter()
        .map(|t| doc.get_attribute(*t, "Algorithm").unwrap_or_default())
        .collect();
    match algorithms.as_slice() {
        [ENVELOPED, EXC_C14N] => {}
        [FILTER2, EXC_C14N] => {
            let xpath = first_child(doc, transforms[0], FILTER2, "XPath")
                .ok_or("its XPath Filter 2.0 transform has no XPath")?;
            let expr = doc.text_content_deep(xpath);
            let expr = expr.trim();
            let prefix = expr
                .strip_prefix("//")
                .and_then(|e| e.strip_suffix(":Signature"))
                .filter(|p| !p.is_empty() && !p.contains(['/', '[', ' ']));
            let bound = prefix.and_then(|p| namespace_of(doc, xpath, p));
            if doc.get_attribute(xpath, "Filter") != Some("subtract")
                || bound.as_deref() != Some(DSIG)
            {
                return Err(format!(
                    "its XPath filter `{expr}` removes something else than the signatures; use Filter=\"subtract\" with //ds:Signature"
                ));
            }
        }
        other => {
            return Err(format!(
                "its transforms {other:?} are not the profile's: enveloped-signature (or XPath Filter 2.0 subtracting //ds:Signature), then exclusive c14n"
            ));
        }
    }
    let certs: Vec<Vec<u8>> = first_child(doc, sig, DSIG, "KeyInfo")
        .and_then(|k| first_child(doc, k, DSIG, "X509Data"))
        .map(|d| {
            child_elements(doc, d)
                .into_iter()
                .filter(|c| is(doc, *c, DSIG, "X509Certificate"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let text: String = doc
                .text_content_deep(c)
                .chars()
                .filter(|c| !c.is_ascii_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| format!("its X509Certificate is not base64: {e}"))
        })
        .collect::<Result<_, _>>()?;
    if certs.is_empty() {
        return Err("it carries no X509Certificate of its signer in KeyInfo/X509Data".into());
    }
    Ok(certs)
}

/// Checks every `ds:Signature` child of the document element: the profile, then digest and signature value with
/// the key of the first certificate it carries. Trust in that certificate is the caller's next question.
pub fn verify(doc: &Document<'_>) -> Vec<Found> {
    let sigs = signatures(doc);
    if sigs.is_empty() {
        return Vec::new();
    }
    let ctx = DsigContext::new_permissive(KeysManager::new()).with_strict_verification(true);
    let results = match bergshamra::dsig::verify::verify_all_document(&ctx, doc) {
        Ok(r) => r,
        Err(e) => {
            return (1..=sigs.len())
                .map(|index| Found {
                    index,
                    check: Check::Unsupported(format!("the signatures cannot be processed: {e}")),
                })
                .collect();
        }
    };
    // verify_all visits every ds:Signature of the document in order; the profile allows them only as children
    // of the root, which the schema enforces, so the two lists line up. If they do not, nothing is trusted.
    if results.len() != sigs.len() {
        return (1..=sigs.len())
            .map(|index| Found {
                index,
                check: Check::Unsupported("a ds:Signature is nested inside the packet".into()),
            })
            .collect();
    }
    sigs.iter()
        .zip(results)
        .enumerate()
        .map(|(i, (sig, result))| {
            let check = match (profile(doc, *sig), result) {
                (Err(why), _) => Check::Unsupported(why),
                (Ok(chain), VerifyResult::Valid { key_info, .. }) => {
                    if key_info.x509_chain.first() == chain.first() {
                        Check::Verified { chain }
                    } else {
                        Check::Unsupported(
                            "the key that verified is not the first X509Certificate's".into(),
                        )
                    }
                }
                (Ok(_), VerifyResult::Invalid { reason }) => {
                    if reason.starts_with("Reference digest failed") {
                        Check::DigestMismatch(reason)
                    } else if reason.contains("signature value verification failed") {
                        Check::Invalid(reason)
                    } else {
                        Check::Unsupported(reason)
                    }
                }
            };
            Found {
                index: i + 1,
                check,
            }
        })
        .collect()
}

/// A key and its certificate chain, to sign with.
pub struct SigningKey {
    key: bergshamra::Key,
    /// DER, the signer's certificate first.
    pub chain: Vec<Vec<u8>>,
    /// The XML-DSig signature method.
    pub method: &'static str,
}

/// Why a key or a packet could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the key cannot be read: {0}")]
    Key(String),
    #[error("the certificate cannot be read: {0}")]
    Certificate(String),
    #[error("the key does not belong to the certificate (the signature it made does not verify)")]
    KeyMismatch,
    #[error("the packet cannot be read as XML: {0}")]
    Packet(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

impl SigningKey {
    /// A PEM private key (PKCS#8, SEC1 or PKCS#1) and a PEM certificate chain (the signer's first).
    pub fn from_pem(key_pem: &[u8], chain_pem: &[u8], pss: bool) -> Result<SigningKey, SignError> {
        let key = bergshamra::keys::loader::load_pem_auto(key_pem, None)
            .map_err(|e| SignError::Key(e.to_string()))?;
        let chain = pem_certificates(chain_pem)?;
        SigningKey::new(key, chain, pss)
    }

    /// A PKCS#12 file (key and certificates), as CAs hand signing keys out.
    pub fn from_pkcs12(data: &[u8], password: &str, pss: bool) -> Result<SigningKey, SignError> {
        let key = bergshamra::keys::loader::load_pkcs12(data, password)
            .map_err(|e| SignError::Key(e.to_string()))?;
        let chain = key.x509_chain.clone();
        SigningKey::new(key, chain, pss)
    }

    /// The key as the signature algorithms take it.
    pub(crate) fn software_key(&self) -> Result<bergshamra::SoftwareKey, SignError> {
        self.key
            .data
            .software_key()
            .map_err(|e| SignError::Key(e.to_string()))?
            .ok_or_else(|| SignError::Key("no private key".into()))
    }

    fn new(key: bergshamra::Key, chain: Vec<Vec<u8>>, pss: bool) -> Result<SigningKey, SignError> {
        if chain.is_empty() {
            return Err(SignError::Certificate("no CERTIFICATE block".into()));
        }
        let method = match key.algorithm_name() {
            a if a.starts_with("EC-P256") => ECDSA_SHA256,
            a if a.starts_with("RSA") && pss => RSA_PSS_SHA256,
            a if a.starts_with("RSA") => RSA_SHA256,
            other => {
                return Err(SignError::Key(format!(
                    "a {other} key; the profile signs with ECDSA P-256 or RSA"
                )));
            }
        };
        Ok(SigningKey { key, chain, method })
    }
}

/// The CERTIFICATE blocks of a PEM text, DER.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, SignError> {
    let text = std::str::from_utf8(pem).map_err(|e| SignError::Certificate(e.to_string()))?;
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let body = &rest[start + "-----BEGIN CERTIFICATE-----".len()..];
        let end = body
            .find("-----END CERTIFICATE-----")
            .ok_or_else(|| SignError::Certificate("a CERTIFICATE block has no END".into()))?;
        let b64: String = body[..end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        out.push(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| SignError::Certificate(e.to_string()))?,
        );
        rest = &body[end..];
    }
    Ok(out)
}

/// The signature template this gateway signs with (see the module's doc).
fn template(method: &str, chain: &[Vec<u8>]) -> String {
    let certs: String = chain
        .iter()
        .map(|c| {
            format!(
                "<ds:X509Certificate>{}</ds:X509Certificate>",
                base64::engine::general_purpose::STANDARD.encode(c)
            )
        })
        .collect();
    format!(
        "<ds:Signature xmlns:ds=\"{DSIG}\"><ds:SignedInfo>\
<ds:CanonicalizationMethod Algorithm=\"{EXC_C14N}\"/>\
<ds:SignatureMethod Algorithm=\"{method}\"/>\
<ds:Reference URI=\"\"><ds:Transforms>\
<ds:Transform Algorithm=\"{FILTER2}\"><dsig-xpath:XPath xmlns:dsig-xpath=\"{FILTER2}\" Filter=\"subtract\">//ds:Signature</dsig-xpath:XPath></ds:Transform>\
<ds:Transform Algorithm=\"{EXC_C14N}\"/></ds:Transforms>\
<ds:DigestMethod Algorithm=\"http://www.w3.org/2001/04/xmlenc#sha256\"/><ds:DigestValue></ds:DigestValue>\
</ds:Reference></ds:SignedInfo><ds:SignatureValue></ds:SignatureValue>\
<ds:KeyInfo><ds:X509Data>{certs}</ds:X509Data></ds:KeyInfo></ds:Signature>"
    )
}

/// Adds a signature by `key` as the last child of the packet's root, leaving the signatures it already carries
/// valid, and checks the result verifies.
pub fn sign(text: &str, key: &SigningKey) -> Result<String, SignError> {
    let mut doc = parse(text).map_err(|e| SignError::Packet(e.0))?;
    let root = doc
        .document_element()
        .ok_or_else(|| SignError::Packet("no root element".into()))?;
    let template = template(key.method, &key.chain);
    let sig_doc = uppsala::parse(&template).map_err(|e| SignError::Sign(e.to_string()))?;
    let sig_root = sig_doc
        .document_element()
        .ok_or_else(|| SignError::Sign("empty template".into()))?;
    let node = doc
        .import_subtree(&sig_doc, sig_root)
        .ok_or_else(|| SignError::Sign("the template cannot be imported".into()))?;
    doc.append_child(root, node);
    let mut keys = KeysManager::new();
    keys.add_key(key.key.clone());
    let ctx = DsigContext::new_permissive(keys);
    bergshamra::dsig::sign::sign_document_node(&ctx, &mut doc, node)
        .map_err(|e| SignError::Sign(e.to_string()))?;
    let mut out = doc.to_xml();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    let signed = parse(&out).map_err(|e| SignError::Sign(e.0))?;
    match verify(&signed).last().map(|f| &f.check) {
        Some(Check::Verified { .. }) => Ok(out),
        Some(Check::Invalid(_)) => Err(SignError::KeyMismatch),
        other => Err(SignError::Sign(format!(
            "the new signature does not verify: {other:?}"
        ))),
    }
}
