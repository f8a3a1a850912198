//! `[emulator]`: the national-endpoint emulator this process may run, and the trial upstream it gives routes that
//! name none.

use std::net::SocketAddr;

use super::check::Checker;
use super::hop::HopConfig;
use super::route::Upstream;
use super::tls::{ServerTlsConfig, server_tls};
use super::{Origin, defaults};
use crate::file::FileEmulator;

#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub listen: SocketAddr,
    pub tls: ServerTlsConfig,
    pub max_stored: usize,
    /// Where shared data is published (`nats://…/<subject prefix>`), when the emulator shares any.
    pub share: Option<(String, String)>,
    /// Where the file names the emulator's address (the default trial upstreams point back at it).
    pub origin: Origin,
}

pub(super) fn emulator(c: &mut Checker<'_>, e: &FileEmulator) -> EmulatorConfig {
    EmulatorConfig {
        listen: c.addr(&e.listen, "emulator.listen"),
        tls: server_tls(c, &e.tls, "emulator.tls"),
        max_stored: c.bounded(
            e.max_stored.as_ref(),
            "emulator.max_stored",
            defaults::EMULATOR_MAX_STORED,
            &defaults::EMULATOR_MAX_STORED_RANGE,
        ),
        share: e.share.as_ref().and_then(|v| {
            match super::broker::parse_broker(v.get_ref()) {
                Ok((authority, super::broker::Broker::Nats { tls: false, subject })) => {
                    Some((authority, subject))
                }
                Ok(_) => {
                    c.problem(v, "emulator.share", "the emulator shares over plain NATS: write \"nats://host:port/<subject prefix>\", e.g. \"nats://127.0.0.1:4222/cbccvc.out\"");
                    None
                }
                Err(e) => {
                    c.problem(v, "emulator.share", e);
                    None
                }
            }
        }),
        origin: c.origin(&e.listen, "emulator.listen"),
    }
}

/// Trial traffic defaults to the emulator this file runs, when its port is fixed:
/// `/cbccvc/v1/{message type or route name}`.
pub(super) fn default_trial_upstreams(hops: &mut [HopConfig], e: &EmulatorConfig) {
    if e.listen.port() == 0 {
        return;
    }
    for route in hops.iter_mut().flat_map(|h| h.routes.iter_mut()) {
        if route.trial_upstream.is_none() && !route.local() {
            let target = route.message_type.as_deref().unwrap_or(&route.name);
            route.trial_upstream = Some(Upstream {
                authority: format!("localhost:{}", e.listen.port()),
                base_path: format!("{}/{target}", defaults::EMULATOR_BASE_PATH),
                broker: None,
                origin: e.origin.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::tests::problems_of;

    #[test]
    fn max_stored_is_bounded_and_the_address_distinct() {
        let p = problems_of("max_stored = 100000", "max_stored = 0");
        assert_eq!(p[0].field, "emulator.max_stored");
        let p = problems_of("listen = \"127.0.0.1:8445\"", "listen = \"127.0.0.1:8444\"");
        assert!(
            p.iter()
                .any(|p| p.field == "emulator.listen" && p.message.contains("already uses")),
            "{p:?}"
        );
    }
}
