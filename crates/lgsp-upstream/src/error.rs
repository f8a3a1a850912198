//! How the way out fails: an HTTPS upstream ([`ForwardError`], its kind in [`UpstreamFailure`]) or a broker
//! ([`BrokerFailed`]). Each answers for itself at the error edge; the delivery core's judge reads them too.

use std::sync::Arc;

use http::StatusCode;
use lgsp_broker::PublishError;
use lgsp_problem::{Class, Problem};

/// How an upstream exchange failed (`kind` label of `lgsp_upstream_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    Connect,
    Tls,
    Timeout,
    Protocol,
}

impl UpstreamFailure {
    pub(crate) const ALL: [UpstreamFailure; 4] = [
        UpstreamFailure::Connect,
        UpstreamFailure::Tls,
        UpstreamFailure::Timeout,
        UpstreamFailure::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Tls => "tls",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Protocol => "protocol",
        }
    }
}

/// A request that could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("route {route} takes no trial traffic")]
    TrialNotOffered { route: Arc<str> },
    /// A look-up whose record does not name the caller's agency (or names none): answered as an unknown id.
    #[error("look-up on route {route}: the record is not {agency}'s ({why})")]
    NotOwner {
        route: Arc<str>,
        agency: Arc<str>,
        why: &'static str,
    },
    /// The log names the upstream's address; the caller hears only the route's name.
    #[error("route {route}: upstream {upstream} failed ({}): {message}", kind.as_str())]
    Upstream {
        route: Arc<str>,
        upstream: String,
        kind: UpstreamFailure,
        message: String,
    },
}

impl Problem for ForwardError {
    fn status(&self) -> StatusCode {
        match self {
            ForwardError::TrialNotOffered { .. } => StatusCode::FORBIDDEN,
            ForwardError::NotOwner { .. } => StatusCode::NOT_FOUND,
            ForwardError::Upstream {
                kind: UpstreamFailure::Timeout,
                ..
            } => StatusCode::GATEWAY_TIMEOUT,
            ForwardError::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ForwardError::TrialNotOffered { .. } => "trial.not_offered",
            ForwardError::NotOwner { .. } => "lookup.not_found",
            ForwardError::Upstream { kind, .. } => match kind {
                UpstreamFailure::Connect => "upstream.unreachable",
                UpstreamFailure::Tls => "upstream.tls_failed",
                UpstreamFailure::Timeout => "upstream.timeout",
                UpstreamFailure::Protocol => "upstream.protocol_error",
            },
        }
    }

    fn class(&self) -> Class {
        match self {
            ForwardError::TrialNotOffered { .. } | ForwardError::NotOwner { .. } => Class::Client,
            ForwardError::Upstream { .. } => Class::Upstream,
        }
    }

    fn detail(&self) -> String {
        match self {
            ForwardError::TrialNotOffered { route } => format!(
                "Route {route} takes no trial-mode traffic at this hop; send it with a production key once your agency is official, or ask the operator to set the route's `trial_upstream`."
            ),
            ForwardError::NotOwner { agency, .. } => format!(
                "No record with this id is held for agency {agency}; check the id (look-ups answer only the agency the record belongs to)."
            ),
            ForwardError::Upstream {
                route,
                kind: UpstreamFailure::Timeout,
                ..
            } => format!(
                "The upstream of route {route} did not answer within the route's timeout; resend later with the same Idempotency-Key (a resend under it is never delivered twice)."
            ),
            ForwardError::Upstream { route, kind, .. } => format!(
                "The upstream of route {route} could not be reached ({}); resend later with the same Idempotency-Key (a resend under it is never delivered twice), and tell the LGSP operator if it persists.",
                kind.as_str()
            ),
        }
    }
}

/// A broker that did not take the packet.
#[derive(Debug, thiserror::Error)]
#[error("route {route}: broker {upstream} ({broker}): {error}")]
pub struct BrokerFailed {
    pub route: Arc<str>,
    /// `host:port`, for the log; the caller hears the route's name.
    pub upstream: String,
    pub broker: &'static str,
    pub error: PublishError,
}

impl Problem for BrokerFailed {
    fn status(&self) -> StatusCode {
        match self.error {
            PublishError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    fn code(&self) -> &'static str {
        match self.error {
            PublishError::Unreachable(..) => "broker.unreachable",
            PublishError::Timeout(_) => "broker.timeout",
            PublishError::Unroutable(_) => "broker.unroutable",
            PublishError::Refused(_) => "broker.refused",
        }
    }

    fn class(&self) -> Class {
        Class::Upstream
    }

    fn detail(&self) -> String {
        let route = &self.route;
        let why = match &self.error {
            PublishError::Unreachable(..) => "could not be reached",
            PublishError::Timeout(_) => "did not confirm the packet within the route's timeout",
            PublishError::Unroutable(_) => {
                "took the packet but no queue is bound for it (the operator must bind one)"
            }
            PublishError::Refused(_) => "refused the packet (no stream or exchange takes it)",
        };
        format!(
            "The message broker of route {route} {why}; nothing was delivered. Resend later with the same Idempotency-Key (a resend under it is never delivered twice), and tell the LGSP operator if it persists."
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_status_and_code() {
        let failed = |error| BrokerFailed {
            route: Arc::from("HoSoCBCCVC"),
            upstream: "mq:5672".into(),
            broker: "amqp",
            error,
        };
        let cases = [
            (
                PublishError::Unreachable("mq:5672".into(), "refused".into()),
                502,
                "broker.unreachable",
            ),
            (
                PublishError::Timeout(std::time::Duration::from_secs(1)),
                504,
                "broker.timeout",
            ),
            (
                PublishError::Unroutable("x/k".into()),
                502,
                "broker.unroutable",
            ),
            (PublishError::Refused("nack".into()), 502, "broker.refused"),
        ];
        for (error, status, code) in cases {
            let f = failed(error);
            assert_eq!((f.status().as_u16(), f.code()), (status, code));
            // The caller hears the route, never the broker's address.
            assert!(!f.detail().contains("mq:5672"), "{}", f.detail());
            assert!(f.detail().contains("Idempotency-Key"));
        }
    }
}
