//! Authentication of callers: API keys (SHA-256 at rest, constant-time comparison), the binding of a key to the
//! agency in the client certificate, trusted peer gateways that relay for agencies, and the `AuthLayer` that puts
//! the authenticated [`Caller`] on each request.
#![forbid(unsafe_code)]

mod keys;
mod layer;
mod throttle;
mod tokens;

pub use keys::{KeyRecord, KeyStore, dev_key, generate_key, sha256_hex};
pub use layer::{
    API_KEY_HEADER, Auth, AuthError, AuthLayer, AuthPolicy, CLIENT_HEADER, Caller, HopSigned,
};
pub use throttle::FailureThrottle;
pub use tokens::{Claims, TokenError, TokenIssuer, thumbprint};
