//! Short-lived bearer tokens for WSO2-style clients (OAuth 2.0 client credentials, RFC 6749 §4.4), bound to the
//! client certificate they were issued over (RFC 8705 §3: the `cnf` claim holds `x5t#S256`, the base64url
//! SHA-256 of the certificate). A token is a JWT signed with HMAC-SHA256 (aws-lc-rs); only the hop that issued it
//! accepts it, and only over a connection presenting the same certificate.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lgsp_config::KeyKind;
use serde::{Deserialize, Serialize};

/// Why a bearer token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a token of this gateway")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("issued by hop {0}")]
    OtherIssuer(String),
    #[error("expired")]
    Expired,
    #[error("bound to another certificate")]
    OtherCertificate,
    #[error("the API key it was issued for is no longer configured")]
    KeyRemoved,
    #[error("agency {0} is no longer registered at this hop")]
    AgencyRemoved(String),
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The hop that issued it.
    pub iss: String,
    /// The agency code.
    pub sub: String,
    /// `trial` or `production`: the kind of the key it was issued for.
    pub mode: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    /// The id of the API key it was issued for ([`crate::keys::key_id`]): the token lives only as long as the key.
    pub kid: String,
    pub cnf: Confirmation,
}

/// RFC 8705 confirmation: the certificate the token is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// Issues and checks the tokens of one hop.
pub struct TokenIssuer {
    hop: String,
    /// The secret that signs, and its id (the `kid` of the tokens' header).
    key: hmac::Key,
    key_id: String,
    /// The secret before the last rotation: its tokens are still accepted until they expire.
    previous: Option<(String, hmac::Key)>,
    pub ttl: Duration,
}

/// The id of a token secret: the first 8 hex digits of its SHA-256 (it names the secret, it does not reveal it).
fn secret_id(secret: &[u8]) -> String {
    hex::encode(&aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret).as_ref()[..4])
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("hop", &self.hop)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// The signing secret of this process, made once (tokens then survive config reloads, not restarts).
fn process_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut s = [0u8; 32];
        if getrandom::fill(&mut s).is_err() {
            // No OS randomness: derive from the clock and the process id, still unpredictable enough to stop
            // cross-process reuse; `token.secret_file` gives a real secret.
            let seed = format!("{:?}{}", SystemTime::now(), std::process::id());
            s.copy_from_slice(
                &hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, b"lgsp"), seed.as_bytes()).as_ref()
                    [..32],
            );
        }
        s
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `x5t#S256` of a certificate given as the lower-case hex SHA-256 of its DER.
pub fn thumbprint(cert_sha256_hex: &str) -> Option<String> {
    hex::decode(cert_sha256_hex)
        .ok()
        .filter(|d| d.len() == 32)
        .map(|d| URL_SAFE_NO_PAD.encode(d))
}

impl TokenIssuer {
    /// `secret`: the shared secret of every replica (`token.secret_file`), or `None` for this process's own.
    pub fn new(hop: &str, secret: Option<&[u8]>, ttl: Duration) -> Arc<Self> {
        let secret = secret.unwrap_or(process_secret());
        Arc::new(TokenIssuer {
            hop: hop.to_owned(),
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            key_id: secret_id(secret),
            previous: None,
            ttl,
        })
    }

    /// Also accepts the tokens of `previous`, the secret before a rotation (`token.previous_secret_file`).
    pub fn with_previous(self: Arc<Self>, previous: Option<&[u8]>) -> Arc<Self> {
        let Some(previous) = previous else {
            return self;
        };
        Arc::new(TokenIssuer {
            hop: self.hop.clone(),
            key: self.key.clone(),
            key_id: self.key_id.clone(),
            previous: Some((
                secret_id(previous),
                hmac::Key::new(hmac::HMAC_SHA256, previous),
            )),
            ttl: self.ttl,
        })
    }

    /// A token for `agency` with its key `kid` of `mode`, bound to the certificate whose SHA-256 (hex) is given.
    pub fn issue(
        &self,
        agency: &str,
        kid: &str,
        mode: KeyKind,
        cert_sha256_hex: &str,
    ) -> Option<String> {
        let iat = now();
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti).ok()?;
        let claims = Claims {
            iss: self.hop.clone(),
            sub: agency.to_owned(),
            mode: mode.as_str().to_owned(),
            iat,
            exp: iat + self.ttl.as_secs(),
            jti: hex::encode(jti),
            kid: kid.to_owned(),
            cnf: Confirmation {
                x5t_s256: thumbprint(cert_sha256_hex)?,
            },
        };
        let header = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"alg":"HS256","typ":"JWT","kid":"{}"}}"#,
            self.key_id
        ));
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).ok()?);
        let signing_input = format!("{header}.{payload}");
        let tag = hmac::sign(&self.key, signing_input.as_bytes());
        Some(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        ))
    }

    /// Checks a token presented over a connection whose client certificate has the given SHA-256 (hex).
    pub fn verify(&self, token: &str, cert_sha256_hex: &str) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        if token.len() > 4096 {
            return Err(TokenError::Malformed);
        }
        let tag = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let signing_input = &token[..header.len() + 1 + payload.len()];
        let head: serde_json::Value = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(TokenError::Malformed)?;
        // The secret the header names: the current one, or the one before the last rotation.
        let key = match (head["kid"].as_str(), &self.previous) {
            (Some(kid), Some((previous, key))) if kid == previous && kid != self.key_id => key,
            _ => &self.key,
        };
        hmac::verify(key, signing_input.as_bytes(), &tag).map_err(|_| TokenError::BadSignature)?;
        if head["alg"] != "HS256" {
            return Err(TokenError::Malformed);
        }
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.iss != self.hop {
            return Err(TokenError::OtherIssuer(claims.iss));
        }
        if claims.exp <= now() {
            return Err(TokenError::Expired);
        }
        if thumbprint(cert_sha256_hex).as_deref() != Some(claims.cnf.x5t_s256.as_str()) {
            return Err(TokenError::OtherCertificate);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_secret_keeps_its_tokens_until_they_expire_and_no_longer() {
        let (a, b) = ([7u8; 32], [9u8; 32]);
        let ttl = Duration::from_secs(600);
        let old = TokenIssuer::new("lgsp", Some(&a), ttl);
        let token = old
            .issue("000.00.00.H29", "k1", KeyKind::Production, CERT_A)
            .unwrap();
        // The header names the secret that signed it.
        let head = URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap();
        let head: serde_json::Value = serde_json::from_slice(&head).unwrap();
        assert_eq!(head["kid"], secret_id(&a));
        // Rotated: B signs, A is still accepted.
        let rotated = TokenIssuer::new("lgsp", Some(&b), ttl).with_previous(Some(&a));
        assert!(rotated.verify(&token, CERT_A).is_ok());
        let fresh = rotated
            .issue("000.00.00.H29", "k1", KeyKind::Production, CERT_A)
            .unwrap();
        assert!(rotated.verify(&fresh, CERT_A).is_ok());
        // A dropped: its tokens end, B's stay.
        let after = TokenIssuer::new("lgsp", Some(&b), ttl);
        assert_eq!(after.verify(&token, CERT_A), Err(TokenError::BadSignature));
        assert!(after.verify(&fresh, CERT_A).is_ok());
        // A header naming the previous secret cannot make a current-secret forgery pass, nor the reverse.
        let forged = format!(
            "{}.{}",
            token.rsplit_once('.').unwrap().0,
            fresh.rsplit_once('.').unwrap().1
        );
        assert_eq!(
            rotated.verify(&forged, CERT_A),
            Err(TokenError::BadSignature)
        );
    }

    const CERT_A: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const CERT_B: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn a_token_works_for_its_hop_and_certificate_only() {
        let lgsp = TokenIssuer::new("lgsp", None, Duration::from_secs(60));
        let t = lgsp
            .issue("000.00.00.H29", "0011223344556677", KeyKind::Trial, CERT_A)
            .unwrap();
        let c = lgsp.verify(&t, CERT_A).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.mode.as_str()),
            ("000.00.00.H29", "trial")
        );
        assert_eq!(c.exp - c.iat, 60);
        assert_eq!(lgsp.verify(&t, CERT_B), Err(TokenError::OtherCertificate));
        let ndxp = TokenIssuer::new("ndxp", None, Duration::from_secs(60));
        assert_eq!(
            ndxp.verify(&t, CERT_A),
            Err(TokenError::OtherIssuer("lgsp".into()))
        );
        let other_secret =
            TokenIssuer::new("lgsp", Some(b"another secret"), Duration::from_secs(60));
        assert_eq!(
            other_secret.verify(&t, CERT_A),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tampered_expired_and_garbage_tokens_are_refused() {
        let issuer = TokenIssuer::new("lgsp", None, Duration::from_secs(60));
        let t = issuer
            .issue("000.00.00.H29", "0011223344556677", KeyKind::Trial, CERT_A)
            .unwrap();
        // The payload rewritten to claim production: the signature no longer fits.
        let parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap())
                .unwrap()
                .replace("\"trial\"", "\"production\""),
        );
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(
            issuer.verify(&tampered, CERT_A),
            Err(TokenError::BadSignature)
        );
        let expired = TokenIssuer::new("lgsp", None, Duration::ZERO);
        let t = expired
            .issue("000.00.00.H29", "0011223344556677", KeyKind::Trial, CERT_A)
            .unwrap();
        assert_eq!(expired.verify(&t, CERT_A), Err(TokenError::Expired));
        for junk in ["", "a.b", "a.b.c.d", "x.y.z", "..."] {
            assert!(issuer.verify(junk, CERT_A).is_err(), "{junk:?}");
        }
        assert!(thumbprint("zz").is_none());
    }
}
