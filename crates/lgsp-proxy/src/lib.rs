//! The proxy: TLS listeners, connections and the tower stack of a hop (observe → token → auth → route → limit →
//! validate → journal → forward); [`prepare`] turns a config into everything a gateway serves with, and [`Gateway`]
//! starts every listener of it and the delivery core's background work. What the layers share is lgsp-hop, the way
//! out lgsp-upstream, the delivery core lgsp-delivery; their modules are re-exported here under the names they had
//! when they lived in this crate.
#![forbid(unsafe_code)]

mod connect;
mod connection;
mod gateway;
pub mod limit;
mod listener;
mod observe;
mod prepare;
pub mod proxy_protocol;
mod stack;
pub mod token;
pub mod validate;

pub use connect::{Reach, connect};
pub use connection::{BodyTimeout, Retired, TooManyConnections};
pub use gateway::{Bound, Gateway, Reloader, StartError, journal_settings};
pub use lgsp_delivery::{
    DeliveryTarget, confirm, consume, coverage, journal, judge, messages, outbox,
};
pub use lgsp_hop::{
    HopContext, Route, RouteError, RouteLayer, RouteTable, Step, body, edge, headers,
};
pub use lgsp_tls::ClientAddr;
pub use lgsp_upstream::{
    Forward, ForwardError, UpstreamClient, UpstreamFailure, inbox, publish, upstream_client,
    upstream_uri,
};
pub use listener::{
    KnowsIdentity, ListenerSpec, ListenerState, LiveState, serve_connection, spawn_tls_listener,
};
pub use observe::{HopHeaderError, ObserveLayer};
pub use prepare::{Prepared, PreparedHop, prepare, signing_policy};
pub use stack::{HopParts, HopService, hop_stack};
