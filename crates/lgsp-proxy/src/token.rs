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

use crate::body::{Body, full, read_body};
use crate::hop::HopContext;
use crate::step::Step;

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
    let grant = form_urlencoded::parse(&form)
        .find(|(k, _)| k == "grant_type")
        .map(|(_, v)| v.into_owned());
    match grant.as_deref() {
        Some("client_credentials") => {}
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!(
                    "grant_type `{}` is not offered; use client_credentials.",
                    other.chars().take(64).collect::<String>()
                ),
                "token.unsupported_grant_type",
            );
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Send grant_type=client_credentials in an application/x-www-form-urlencoded body.",
                "token.bad_request",
            );
        }
    }
    match policy.issue_token(identity.as_ref(), &agency, &key) {
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
                _ => (StatusCode::UNAUTHORIZED, "invalid_client"),
            };
            oauth_error(status, error, &e.fix(), e.code())
        }
    }
}
