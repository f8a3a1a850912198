//! The way out of a hop: [`Forward`], the innermost service, sends a request to its route's HTTPS upstream over
//! mTLS as the hop, or hands it to [`publish`] for a broker upstream (NATS JetStream, RabbitMQ), or answers an
//! agency's [`inbox`] read from its JetStream subject. Below the delivery core (lgsp-delivery), which decides what
//! an answer means; above lgsp-hop.
#![forbid(unsafe_code)]

pub mod error;
pub mod forward;
pub mod inbox;
pub mod publish;

pub use error::{BrokerFailed, ForwardError, UpstreamFailure};
pub use forward::{Forward, UpstreamClient, upstream_client, upstream_uri};
