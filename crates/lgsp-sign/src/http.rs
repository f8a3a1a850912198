//! Every hop's transaction signed: RFC 9421 HTTP Message Signatures between hops.
//!
//! A hop signs each request it forwards with its own hop key (the key of its upstream client certificate) over
//! `@method`, `@target-uri`, `content-digest` (RFC 9530, SHA-256 of the body), `x-lgsp-message-id` and
//! `x-lgsp-client`, under the label `lgsp`, with `created`, `keyid` (the hop's identity) and `alg`
//! (`ecdsa-p256-sha256` or `rsa-v1_5-sha256`). The next hop verifies it with the public key of the certificate the
//! peer presented in its TLS handshake, before it trusts any hop header; the journal keeps the signature, so a
//! record proves which hop sent what.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::xml::{ECDSA_SHA256, RSA_SHA256, SignError};

/// The signature's label in `Signature-Input` and `Signature`.
pub const LABEL: &str = "lgsp";

/// The covered components, in order.
pub const COMPONENTS: [&str; 5] = [
    "@method",
    "@target-uri",
    "content-digest",
    "x-lgsp-message-id",
    "x-lgsp-client",
];

/// How far `created` may be from the verifier's clock, in seconds.
pub const MAX_SKEW_SECS: i64 = 300;

/// RFC 9421 algorithm names and the signature methods that compute them (the same primitives as XML-DSig's:
/// ECDSA as r‖s, RSA PKCS#1 v1.5 with SHA-256).
const ALGS: &[(&str, &str)] = &[
    ("ecdsa-p256-sha256", ECDSA_SHA256),
    ("rsa-v1_5-sha256", RSA_SHA256),
];

/// `Content-Digest` (RFC 9530) of a body: `sha-256=:<base64>:`.
pub fn content_digest(body: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body);
    format!("sha-256=:{}:", STANDARD.encode(d.as_ref()))
}

/// What a signature covers: the request's method and target URI, and three header values.
#[derive(Debug, Clone, Copy)]
pub struct Covered<'a> {
    pub method: &'a str,
    /// `https://<authority><path and query>`.
    pub target_uri: &'a str,
    pub content_digest: &'a str,
    pub message_id: &'a str,
    pub client: &'a str,
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `@signature-params`: the inner list and its parameters, as `Signature-Input` carries them.
fn params(created: i64, keyid: &str, alg: &str) -> String {
    let list: Vec<String> = COMPONENTS.iter().map(|c| quoted(c)).collect();
    format!(
        "({});created={created};keyid={};alg={}",
        list.join(" "),
        quoted(keyid),
        quoted(alg)
    )
}

/// The signature base (RFC 9421 §2.5).
fn base(c: &Covered<'_>, params: &str) -> String {
    let values = [
        c.method,
        c.target_uri,
        c.content_digest,
        c.message_id,
        c.client,
    ];
    let mut out = String::new();
    for (name, value) in COMPONENTS.iter().zip(values) {
        out.push_str(&format!("\"{name}\": {value}\n"));
    }
    out.push_str(&format!("\"@signature-params\": {params}"));
    out
}

/// A hop's signing key.
pub struct HopKey {
    key: bergshamra::SoftwareKey,
    alg: &'static str,
    method: &'static str,
    /// The hop's identity, as its certificate names it (the next hop's `peers` entry).
    pub keyid: String,
}

impl std::fmt::Debug for HopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HopKey")
            .field("alg", &self.alg)
            .field("keyid", &self.keyid)
            .finish()
    }
}

/// The two header values of one signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// `Signature-Input`.
    pub input: String,
    /// `Signature`.
    pub signature: String,
}

impl HopKey {
    /// The hop's private key (PEM) and its identity.
    pub fn from_pem(key_pem: &[u8], keyid: &str) -> Result<HopKey, SignError> {
        let key = bergshamra::keys::loader::load_pem_auto(key_pem, None)
            .map_err(|e| SignError::Key(e.to_string()))?;
        let (alg, method) = match key.algorithm_name() {
            a if a.starts_with("EC-P256") => ALGS[0],
            a if a.starts_with("RSA") => ALGS[1],
            other => {
                return Err(SignError::Key(format!(
                    "a {other} key; hop signatures use ECDSA P-256 or RSA"
                )));
            }
        };
        let key = key
            .data
            .software_key()
            .map_err(|e| SignError::Key(e.to_string()))?
            .ok_or_else(|| SignError::Key("no private key".into()))?;
        Ok(HopKey {
            key,
            alg,
            method,
            keyid: keyid.to_owned(),
        })
    }

    /// Signs what `c` names at `created` (Unix seconds).
    pub fn sign(&self, c: &Covered<'_>, created: i64) -> Result<Signed, SignError> {
        let params = params(created, &self.keyid, self.alg);
        let value = bergshamra::crypto::sign::from_uri(self.method)
            .and_then(|alg| alg.sign(&self.key, base(c, &params).as_bytes()))
            .map_err(|e| SignError::Sign(e.to_string()))?;
        Ok(Signed {
            input: format!("{LABEL}={params}"),
            signature: format!("{LABEL}=:{}:", STANDARD.encode(value)),
        })
    }
}

/// Why a hop's signature is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HopSignatureError {
    /// No `Signature-Input` / `Signature` (or no `Content-Digest`) for the label.
    #[error("{0}")]
    Missing(String),
    /// Present but wrong: components, parameters, key, time, or the value itself.
    #[error("{0}")]
    Invalid(String),
}

/// A verified hop signature: what the journal keeps — with the values it covered, so the record can be checked
/// again later with the peer's certificate alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub keyid: String,
    pub created: i64,
    pub signed: Signed,
    /// Each covered component (in [`COMPONENTS`] order) and its value.
    pub covered: Vec<(&'static str, String)>,
}

/// The member `label=…` of a structured-field dictionary header, as written.
fn member<'a>(header: &'a str, label: &str) -> Option<&'a str> {
    let mut depth = 0i32;
    let mut quoted = false;
    let mut start = 0usize;
    let bytes = header.as_bytes();
    let mut members = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'(' if !quoted => depth += 1,
            b')' if !quoted => depth -= 1,
            b',' if !quoted && depth == 0 => {
                members.push(&header[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    members.push(&header[start..]);
    members.into_iter().find_map(|m| {
        let m = m.trim();
        m.strip_prefix(label)?.strip_prefix('=')
    })
}

/// One parameter (`;name=value`) of a signature's parameters, unquoted.
fn param<'a>(params: &'a str, name: &str) -> Option<&'a str> {
    let after_list = &params[params.rfind(')')? + 1..];
    after_list.split(';').find_map(|p| {
        let v = p.trim().strip_prefix(name)?.strip_prefix('=')?;
        Some(v.trim_matches('"'))
    })
}

/// Verifies the `lgsp` signature of a request a peer sent over a connection whose certificate's public key is
/// `spki` (DER) and identity `peer`: the covered components exactly as this hop signs them, `keyid` the peer's
/// identity, `created` within [`MAX_SKEW_SECS`] of `now`, and the value.
pub fn verify(
    spki: &[u8],
    peer: &str,
    covered: &Covered<'_>,
    signature_input: Option<&str>,
    signature: Option<&str>,
    now: i64,
) -> Result<Verified, HopSignatureError> {
    let missing = |what: &str| {
        HopSignatureError::Missing(format!(
            "the request carries no {what}; every hop signs what it forwards (RFC 9421, label `{LABEL}`)"
        ))
    };
    let input = signature_input
        .and_then(|h| member(h, LABEL))
        .ok_or_else(|| missing("Signature-Input"))?;
    let value = signature
        .and_then(|h| member(h, LABEL))
        .ok_or_else(|| missing("Signature"))?;
    if covered.content_digest.is_empty() {
        return Err(missing("Content-Digest"));
    }
    let invalid = |why: String| HopSignatureError::Invalid(why);
    let created: i64 = param(input, "created")
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| invalid("its Signature-Input has no created time".into()))?;
    let keyid = param(input, "keyid").unwrap_or_default();
    let alg = param(input, "alg").unwrap_or_default();
    let expected = params(created, keyid, alg);
    if input.trim() != expected {
        return Err(invalid(format!(
            "its Signature-Input `{input}` is not the profile's: {expected}"
        )));
    }
    if keyid != peer {
        return Err(invalid(format!(
            "signed as `{keyid}`, but the connection's certificate is {peer}'s"
        )));
    }
    if (created - now).abs() > MAX_SKEW_SECS {
        return Err(invalid(format!(
            "signed at {created}, {}s from this hop's clock (at most {MAX_SKEW_SECS}s)",
            created - now
        )));
    }
    let method = ALGS
        .iter()
        .find(|(a, _)| *a == alg)
        .map(|(_, m)| *m)
        .ok_or_else(|| {
            invalid(format!(
                "alg `{alg}` is neither ecdsa-p256-sha256 nor rsa-v1_5-sha256"
            ))
        })?;
    let bytes = value
        .trim()
        .strip_prefix(':')
        .and_then(|v| v.strip_suffix(':'))
        .and_then(|v| STANDARD.decode(v).ok())
        .ok_or_else(|| invalid("its Signature is not a byte sequence (:base64:)".into()))?;
    let key = bergshamra::keys::loader::load_spki_der(spki)
        .and_then(|k| {
            k.data
                .software_key()?
                .ok_or_else(|| bergshamra::Error::Key("no public key".into()))
        })
        .map_err(|e| invalid(format!("the peer's certificate key cannot verify: {e}")))?;
    let ok = bergshamra::crypto::sign::from_uri(method)
        .and_then(|a| a.verify(&key, base(covered, input.trim()).as_bytes(), &bytes))
        .unwrap_or(false);
    if !ok {
        return Err(invalid(
            "the signature does not verify with the peer certificate's key over this request (method, target, Content-Digest, X-LGSP-Message-Id, X-LGSP-Client)".into(),
        ));
    }
    let values = [
        covered.method,
        covered.target_uri,
        covered.content_digest,
        covered.message_id,
        covered.client,
    ];
    Ok(Verified {
        keyid: keyid.to_owned(),
        created,
        signed: Signed {
            input: format!("{LABEL}={}", input.trim()),
            signature: format!("{LABEL}={}", value.trim()),
        },
        covered: COMPONENTS
            .iter()
            .zip(values)
            .map(|(c, v)| (*c, v.to_owned()))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered<'a>(digest: &'a str) -> Covered<'a> {
        Covered {
            method: "POST",
            target_uri: "https://ndxp.example:8443/ndxp/v1/HoSoCBCCVC",
            content_digest: digest,
            message_id: "01a2b3c4-0000-7000-8000-000000000001",
            client: "000.00.00.H29",
        }
    }

    fn keypair() -> (Vec<u8>, Vec<u8>) {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .expect("key");
        let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
        )
        .expect("pair");
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair;
        let spki = pair.public_key().as_der().expect("spki").as_ref().to_vec();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD
                .encode(pkcs8.as_ref())
                .as_bytes()
                .chunks(64)
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect::<Vec<_>>()
                .join("\n")
        );
        (pem.into_bytes(), spki)
    }

    #[test]
    fn content_digest_is_rfc_9530() {
        // RFC 9530 appendix: the SHA-256 of {"hello": "world"}\n.
        assert_eq!(
            content_digest(b"{\"hello\": \"world\"}\n"),
            "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:"
        );
    }

    #[test]
    fn a_signature_verifies_and_each_change_breaks_it() {
        let (pem, spki) = keypair();
        let key = HopKey::from_pem(&pem, "LGSP-DEV").expect("key");
        let digest = content_digest(b"<HoSoCBCCVC/>");
        let now = 1_790_000_000;
        let s = key.sign(&covered(&digest), now).expect("sign");
        assert!(s.input.starts_with("lgsp=(\"@method\" \"@target-uri\" \"content-digest\" \"x-lgsp-message-id\" \"x-lgsp-client\");created=1790000000;keyid=\"LGSP-DEV\";alg=\"ecdsa-p256-sha256\""), "{}", s.input);
        let ok = verify(
            &spki,
            "LGSP-DEV",
            &covered(&digest),
            Some(&s.input),
            Some(&s.signature),
            now + 10,
        )
        .expect("verifies");
        assert_eq!((ok.keyid.as_str(), ok.created), ("LGSP-DEV", now));
        // Another client named, another body, another peer, too old, nothing at all.
        let other = Covered {
            client: "000.00.00.H26",
            ..covered(&digest)
        };
        let changed = content_digest(b"<HoSoCBCCVC>x</HoSoCBCCVC>");
        let bad = |r: Result<Verified, HopSignatureError>| match r {
            Err(HopSignatureError::Invalid(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(
            bad(verify(
                &spki,
                "LGSP-DEV",
                &other,
                Some(&s.input),
                Some(&s.signature),
                now
            ))
            .contains("does not verify")
        );
        assert!(
            bad(verify(
                &spki,
                "LGSP-DEV",
                &covered(&changed),
                Some(&s.input),
                Some(&s.signature),
                now
            ))
            .contains("does not verify")
        );
        assert!(
            bad(verify(
                &spki,
                "LGSP-2",
                &covered(&digest),
                Some(&s.input),
                Some(&s.signature),
                now
            ))
            .contains("certificate is LGSP-2's")
        );
        assert!(
            bad(verify(
                &spki,
                "LGSP-DEV",
                &covered(&digest),
                Some(&s.input),
                Some(&s.signature),
                now + 301
            ))
            .contains("from this hop's clock")
        );
        let fewer = s.input.replace(" \"x-lgsp-client\"", "");
        assert!(
            bad(verify(
                &spki,
                "LGSP-DEV",
                &covered(&digest),
                Some(&fewer),
                Some(&s.signature),
                now
            ))
            .contains("not the profile's")
        );
        assert!(matches!(
            verify(&spki, "LGSP-DEV", &covered(&digest), None, None, now),
            Err(HopSignatureError::Missing(_))
        ));
        // Other members of the dictionaries are ignored; ours is found among them.
        let input = format!("other=(\"@method\");created=1, {}", s.input);
        let signature = format!("other=:AAAA:, {}", s.signature);
        assert!(
            verify(
                &spki,
                "LGSP-DEV",
                &covered(&digest),
                Some(&input),
                Some(&signature),
                now
            )
            .is_ok()
        );
    }
}
