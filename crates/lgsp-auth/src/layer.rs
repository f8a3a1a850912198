//! `AuthLayer`: who is calling. An agency proves itself with its client certificate plus an API key bound to the
//! same agency; a peer gateway (listed in the hop's `peers`) relays with its certificate alone and names the
//! agency it relays for in `X-LGSP-Client` — trusted only once the request's hop signature (RFC 9421, by the key of
//! the certificate the peer connected with) verifies over it.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready};
use http::{HeaderMap, Request, StatusCode};
use lgsp_config::{AgencyConfig, AgencyStatus, KeyKind};
use lgsp_metrics::{Metrics, RequestLabels};
use lgsp_problem::{BoxProblem, Problem};
use lgsp_tls::{ClientAddr, PeerIdentity, Peers};
use tower::{Layer, Service};

use crate::keys::KeyStore;
use crate::throttle::FailureThrottle;
use crate::tokens::{TokenError, TokenIssuer};

/// The header agencies send their API key in.
pub const API_KEY_HEADER: &str = "x-api-key";
/// The agency code a relaying gateway acts for (set by the first hop from the certificate).
pub const CLIENT_HEADER: &str = "x-lgsp-client";

/// Whether a key works now (its `not_before` / `not_after`).
fn valid_now(record: &crate::keys::KeyRecord) -> Result<(), AuthError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if record.valid_at(now) {
        Ok(())
    } else {
        Err(AuthError::KeyOutsideValidity {
            not_before: record.not_before,
            not_after: record.not_after,
        })
    }
}

/// A peer's verified hop signature, put on the request for the layers below: validate checks the body against its
/// `Content-Digest`, the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopSigned(pub Arc<lgsp_sign::http::Verified>);

/// The authenticated caller, put on the request for the layers below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The agency the request is for (mã định danh).
    pub agency: Arc<str>,
    /// The kind of key that authenticated it (for relayed requests: the first hop's verdict, carried on).
    pub kind: KeyKind,
    /// The peer gateway that relayed the request, when it did not come from the agency itself.
    pub via: Option<String>,
}

/// Why a caller was refused. Each maps to a status and a stable problem code at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no client certificate identity on the connection")]
    NoIdentity,
    #[error("missing X-API-Key")]
    MissingKey,
    #[error("unknown API key")]
    UnknownKey,
    #[error("API key of agency {key_agency} used with the certificate of {cert_identity}")]
    KeyNotBound {
        key_agency: Arc<str>,
        cert_identity: String,
    },
    #[error("peer {peer} sent no valid X-LGSP-Client")]
    PeerWithoutClient { peer: String },
    #[error("peer {peer} relays for unknown agency {agency}")]
    PeerUnknownAgency { peer: String, agency: String },
    #[error("agency {agency} is in trial and used a production key")]
    TrialAgencyProductionKey { agency: Arc<str> },
    #[error("bearer token refused: {0}")]
    InvalidToken(TokenError),
    #[error("too many failed authentications; held back {retry_after}s")]
    TooManyFailures { retry_after: u64 },
    #[error("the API key works only from {not_before:?} until {not_after:?}")]
    KeyOutsideValidity {
        not_before: Option<i64>,
        not_after: Option<i64>,
    },
    #[error("peer {peer} sent no hop signature: {why}")]
    HopSignatureMissing { peer: String, why: String },
    #[error("peer {peer}'s hop signature does not verify: {why}")]
    HopSignatureInvalid { peer: String, why: String },
}

impl Problem for AuthError {
    fn status(&self) -> StatusCode {
        match self {
            AuthError::NoIdentity
            | AuthError::MissingKey
            | AuthError::UnknownKey
            | AuthError::InvalidToken(_)
            | AuthError::KeyOutsideValidity { .. }
            | AuthError::HopSignatureMissing { .. }
            | AuthError::HopSignatureInvalid { .. } => StatusCode::UNAUTHORIZED,
            AuthError::KeyNotBound { .. }
            | AuthError::PeerUnknownAgency { .. }
            | AuthError::TrialAgencyProductionKey { .. } => StatusCode::FORBIDDEN,
            AuthError::PeerWithoutClient { .. } => StatusCode::BAD_REQUEST,
            AuthError::TooManyFailures { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            AuthError::NoIdentity => "auth.no_client_identity",
            AuthError::MissingKey => "auth.missing_key",
            AuthError::UnknownKey => "auth.unknown_key",
            AuthError::KeyNotBound { .. } => "auth.key_not_bound_to_certificate",
            AuthError::PeerWithoutClient { .. } => "auth.peer_missing_client",
            AuthError::PeerUnknownAgency { .. } => "auth.peer_unknown_agency",
            AuthError::TrialAgencyProductionKey { .. } => "auth.trial_agency_production_key",
            AuthError::InvalidToken(TokenError::OtherCertificate) => {
                "auth.token_not_bound_to_certificate"
            }
            AuthError::InvalidToken(_) => "auth.invalid_token",
            AuthError::TooManyFailures { .. } => "auth.too_many_failures",
            AuthError::KeyOutsideValidity { .. } => "auth.key_outside_validity",
            AuthError::HopSignatureMissing { .. } => "hop.signature_missing",
            AuthError::HopSignatureInvalid { .. } => "hop.signature_invalid",
        }
    }

    fn detail(&self) -> String {
        self.fix()
    }

    fn headers(&self) -> Vec<(http::HeaderName, http::HeaderValue)> {
        match self {
            AuthError::TooManyFailures { retry_after } => vec![(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(*retry_after),
            )],
            _ => Vec::new(),
        }
    }
}

impl AuthError {
    /// Every `reason` label of `lgsp_auth_failures_total` (exported as 0 from start-up).
    pub const REASONS: &[&'static str] = &[
        "no_client_identity",
        "missing_key",
        "unknown_key",
        "key_not_bound_to_certificate",
        "peer_missing_client",
        "peer_unknown_agency",
        "trial_agency_production_key",
        "token_not_bound_to_certificate",
        "invalid_token",
        "too_many_failures",
        "hop_signature_missing",
        "hop_signature_invalid",
        "key_outside_validity",
    ];

    /// The `reason` label of `lgsp_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::NoIdentity => "no_client_identity",
            AuthError::MissingKey => "missing_key",
            AuthError::UnknownKey => "unknown_key",
            AuthError::KeyNotBound { .. } => "key_not_bound_to_certificate",
            AuthError::PeerWithoutClient { .. } => "peer_missing_client",
            AuthError::PeerUnknownAgency { .. } => "peer_unknown_agency",
            AuthError::TrialAgencyProductionKey { .. } => "trial_agency_production_key",
            AuthError::InvalidToken(TokenError::OtherCertificate) => {
                "token_not_bound_to_certificate"
            }
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::TooManyFailures { .. } => "too_many_failures",
            AuthError::HopSignatureMissing { .. } => "hop_signature_missing",
            AuthError::HopSignatureInvalid { .. } => "hop_signature_invalid",
            AuthError::KeyOutsideValidity { .. } => "key_outside_validity",
        }
    }

    /// Whether this refusal is a failed attempt at credentials (what the throttle counts): not a relaying
    /// gateway's mistake, nor a valid key used in the wrong mode.
    fn is_guess(&self) -> bool {
        matches!(
            self,
            AuthError::NoIdentity
                | AuthError::MissingKey
                | AuthError::UnknownKey
                | AuthError::KeyNotBound { .. }
                | AuthError::InvalidToken(_)
        )
    }

    /// What the caller should do (the problem's `detail`; the token endpoint's `error_description`).
    pub fn fix(&self) -> String {
        match self {
            AuthError::NoIdentity => {
                "The connection carries no usable client certificate identity; connect with the certificate issued to your agency.".into()
            }
            AuthError::TooManyFailures { retry_after } => format!(
                "Too many failed authentications from this certificate or address; wait {retry_after} s (Retry-After) and check the API key before trying again."
            ),
            AuthError::MissingKey => {
                "Send your agency's API key in the X-API-Key header, or a bearer token from POST /token in Authorization (ask the LGSP operator for a key: `lgsp-gateway keys new --agency CODE`).".into()
            }
            AuthError::UnknownKey => {
                "The X-API-Key value is not a key of this gateway; check for a typo, a revoked key, or a trial key sent to the wrong gateway.".into()
            }
            AuthError::KeyNotBound { cert_identity, .. } => format!(
                "This API key was issued to another agency than the client certificate's ({cert_identity}); send the key issued to {cert_identity}, or connect with the certificate of the agency that owns the key."
            ),
            AuthError::PeerWithoutClient { .. } => {
                "A relaying gateway must send X-LGSP-Client with the agency code it relays for.".into()
            }
            AuthError::KeyOutsideValidity {
                not_before,
                not_after,
            } => {
                let at = |t: &Option<i64>| {
                    t.and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                        .unwrap_or_else(|| "—".into())
                };
                format!(
                    "This API key works from {} until {}, and not now: during a rotation send the agency's new key (the operator issued it with `lgsp-gateway keys new`); ask the LGSP operator if you have none.",
                    at(not_before),
                    at(not_after)
                )
            }
            AuthError::HopSignatureMissing { peer, why } => format!(
                "Gateway {peer} sent an unsigned request: {why}. Every hop signs what it forwards with the key of its upstream client certificate (Signature-Input and Signature, label `lgsp`, over @method, @target-uri, content-digest, x-lgsp-message-id, x-lgsp-client); run a gateway version that signs."
            ),
            AuthError::HopSignatureInvalid { peer, why } => format!(
                "Gateway {peer}'s hop signature is refused: {why}. Nothing the request carries is trusted; check that {peer} signs with the key of the certificate it connects with and that its clock is right."
            ),
            AuthError::PeerUnknownAgency { agency, .. } => format!(
                "Agency {agency} is not registered at this hop; register it as an [[agency]] here before relaying its traffic."
            ),
            AuthError::InvalidToken(TokenError::OtherCertificate) => {
                "This bearer token was issued over another client certificate (RFC 8705); get a token with POST /token over the connection that uses it.".into()
            }
            AuthError::InvalidToken(TokenError::Expired) => {
                "The bearer token has expired; get a new one with POST /token (grant_type=client_credentials).".into()
            }
            AuthError::InvalidToken(e) => format!(
                "The bearer token is not valid here ({e}); get one from this gateway with POST /token (grant_type=client_credentials)."
            ),
            AuthError::TrialAgencyProductionKey { agency } => format!(
                "Agency {agency} is connected in trial (kết nối thử nghiệm): send its trial key until the operator switches it to official (status = \"official\")."
            ),
        }
    }
}

/// What the layer decides with: keys, agencies and trusted peers of one hop.
#[derive(Debug)]
pub struct AuthPolicy {
    pub hop: Arc<str>,
    pub keys: KeyStore,
    pub agencies: HashMap<Arc<str>, AgencyStatus>,
    pub peers: Peers,
    pub metrics: Arc<Metrics>,
    /// Issues (POST /token) and checks the hop's bearer tokens.
    pub tokens: Arc<TokenIssuer>,
    /// Failed authentications per certificate identity and per source address.
    pub throttle: FailureThrottle,
}

impl AuthPolicy {
    pub fn new(
        hop: &str,
        agencies: &[AgencyConfig],
        peers: &[lgsp_config::PeerConfig],
        metrics: Arc<Metrics>,
        tokens: Arc<TokenIssuer>,
    ) -> Self {
        for reason in AuthError::REASONS {
            metrics.auth_failures.with_label_values(&[hop, reason]);
        }
        AuthPolicy {
            hop: Arc::from(hop),
            keys: KeyStore::from_agencies(agencies),
            agencies: agencies
                .iter()
                .map(|a| (Arc::from(a.code.as_str()), a.status))
                .collect(),
            peers: Peers::new(peers),
            metrics,
            tokens,
            throttle: FailureThrottle::new(lgsp_config::RateSpec {
                count: lgsp_config::defaults::AUTH_FAILURE_RATE.0,
                period_secs: lgsp_config::defaults::AUTH_FAILURE_RATE.1,
                burst: lgsp_config::defaults::AUTH_FAILURE_BURST,
            }),
        }
    }

    /// This policy, throttling failures at `spec` (`[auth] failure_rate`, `failure_burst`).
    pub fn throttling(mut self, spec: lgsp_config::RateSpec) -> Self {
        self.throttle = FailureThrottle::new(spec);
        self
    }

    /// Decides under the failure throttle: while the caller's certificate identity or source address has no
    /// failures left, refused at once (429, whatever it sends); a failed attempt counts against both. Listed peers
    /// relay for many agencies and are not held back.
    pub fn guarded<T>(
        &self,
        identity: Option<&PeerIdentity>,
        addr: Option<&ClientAddr>,
        decide: impl FnOnce() -> Result<T, AuthError>,
    ) -> Result<T, AuthError> {
        if identity.is_some_and(|i| self.is_peer(i)) {
            return decide();
        }
        let mut keys = Vec::with_capacity(2);
        if let Some(i) = identity {
            keys.push(format!("id:{}", i.id));
        }
        if let Some(ClientAddr(a)) = addr {
            keys.push(format!("ip:{}", a.ip()));
        }
        if let Some(wait) = self.throttle.wait(&keys) {
            return Err(AuthError::TooManyFailures {
                retry_after: wait.as_secs().max(1),
            });
        }
        let decided = decide();
        if let Err(e) = &decided
            && e.is_guess()
        {
            self.throttle.failed(&keys);
        }
        decided
    }

    pub fn is_peer(&self, identity: &PeerIdentity) -> bool {
        self.peers.admits(identity)
    }

    /// A peer's hop signature over this request, verified with its certificate's key; `Ok(None)` for anyone else.
    pub fn hop_signature<B>(
        &self,
        identity: Option<&PeerIdentity>,
        req: &Request<B>,
    ) -> Result<Option<HopSigned>, AuthError> {
        let Some(identity) = identity.filter(|i| self.is_peer(i)) else {
            return Ok(None);
        };
        let h = req.headers();
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| text(http::header::HOST.as_str()))
            .unwrap_or_default();
        let target = format!(
            "https://{authority}{}",
            req.uri().path_and_query().map_or("/", |p| p.as_str())
        );
        let covered = lgsp_sign::http::Covered {
            method: req.method().as_str(),
            target_uri: &target,
            content_digest: text("content-digest").unwrap_or_default(),
            message_id: text("x-lgsp-message-id").unwrap_or_default(),
            client: text(CLIENT_HEADER).unwrap_or_default(),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let peer = identity.id.clone();
        lgsp_sign::http::verify(
            &identity.spki,
            &identity.id,
            &covered,
            text("signature-input"),
            text("signature"),
            now,
        )
        .map(|v| Some(HopSigned(Arc::new(v))))
        .map_err(|e| match e {
            lgsp_sign::http::HopSignatureError::Missing(why) => {
                AuthError::HopSignatureMissing { peer, why }
            }
            lgsp_sign::http::HopSignatureError::Invalid(why) => {
                AuthError::HopSignatureInvalid { peer, why }
            }
        })
    }

    /// Whether a certificate identity is someone this hop serves: a registered agency or a listed peer.
    pub fn knows(&self, identity: &PeerIdentity) -> bool {
        self.is_peer(identity) || self.agencies.contains_key(identity.id.as_str())
    }

    /// Decides who is calling.
    pub fn authenticate(
        &self,
        identity: Option<&PeerIdentity>,
        headers: &HeaderMap,
    ) -> Result<Caller, AuthError> {
        let identity = identity.ok_or(AuthError::NoIdentity)?;
        if self.is_peer(identity) {
            let peer = identity.id.clone();
            let agency = headers
                .get(CLIENT_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|v| lgsp_config::valid_agency_code(v))
                .ok_or_else(|| AuthError::PeerWithoutClient { peer: peer.clone() })?;
            let (code, _) = self.agencies.get_key_value(agency).ok_or_else(|| {
                AuthError::PeerUnknownAgency {
                    peer: peer.clone(),
                    agency: agency.to_owned(),
                }
            })?;
            let kind = match headers.get("x-lgsp-mode").map(|v| v.as_bytes()) {
                Some(b"trial") => KeyKind::Trial,
                _ => KeyKind::Production,
            };
            return self.admit(Caller {
                agency: code.clone(),
                kind,
                via: Some(peer),
            });
        }
        if !headers.contains_key(API_KEY_HEADER)
            && let Some(token) = bearer(headers)
        {
            let claims = self
                .tokens
                .verify(token, &identity.cert_sha256)
                .map_err(AuthError::InvalidToken)?;
            // A token lives only as long as its agency and the key it was issued for.
            let (agency, _) = self
                .agencies
                .get_key_value(claims.sub.as_str())
                .ok_or_else(|| {
                    AuthError::InvalidToken(TokenError::AgencyRemoved(claims.sub.clone()))
                })?;
            let record = self
                .keys
                .by_id(&claims.kid)
                .filter(|r| r.agency == *agency)
                .ok_or(AuthError::InvalidToken(TokenError::KeyRemoved))?;
            // A token ends with its key's validity too.
            valid_now(record)?;
            if **agency != *identity.id {
                return Err(AuthError::KeyNotBound {
                    key_agency: agency.clone(),
                    cert_identity: identity.id.clone(),
                });
            }
            return self.admit(Caller {
                agency: agency.clone(),
                kind: record.kind,
                via: None,
            });
        }
        let key = headers.get(API_KEY_HEADER).ok_or(AuthError::MissingKey)?;
        let record = self
            .keys
            .lookup(key.as_bytes())
            .ok_or(AuthError::UnknownKey)?;
        valid_now(record)?;
        if *record.agency != *identity.id {
            return Err(AuthError::KeyNotBound {
                key_agency: record.agency.clone(),
                cert_identity: identity.id.clone(),
            });
        }
        self.admit(Caller {
            agency: record.agency.clone(),
            kind: record.kind,
            via: None,
        })
    }

    /// `POST /token`: the agency (HTTP Basic user) proves itself with its API key (password) over its own
    /// certificate and gets a bearer token bound to that certificate. Returns the token and its kind.
    pub fn issue_token(
        &self,
        identity: Option<&PeerIdentity>,
        agency: &str,
        key: &str,
    ) -> Result<(String, KeyKind), AuthError> {
        let identity = identity.ok_or(AuthError::NoIdentity)?;
        let record = self
            .keys
            .lookup(key.as_bytes())
            .ok_or(AuthError::UnknownKey)?;
        valid_now(record)?;
        if *record.agency != *agency || *record.agency != *identity.id {
            return Err(AuthError::KeyNotBound {
                key_agency: record.agency.clone(),
                cert_identity: identity.id.clone(),
            });
        }
        let caller = self.admit(Caller {
            agency: record.agency.clone(),
            kind: record.kind,
            via: None,
        })?;
        let token = self
            .tokens
            .issue(
                &caller.agency,
                &record.id,
                caller.kind,
                &identity.cert_sha256,
            )
            .ok_or(AuthError::NoIdentity)?;
        Ok((token, caller.kind))
    }

    /// An agency still in trial may send trial traffic only.
    fn admit(&self, caller: Caller) -> Result<Caller, AuthError> {
        let trial = self.agencies.get(&caller.agency) == Some(&AgencyStatus::Trial);
        if trial && caller.kind == KeyKind::Production {
            return Err(AuthError::TrialAgencyProductionKey {
                agency: caller.agency,
            });
        }
        Ok(caller)
    }
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Builds [`Auth`] services.
#[derive(Clone)]
pub struct AuthLayer {
    policy: Arc<AuthPolicy>,
}

impl AuthLayer {
    pub fn new(policy: Arc<AuthPolicy>) -> Self {
        AuthLayer { policy }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// Authenticates, then passes the request on with a [`Caller`] extension and without the API key.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    policy: Arc<AuthPolicy>,
}

impl<S> Auth<S> {
    pub fn layer(policy: Arc<AuthPolicy>) -> AuthLayer {
        AuthLayer::new(policy)
    }
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Error = BoxProblem>,
{
    type Response = S::Response;
    type Error = BoxProblem;
    type Future = Either<Ready<Result<S::Response, BoxProblem>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxProblem>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let identity = req.extensions().get::<PeerIdentity>();
        // A peer's hop headers are trusted only under its signature: checked before any of them is read.
        let decided = self
            .policy
            .guarded(identity, req.extensions().get::<ClientAddr>(), || {
                let signed = self.policy.hop_signature(identity, &req)?;
                self.policy
                    .authenticate(identity, req.headers())
                    .map(|caller| (caller, signed))
            });
        match decided {
            Ok((caller, signed)) => {
                if let Some(signed) = signed {
                    req.extensions_mut().insert(signed);
                }
                if let Some(labels) = req.extensions().get::<RequestLabels>() {
                    labels.set_agency(caller.agency.clone());
                    labels.set_mode(caller.kind.as_str());
                }
                // Credentials end here: upstreams never see the agency's key or token.
                req.headers_mut().remove(API_KEY_HEADER);
                req.headers_mut().remove(http::header::AUTHORIZATION);
                req.extensions_mut().insert(caller);
                Either::Right(self.inner.call(req))
            }
            Err(e) => {
                self.policy
                    .metrics
                    .auth_failure(&self.policy.hop, e.reason());
                Either::Left(futures_util::future::ready(Err(e.into())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::dev_key;
    use tower::ServiceExt;

    fn identity(id: &str) -> PeerIdentity {
        PeerIdentity {
            id: id.into(),
            source: lgsp_tls::IdentitySource::SanUri,
            cert_sha256: String::new(),
            // 2100-01-01: valid for as long as any test runs.
            not_after: 4_102_444_800,
            spki: Default::default(),
        }
    }

    type Inner = tower::util::BoxCloneSyncService<Request<()>, Caller, BoxProblem>;

    fn service() -> (Auth<Inner>, Arc<Metrics>) {
        let mut agencies = lgsp_config::embedded().unwrap().agencies;
        // G09 (in trial) also holds a production key: issued early, it must not work before G09 is official.
        let g09 = agencies
            .iter_mut()
            .find(|a| a.code == "000.00.00.G09")
            .unwrap();
        g09.keys.push(lgsp_config::KeyConfig {
            not_before: None,
            not_after: None,
            sha256: {
                use sha2::Digest;
                sha2::Sha256::digest(dev_key("000.00.00.G09", KeyKind::Production).as_bytes())
                    .into()
            },
            kind: KeyKind::Production,
            label: None,
        });
        let metrics = Metrics::new().unwrap();
        let policy = Arc::new(AuthPolicy::new(
            "lgsp",
            &agencies,
            &[lgsp_config::PeerConfig {
                id: "LGSP-DEV".into(),
                sha256: None,
            }],
            metrics.clone(),
            crate::TokenIssuer::new("lgsp", None, std::time::Duration::from_secs(60)),
        ));
        let inner = tower::service_fn(|req: Request<()>| async move {
            assert!(
                req.headers().get(API_KEY_HEADER).is_none(),
                "key must not travel on"
            );
            Ok::<_, BoxProblem>(req.extensions().get::<Caller>().cloned().unwrap())
        });
        (
            AuthLayer::new(policy).layer(tower::util::BoxCloneSyncService::new(inner)),
            metrics,
        )
    }

    fn request(id: Option<&str>, key: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri("/lgsp/v1/HoSoCBCCVC");
        if let Some(k) = key {
            b = b.header(API_KEY_HEADER, k);
        }
        let mut req = b.body(()).unwrap();
        if let Some(id) = id {
            req.extensions_mut().insert(identity(id));
        }
        req
    }

    /// The dev LGSP's hop key for these tests: PKCS#8 PEM and its SubjectPublicKeyInfo.
    fn hop_key() -> &'static (String, Vec<u8>) {
        static KEY: std::sync::OnceLock<(String, Vec<u8>)> = std::sync::OnceLock::new();
        KEY.get_or_init(|| {
            use aws_lc_rs::encoding::AsDer;
            use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
            use base64::Engine;
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
            let spki = pair.public_key().as_der().unwrap().as_ref().to_vec();
            let pem = format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                base64::engine::general_purpose::STANDARD
                    .encode(pkcs8.as_ref())
                    .as_bytes()
                    .chunks(64)
                    .map(|l| String::from_utf8_lossy(l).into_owned())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            (pem, spki)
        })
    }

    /// A request the dev LGSP relays for `client` (mode `mode`), signed as that hop signs.
    fn relay(client: Option<&str>, mode: Option<&str>) -> Request<()> {
        let uri = "https://ndxp.test/ndxp/v1/HoSoCBCCVC";
        let digest = lgsp_sign::http::content_digest(b"");
        let id = "01a2b3c4-0000-7000-8000-000000000001";
        let mut b = Request::builder()
            .method("POST")
            .uri(uri)
            .header("content-digest", &digest)
            .header("x-lgsp-message-id", id);
        if let Some(c) = client {
            b = b.header(CLIENT_HEADER, c);
        }
        if let Some(m) = mode {
            b = b.header("x-lgsp-mode", m);
        }
        let (pem, spki) = hop_key();
        let key = lgsp_sign::http::HopKey::from_pem(pem.as_bytes(), "LGSP-DEV").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let signed = key
            .sign(
                &lgsp_sign::http::Covered {
                    method: "POST",
                    target_uri: uri,
                    content_digest: &digest,
                    message_id: id,
                    client: client.unwrap_or_default(),
                },
                now,
            )
            .unwrap();
        let mut req = b
            .header("signature-input", signed.input)
            .header("signature", signed.signature)
            .body(())
            .unwrap();
        req.extensions_mut().insert(PeerIdentity {
            spki: Arc::from(spki.as_slice()),
            ..identity("LGSP-DEV")
        });
        req
    }

    /// The refusal, as the edge asks it.
    fn refusal(r: Result<Caller, BoxProblem>) -> BoxProblem {
        r.unwrap_err()
    }

    #[tokio::test]
    async fn key_bound_to_the_certificate_agency_passes() {
        let (svc, _) = service();
        let key = dev_key("000.00.00.H29", KeyKind::Production);
        let caller = svc
            .oneshot(request(Some("000.00.00.H29"), Some(&key)))
            .await
            .unwrap();
        assert_eq!(
            (&*caller.agency, caller.kind, caller.via),
            ("000.00.00.H29", KeyKind::Production, None)
        );
    }

    #[tokio::test]
    async fn key_of_another_agency_is_403_and_counted() {
        let (svc, metrics) = service();
        let key = dev_key("000.00.00.H26", KeyKind::Production);
        let e = refusal(
            svc.oneshot(request(Some("000.00.00.H29"), Some(&key)))
                .await,
        );
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::FORBIDDEN, "auth.key_not_bound_to_certificate")
        );
        assert_eq!(
            metrics
                .auth_failures
                .with_label_values(&["lgsp", "key_not_bound_to_certificate"])
                .get(),
            1
        );
    }

    #[tokio::test]
    async fn missing_and_unknown_keys_are_401() {
        let (svc, _) = service();
        let e = refusal(
            svc.clone()
                .oneshot(request(Some("000.00.00.H29"), None))
                .await,
        );
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::UNAUTHORIZED, "auth.missing_key")
        );
        let e = refusal(
            svc.oneshot(request(Some("000.00.00.H29"), Some("lgsp_prod_nope")))
                .await,
        );
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::UNAUTHORIZED, "auth.unknown_key")
        );
    }

    #[tokio::test]
    async fn no_identity_is_401() {
        let (svc, _) = service();
        let e = refusal(svc.oneshot(request(None, Some("x"))).await);
        assert_eq!(e.code(), "auth.no_client_identity");
    }

    #[tokio::test]
    async fn an_agency_in_trial_may_send_trial_traffic_only() {
        let (svc, metrics) = service();
        let trial = dev_key("000.00.00.G09", KeyKind::Trial);
        let caller = svc
            .clone()
            .oneshot(request(Some("000.00.00.G09"), Some(&trial)))
            .await
            .unwrap();
        assert_eq!(caller.kind, KeyKind::Trial);
        let production = dev_key("000.00.00.G09", KeyKind::Production);
        let e = refusal(
            svc.clone()
                .oneshot(request(Some("000.00.00.G09"), Some(&production)))
                .await,
        );
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::FORBIDDEN, "auth.trial_agency_production_key")
        );
        assert!(e.detail().contains("trial key"), "{}", e.detail());
        // Relayed by a peer, the first hop's mode counts: production for a trial agency is refused here too.
        let req = relay(Some("000.00.00.G09"), None);
        assert_eq!(
            refusal(svc.clone().oneshot(req).await).code(),
            "auth.trial_agency_production_key"
        );
        assert_eq!(
            metrics
                .auth_failures
                .with_label_values(&["lgsp", "trial_agency_production_key"])
                .get(),
            2
        );
        // An official agency may still test with its trial key.
        let caller = svc
            .oneshot(request(
                Some("000.00.00.H29"),
                Some(&dev_key("000.00.00.H29", KeyKind::Trial)),
            ))
            .await
            .unwrap();
        assert_eq!(caller.kind, KeyKind::Trial);
    }

    #[tokio::test]
    async fn a_peer_is_trusted_only_under_its_hop_signature() {
        let (svc, metrics) = service();
        // No signature: refused before X-LGSP-Client is read.
        let mut unsigned = relay(Some("000.00.00.H29"), None);
        unsigned.headers_mut().remove("signature");
        unsigned.headers_mut().remove("signature-input");
        let e = refusal(svc.clone().oneshot(unsigned).await);
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::UNAUTHORIZED, "hop.signature_missing")
        );
        // A hop header changed after signing: another agency named.
        let mut changed = relay(Some("000.00.00.H29"), None);
        changed
            .headers_mut()
            .insert(CLIENT_HEADER, "000.00.00.H26".parse().unwrap());
        let e = refusal(svc.clone().oneshot(changed).await);
        assert_eq!(e.code(), "hop.signature_invalid");
        assert!(e.detail().contains("does not verify"), "{}", e.detail());
        // Signed by a key other than the connection certificate's.
        let mut other = relay(Some("000.00.00.H29"), None);
        other.extensions_mut().insert(identity("LGSP-DEV"));
        assert_eq!(
            refusal(svc.clone().oneshot(other).await).code(),
            "hop.signature_invalid"
        );
        // The signature passes on for the journal.
        let saw = Arc::new(std::sync::Mutex::new(None));
        let probe = {
            let saw = saw.clone();
            tower::service_fn(move |req: Request<()>| {
                *saw.lock().unwrap() = req
                    .extensions()
                    .get::<HopSigned>()
                    .map(|h| h.0.keyid.clone());
                async { Ok::<_, BoxProblem>(()) }
            })
        };
        AuthLayer::new(svc.policy.clone())
            .layer(probe)
            .oneshot(relay(Some("000.00.00.H29"), None))
            .await
            .unwrap();
        assert_eq!(saw.lock().unwrap().as_deref(), Some("LGSP-DEV"));
        assert_eq!(
            metrics
                .auth_failures
                .with_label_values(&["lgsp", "hop_signature_invalid"])
                .get(),
            2
        );
    }

    #[tokio::test]
    async fn peer_relays_for_a_known_agency_without_a_key() {
        let (svc, _) = service();
        let caller = svc
            .clone()
            .oneshot(relay(Some("000.00.00.G09"), Some("trial")))
            .await
            .unwrap();
        assert_eq!(
            (&*caller.agency, caller.via.as_deref(), caller.kind),
            ("000.00.00.G09", Some("LGSP-DEV"), KeyKind::Trial)
        );

        let e = refusal(svc.clone().oneshot(relay(None, None)).await);
        assert_eq!(e.code(), "auth.peer_missing_client");
        let req = relay(Some("000.00.00.X01"), None);
        assert_eq!(
            refusal(svc.oneshot(req).await).code(),
            "auth.peer_unknown_agency"
        );
    }

    #[test]
    fn a_token_lives_only_as_long_as_its_key_and_its_agency() {
        let issuer = crate::TokenIssuer::new("lgsp", None, std::time::Duration::from_secs(60));
        let all = lgsp_config::embedded().unwrap().agencies;
        let policy_of = |agencies: &[AgencyConfig]| {
            AuthPolicy::new(
                "lgsp",
                agencies,
                &[],
                Metrics::new().unwrap(),
                issuer.clone(),
            )
        };
        let cert = "ab".repeat(32);
        let h29 = PeerIdentity {
            cert_sha256: cert.clone(),
            ..identity("000.00.00.H29")
        };
        let key = dev_key("000.00.00.H29", KeyKind::Production);
        let (token, _) = policy_of(&all)
            .issue_token(Some(&h29), "000.00.00.H29", &key)
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        assert!(policy_of(&all).authenticate(Some(&h29), &headers).is_ok());
        // The operator removes the key (a reload): the token goes with it.
        let mut keyless = all.clone();
        let h29_cfg = keyless
            .iter_mut()
            .find(|a| a.code == "000.00.00.H29")
            .unwrap();
        h29_cfg.keys.retain(|k| k.kind != KeyKind::Production);
        let e = policy_of(&keyless)
            .authenticate(Some(&h29), &headers)
            .unwrap_err();
        assert_eq!(e, AuthError::InvalidToken(TokenError::KeyRemoved));
        assert_eq!(e.code(), "auth.invalid_token");
        assert!(
            e.detail().contains("no longer configured"),
            "{}",
            e.detail()
        );
        // Or the agency itself.
        let without: Vec<AgencyConfig> = all
            .iter()
            .filter(|a| a.code != "000.00.00.H29")
            .cloned()
            .collect();
        let e = policy_of(&without)
            .authenticate(Some(&h29), &headers)
            .unwrap_err();
        assert!(
            e.detail().contains("no longer registered"),
            "{}",
            e.detail()
        );
    }

    #[test]
    fn failures_are_held_back_per_identity_and_address_but_peers_and_right_keys_do_not_count() {
        let agencies = lgsp_config::embedded().unwrap().agencies;
        let policy = AuthPolicy::new(
            "ndxp",
            &agencies,
            &[lgsp_config::PeerConfig {
                id: "LGSP-DEV".into(),
                sha256: None,
            }],
            Metrics::new().unwrap(),
            crate::TokenIssuer::new("ndxp", None, std::time::Duration::from_secs(60)),
        )
        .throttling(lgsp_config::RateSpec {
            count: 1,
            period_secs: 3600,
            burst: 2,
        });
        let addr = ClientAddr("192.0.2.1:40000".parse().unwrap());
        let h29 = identity("000.00.00.H29");
        let attempt = |id: &PeerIdentity, key: &str| {
            let mut h = HeaderMap::new();
            h.insert(API_KEY_HEADER, key.parse().unwrap());
            policy.guarded(Some(id), Some(&addr), || policy.authenticate(Some(id), &h))
        };
        let right = dev_key("000.00.00.H29", KeyKind::Production);
        // Right keys spend nothing.
        for _ in 0..5 {
            assert!(attempt(&h29, &right).is_ok());
        }
        assert_eq!(attempt(&h29, "guess-1"), Err(AuthError::UnknownKey));
        assert_eq!(attempt(&h29, "guess-2"), Err(AuthError::UnknownKey));
        let e = attempt(&h29, &right).unwrap_err();
        assert!(matches!(e, AuthError::TooManyFailures { retry_after } if retry_after > 0));
        assert_eq!(e.code(), "auth.too_many_failures");
        assert_eq!(e.headers()[0].0, http::header::RETRY_AFTER);
        // A relaying peer from the same address is never held back.
        let mut relay = HeaderMap::new();
        relay.insert(CLIENT_HEADER, "000.00.00.H26".parse().unwrap());
        let lgsp = identity("LGSP-DEV");
        assert!(
            policy
                .guarded(Some(&lgsp), Some(&addr), || policy
                    .authenticate(Some(&lgsp), &relay))
                .is_ok()
        );
    }

    #[test]
    fn every_refusal_has_a_listed_reason() {
        let every = [
            AuthError::NoIdentity,
            AuthError::MissingKey,
            AuthError::UnknownKey,
            AuthError::KeyNotBound {
                key_agency: Arc::from("a"),
                cert_identity: "b".into(),
            },
            AuthError::PeerWithoutClient { peer: "p".into() },
            AuthError::PeerUnknownAgency {
                peer: "p".into(),
                agency: "a".into(),
            },
            AuthError::TrialAgencyProductionKey {
                agency: Arc::from("a"),
            },
            AuthError::InvalidToken(TokenError::OtherCertificate),
            AuthError::InvalidToken(TokenError::Expired),
            AuthError::TooManyFailures { retry_after: 1 },
            AuthError::HopSignatureMissing {
                peer: "p".into(),
                why: "w".into(),
            },
            AuthError::KeyOutsideValidity {
                not_before: None,
                not_after: Some(0),
            },
            AuthError::HopSignatureInvalid {
                peer: "p".into(),
                why: "w".into(),
            },
        ];
        let reasons: std::collections::BTreeSet<&str> =
            every.iter().map(AuthError::reason).collect();
        let listed: std::collections::BTreeSet<&str> = AuthError::REASONS.iter().copied().collect();
        assert_eq!(reasons, listed);
    }
}
