//! End to end: whether the far end holds a message this hop's journal says it delivered. The hop asks as itself —
//! mTLS with its upstream identity, its hop signature, the message's agency in `X-LGSP-Client` — through one of its
//! own look-up routes (`BienNhan`: receipts by message id, answered only for the agency the record names), so the
//! question travels the same chain the packet did and is answered by the national endpoint. `journal report
//! --end-to-end` asks it for every message of a month.

use std::sync::Arc;

use http::{HeaderMap, Request};
use lgsp_auth::Caller;
use lgsp_config::KeyKind;
use lgsp_journal::Message;
use tower::Service;

use crate::outbox::DeliveryTarget;
use lgsp_hop::body::empty;
use lgsp_hop::headers::{HopPath, MessageId, TraceContext};
use lgsp_hop::route::Route;

/// Where a message stands at the far end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtFarEnd {
    /// It answered with the message's record.
    Held,
    /// It holds no record of the message id for its agency.
    Missing,
    /// Nothing could be concluded (the look-up failed): why.
    Unknown(String),
}

/// Asks through `lookup` (a look-up route of the hop `target` delivers for) whether the far end holds `m`.
pub async fn at_far_end(target: &DeliveryTarget, lookup: &Arc<Route>, m: &Message) -> AtFarEnd {
    let path = format!(
        "{}/{}",
        lookup.config.prefix.trim_end_matches('/'),
        m.message_id
    );
    let mut req = match Request::get(path.as_str()).body(empty()) {
        Ok(r) => r,
        Err(e) => return AtFarEnd::Unknown(format!("the look-up does not build: {e}")),
    };
    let kind = if m.mode == "trial" {
        KeyKind::Trial
    } else {
        KeyKind::Production
    };
    let e = req.extensions_mut();
    e.insert(lookup.clone());
    e.insert(Caller {
        agency: Arc::from(m.agency.as_str()),
        kind,
        via: None,
    });
    e.insert(MessageId::new());
    e.insert(HopPath(vec![target.hop.name.to_string()]));
    e.insert(TraceContext::continue_or_start(&HeaderMap::new()));
    match target.forward.clone().call(req).await {
        Ok(resp) if resp.status().is_success() => AtFarEnd::Held,
        Ok(resp) if resp.status() == http::StatusCode::NOT_FOUND => AtFarEnd::Missing,
        Ok(resp) => AtFarEnd::Unknown(format!("the look-up answered {}", resp.status())),
        // A record that names another agency, or none: not this message as the journal knows it.
        Err(p) if p.code() == "lookup.not_found" => AtFarEnd::Missing,
        Err(p) => AtFarEnd::Unknown(p.to_string()),
    }
}
