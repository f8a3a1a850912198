//! `TokenLayer`: `POST /token`, the OAuth 2.0 token endpoint WSO2-style clients expect (client credentials,
//! RFC 6749 §4.4). The agency authenticates with HTTP Basic — its code as the user, its API key as the password
//! — over its own mTLS connection, and gets a short-lived bearer token bound to that certificate (RFC 8705).
//! Answers and errors follow RFC 6749 §5 (`application/json`, `Cache-Control: no-store`); every other request
//! passes on to the layers below.

use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use lgsp_auth::{AuthError, AuthPolicy};
use lgsp_metrics::RequestLabels;
use lgsp_problem::{BoxProblem, Problem};
use lgsp_tls::PeerIdentity;
use tower::{Layer, Service};

use lgsp_hop::HopContext;
use lgsp_hop::body::{Body, full, read_body};
use lgsp_hop::step::Step;

/// The token endpoint's path (WSO2 API Manager's).
pub const TOKEN_PATH: &str = "/token";
/// Largest token request body read.
const MAX_FORM_BYTES: usize = 4096;

#[derive(Clone)]
pub struct TokenLayer {
    policy: Arc<AuthPolicy>,
    hop: Arc<HopContext>,
}

impl TokenLayer {
    pub fn new(policy: Arc<AuthPolicy>, hop: Arc<HopContext>) -> Self {
        TokenLayer { policy, hop }
    }
}

impl<S> Layer<S> for TokenLayer {
    type Service = Token<S>;

    fn layer(&self, inner: S) -> Token<S> {
        Token {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Token<S> {
    inner: S,
    layer: TokenLayer,
}

impl<S> Service<Request<Body>> for Token<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxProblem>,
{
    type Response = Response<Body>;
    type Error = BoxProblem;
    type Future = Step<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxProblem>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if req.uri().path() != TOKEN_PATH {
            return Step::inner(self.inner.call(req));
        }
        if let Some(labels) = req.extensions().get::<RequestLabels>() {
            labels.set_route(self.layer.hop.token_route.clone());
        }
        // The form is read whole before a token can be issued: the one path that waits.
        let policy = self.layer.policy.clone();
        Step::wait(async move { Ok(token(&policy, req).await) })
    }
}

/// An RFC 6749 §5.2 error answer.
fn oauth_error(status: StatusCode, error: &str, description: &str, code: &str) -> Response<Body> {
    let body = serde_json::json!({
        "error": error,
        "error_description": description,
        "code": code,
    });
    let mut resp = json(status, &body);
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"lgsp-gateway\""),
        );
    }
    resp
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// `Authorization: Basic base64(user:password)`.
fn basic(req: &Request<Body>) -> Option<(String, String)> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The OAuth error of a form that does not ask for `grant_type=client_credentials`; `None` when it does.
fn grant_refused(form: &[u8]) -> Option<Response<Body>> {
    let grant = form_urlencoded::parse(form)
        .find(|(k, _)| k == "grant_type")
        .map(|(_, v)| v.into_owned());
    match grant.as_deref() {
        Some("client_credentials") => None,
        Some(other) => Some(oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!(
                "grant_type `{}` is not offered; use client_credentials.",
                other.chars().take(64).collect::<String>()
            ),
            "token.unsupported_grant_type",
        )),
        None => Some(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Send grant_type=client_credentials in an application/x-www-form-urlencoded body.",
            "token.bad_request",
        )),
    }
}

async fn token(policy: &AuthPolicy, req: Request<Body>) -> Response<Body> {
    if req.method() != Method::POST {
        let mut resp = oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "The token endpoint takes POST with grant_type=client_credentials.",
            "token.method_not_allowed",
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    let Some((agency, key)) = basic(&req) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Authenticate with HTTP Basic: your agency code as the user, its API key as the password.",
            "token.missing_client_credentials",
        );
    };
    let identity = req.extensions().get::<PeerIdentity>().cloned();
    let addr = req.extensions().get::<lgsp_tls::ClientAddr>().copied();
    let labels = req.extensions().get::<RequestLabels>().cloned();
    let form = match read_body(req.into_body(), MAX_FORM_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The token request body could not be read (at most 4096 bytes, application/x-www-form-urlencoded).",
                "token.bad_request",
            );
        }
    };
    if let Some(refused) = grant_refused(&form) {
        return refused;
    }
    let issued = policy.guarded(identity.as_ref(), addr.as_ref(), || {
        policy.issue_token(identity.as_ref(), &agency, &key)
    });
    match issued {
        Ok((token, kind)) => {
            if let Some(l) = labels {
                if let Some((code, _)) = policy.agencies.get_key_value(agency.as_str()) {
                    l.set_agency(code.clone());
                }
                l.set_mode(kind.as_str());
            }
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_in": policy.tokens.ttl.as_secs(),
                    "scope": kind.as_str(),
                }),
            )
        }
        Err(e) => {
            policy.metrics.auth_failure(&policy.hop, e.reason());
            let (status, error) = match e {
                AuthError::TrialAgencyProductionKey { .. } => {
                    (StatusCode::BAD_REQUEST, "unauthorized_client")
                }
                AuthError::TooManyFailures { .. } => {
                    (StatusCode::TOO_MANY_REQUESTS, "invalid_client")
                }
                _ => (StatusCode::UNAUTHORIZED, "invalid_client"),
            };
            let mut resp = oauth_error(status, error, &e.fix(), e.code());
            for (name, value) in e.headers() {
                resp.headers_mut().insert(name, value);
            }
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use lgsp_config::KeyKind;
    use lgsp_metrics::Metrics;
    use tower::ServiceExt;

    /// The SHA-256 (hex) of the connection's client certificate.
    const CERT: &str = "5a1c9a6317dff2acda2f6c0caf3b4582b0a980d6827cb1d5bfd6b2926f8faeae";

    type Inner = tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, BoxProblem>;

    fn service() -> (Token<Inner>, Arc<AuthPolicy>) {
        let metrics = Metrics::new().unwrap();
        let hop = Arc::new(HopContext::new("lgsp", &[], metrics.clone()));
        let agencies = lgsp_config::embedded().unwrap().agencies;
        let tokens = lgsp_auth::TokenIssuer::new("lgsp", None, std::time::Duration::from_secs(600));
        let policy = Arc::new(AuthPolicy::new("lgsp", &agencies, &[], metrics, tokens));
        let passed = tower::service_fn(|_req: Request<Body>| async {
            let mut resp = Response::new(lgsp_hop::body::empty());
            *resp.status_mut() = StatusCode::IM_A_TEAPOT;
            Ok::<_, BoxProblem>(resp)
        });
        let svc = TokenLayer::new(policy.clone(), hop).layer(Inner::new(passed));
        (svc, policy)
    }

    fn request(method: &str, path: &str, basic: Option<(&str, &str)>, form: &str) -> Request<Body> {
        let mut b = Request::builder().method(method).uri(path);
        if let Some((user, password)) = basic {
            b = b.header(
                header::AUTHORIZATION,
                format!("Basic {}", STANDARD.encode(format!("{user}:{password}"))),
            );
        }
        let mut req = b.body(full(form.to_owned())).unwrap();
        req.extensions_mut().insert(PeerIdentity {
            id: "000.00.00.H29".into(),
            source: lgsp_tls::IdentitySource::SanUri,
            cert_sha256: CERT.into(),
            // 2100-01-01: valid for as long as any test runs.
            not_after: 4_102_444_800,
            spki: Default::default(),
        });
        req.extensions_mut().insert(RequestLabels::default());
        req
    }

    async fn answer(
        svc: Token<Inner>,
        req: Request<Body>,
    ) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let resp = svc.oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    const GRANT: &str = "grant_type=client_credentials";

    #[tokio::test]
    async fn other_paths_pass_to_the_layers_below() {
        let (svc, _) = service();
        let resp = svc
            .oneshot(request("POST", "/lgsp/v1/token", None, ""))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::IM_A_TEAPOT);
    }

    #[tokio::test]
    async fn a_good_request_gets_a_token_bound_to_its_certificate() {
        let (svc, policy) = service();
        let key = lgsp_auth::dev_key("000.00.00.H29", KeyKind::Trial);
        let req = request("POST", TOKEN_PATH, Some(("000.00.00.H29", &key)), GRANT);
        let labels = req.extensions().get::<RequestLabels>().unwrap().clone();
        let (status, headers, body) = answer(svc, req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(
            (
                body["token_type"].as_str(),
                body["scope"].as_str(),
                body["expires_in"].as_u64()
            ),
            (Some("Bearer"), Some("trial"), Some(600))
        );
        let claims = policy
            .tokens
            .verify(body["access_token"].as_str().unwrap(), CERT)
            .unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.mode.as_str()),
            ("000.00.00.H29", "trial")
        );
        assert!(
            policy
                .tokens
                .verify(body["access_token"].as_str().unwrap(), "cd34")
                .is_err()
        );
        assert_eq!(
            (labels.route(), labels.agency(), labels.mode()),
            ("token", "000.00.00.H29", "trial")
        );
    }

    #[tokio::test]
    async fn oauth_errors_say_what_is_wrong() {
        let (svc, _) = service();
        let h29 = lgsp_auth::dev_key("000.00.00.H29", KeyKind::Production);
        let h26 = lgsp_auth::dev_key("000.00.00.H26", KeyKind::Production);
        let cases = [
            (
                request("GET", TOKEN_PATH, None, ""),
                405,
                "invalid_request",
                "token.method_not_allowed",
            ),
            (
                request("POST", TOKEN_PATH, None, GRANT),
                401,
                "invalid_client",
                "token.missing_client_credentials",
            ),
            (
                request(
                    "POST",
                    TOKEN_PATH,
                    Some(("000.00.00.H29", &h29)),
                    "grant_type=password",
                ),
                400,
                "unsupported_grant_type",
                "token.unsupported_grant_type",
            ),
            (
                request("POST", TOKEN_PATH, Some(("000.00.00.H29", &h29)), ""),
                400,
                "invalid_request",
                "token.bad_request",
            ),
            (
                request(
                    "POST",
                    TOKEN_PATH,
                    Some(("000.00.00.H29", &"x".repeat(5000))),
                    &"a".repeat(5000),
                ),
                400,
                "invalid_request",
                "token.bad_request",
            ),
            (
                request("POST", TOKEN_PATH, Some(("000.00.00.H26", &h26)), GRANT),
                401,
                "invalid_client",
                "auth.key_not_bound_to_certificate",
            ),
            (
                request("POST", TOKEN_PATH, Some(("000.00.00.H29", "nope")), GRANT),
                401,
                "invalid_client",
                "auth.unknown_key",
            ),
        ];
        for (req, status, error, code) in cases {
            let (got, headers, body) = answer(svc.clone(), req).await;
            assert_eq!(
                (got.as_u16(), body["error"].as_str(), body["code"].as_str()),
                (status, Some(error), Some(code)),
                "{body}"
            );
            if status == 401 {
                assert!(headers.contains_key("www-authenticate"), "{code}");
            }
            if status == 405 {
                assert_eq!(headers["allow"], "POST");
            }
        }
    }
}
