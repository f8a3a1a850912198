//! The proxy: TLS listeners, the tower stack of a hop (observe → auth → route → forward), the upstream client,
//! hop headers and problem+json errors; and [`Gateway`], which starts every listener of a config.
#![forbid(unsafe_code)]

pub mod body;
pub mod error;
mod forward;
mod gateway;
pub mod headers;
pub mod limit;
mod listener;
pub mod probe;
mod route;
mod stack;
pub mod token;
mod trace;
pub mod validate;

pub use forward::{Forward, UpstreamClient, upstream_client, upstream_uri};
pub use gateway::{Bound, Gateway, Reloader, StartError};
pub use listener::{ListenerSpec, ListenerState, LiveState, spawn_tls_listener};
pub use route::{Route, RouteLayer, RouteTable};
pub use stack::{HopService, hop_stack};
pub use trace::{HopContext, ObserveLayer};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
