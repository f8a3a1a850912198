//! The integrator's connectivity probe (`lgsp-gateway probe`): walks the connection an agency's system makes, one
//! step at a time, and says for each what passed, how long it took, and what to fix when it failed — TCP, the TLS
//! handshake and the server certificate, the client certificate (told apart by the alert the gateway sends:
//! unknown CA, expired, revoked, missing), the API key and its binding to the certificate, the route, the sample
//! packet (dry run), and a round trip to the national endpoint with its receipt.
//!
//! `reconcile` compares an agency's own list of sent packets with what the gateway's journal holds of them.
//!
//! Client code: it talks to a gateway as an agency's HR system would and shares nothing with the server crates but
//! the TLS loading and the packet catalogue.
#![forbid(unsafe_code)]

mod profile;
pub mod reconcile;
mod report;
mod send;
mod steps;

use std::path::PathBuf;
use std::time::Duration;

pub use profile::{Profile, ProfileError};
pub use report::{Outcome, Report, Step};
pub use send::{Delivery, Sender};

/// What to probe with.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// The gateway's API base, e.g. `https://lgsp.example.gov.vn:8443/lgsp/v1`.
    pub url: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub api_key: String,
    /// A packet to dry-run and then send (XML or JSON).
    pub sample: Option<PathBuf>,
    /// Its message type; default: read from the packet (or `HoSoCBCCVC` without one).
    pub message_type: Option<String>,
    /// Bound on each network step.
    pub timeout: Duration,
}

/// Runs every step; stops at the first failure (the steps after it are listed as skipped).
pub async fn probe(opts: &ProbeOptions) -> Report {
    let mut run = report::Run::new();
    // A failed step is already in the run; the report says which.
    let _ = steps::all(&mut run, opts).await;
    run.finish()
}
