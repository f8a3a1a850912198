//! The delivery core of a hop: everything after a packet is accepted. The [`journal`] layer journals it before it
//! moves on and answers a resend from the journal; the [`judge`] decides what an upstream's answer means, the same
//! for a direct request, the [`outbox`] and a broker [`consume`]r; [`messages`] answers an agency's look-ups of its
//! own packets, [`coverage`] checks an approval against the profiles sent, and [`confirm`] asks the far end whether
//! it holds a message. Above the way out (lgsp-upstream) and lgsp-hop; the listeners and the stack (lgsp-proxy)
//! are above it.
#![forbid(unsafe_code)]

pub mod confirm;
pub mod consume;
pub mod coverage;
pub mod journal;
pub mod judge;
pub mod messages;
pub mod outbox;

pub use journal::{JournalLayer, PacketFacts};
pub use outbox::{DeliveryTarget, LiveTarget, Outbox};
