//! `[journal]`: where the message journal lives and how long it keeps bodies and records; `[delivery]`: how queued
//! routes deliver from the outbox.

use std::time::Duration;

use super::check::{Checker, human};
use super::defaults;
use super::{DeliveryMode, HopConfig, Origin};
use crate::file::{FileDelivery, FileJournal, FileQuota};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// `sqlite://…` (made absolute: a relative path resolves like every path of the config) or `postgres://…`.
    pub url: String,
    /// How long a message's body stays after it ends (queued bodies stay until then).
    pub keep_bodies: Duration,
    /// How long records stay.
    pub retention: Duration,
    /// This process's chain of records: one per replica writing the same database.
    pub chain: String,
    /// What one agency may hold accepted and not yet delivered (an agency's own `quota` overrides it).
    pub agency_quota: Quota,
    /// Below this much free disk (SQLite), new packets are refused with 503 `journal.disk_full`.
    pub min_free_disk: u64,
    /// Where the config names the store (`check-config --connect` reports by it).
    pub origin: Origin,
}

/// A bound on what one agency holds undelivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// A queued packet not delivered within this time of its acceptance expires.
    pub max_age: Duration,
    /// The first retry waits about this long, doubling (with jitter) up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Concurrent deliveries per hop and process.
    pub workers: usize,
    /// How long a claimed delivery is a worker's; after it, another replica takes it back.
    pub lease: Duration,
}

pub(super) fn journal(c: &mut Checker<'_>, f: &FileJournal) -> JournalConfig {
    let url = match &f.url {
        None => sqlite_beside(c, defaults::JOURNAL_URL),
        Some(u) => {
            let v = u.get_ref();
            if v.starts_with("postgres://") || v.starts_with("postgresql://") {
                v.clone()
            } else if v.starts_with("sqlite://") {
                sqlite_beside(c, v)
            } else {
                c.problem(
                    u,
                    "journal.url",
                    format!("`{v}` is neither sqlite://FILE nor postgres://…; e.g. \"sqlite://journal.db\" (beside the config) or \"postgres://lgsp@db.example/lgsp\""),
                );
                String::new()
            }
        }
    };
    let origin = match &f.url {
        Some(u) => c.origin(u, "journal.url"),
        None => Origin {
            field: "journal.url".into(),
            ..Origin::default()
        },
    };
    let chain = match &f.chain {
        Some(v) => {
            let name = v.get_ref();
            let ok = (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok {
                c.problem(
                    v,
                    "journal.chain",
                    format!(
                        "`{name}` is not 1–64 of A–Z a–z 0–9 . _ -; e.g. the replica's host name"
                    ),
                );
            }
            name.clone()
        }
        None if url.starts_with("postgres") => default_chain(),
        None => defaults::JOURNAL_CHAIN.to_owned(),
    };
    let default_quota = Quota {
        packets: defaults::JOURNAL_QUOTA_PACKETS,
        bytes: defaults::JOURNAL_QUOTA_BYTES,
    };
    JournalConfig {
        agency_quota: quota(
            c,
            f.agency_quota.as_ref(),
            "journal.agency_quota",
            default_quota,
        ),
        min_free_disk: c.size(
            f.min_free_disk.as_ref(),
            |s: &crate::file::FileSize| Some(s),
            "journal.min_free_disk",
            defaults::JOURNAL_MIN_FREE_DISK,
        ),
        chain,
        url,
        origin,
        keep_bodies: c.duration(
            f.keep_bodies.as_ref(),
            "journal.keep_bodies",
            defaults::JOURNAL_KEEP_BODIES,
        ),
        retention: c.duration(
            f.retention.as_ref(),
            "journal.retention",
            defaults::JOURNAL_RETENTION,
        ),
    }
}

/// A replica's chain when the config names none: its host's name, as far as a chain name may spell it.
fn default_chain() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = host
        .trim()
        .chars()
        .filter(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'))
        .take(64)
        .collect();
    if name.is_empty() {
        defaults::JOURNAL_CHAIN.to_owned()
    } else {
        name
    }
}

/// A quota as written (`{ packets = N, bytes = "SIZE" }`), each part defaulting to `default`'s.
pub(super) fn quota(
    c: &mut Checker<'_>,
    v: Option<&toml::Spanned<FileQuota>>,
    field: &str,
    default: Quota,
) -> Quota {
    let Some(q) = v else { return default };
    let packets = q.get_ref().packets.unwrap_or(default.packets);
    if packets == 0 {
        c.problem(
            q,
            field,
            "packets must be at least 1 (an agency holding nothing could send nothing)",
        );
    }
    Quota {
        packets,
        bytes: c.size(
            Some(q),
            |q: &FileQuota| q.bytes.as_ref(),
            field,
            default.bytes,
        ),
    }
}

/// A `sqlite://` URL with its path made absolute against the config's directory.
fn sqlite_beside(c: &Checker<'_>, url: &str) -> String {
    let rest = url.trim_start_matches("sqlite://");
    let (path, query) = rest.split_once('?').map_or((rest, ""), |(p, q)| (p, q));
    let path = std::path::Path::new(path);
    let full = if path.is_absolute() {
        path.to_owned()
    } else {
        c.base().join(path)
    };
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("sqlite://{}{query}", full.display())
}

pub(super) fn delivery(c: &mut Checker<'_>, f: &FileDelivery) -> DeliveryConfig {
    let initial_backoff = c.duration(
        f.initial_backoff.as_ref(),
        "delivery.initial_backoff",
        defaults::DELIVERY_INITIAL_BACKOFF,
    );
    let max_backoff = c.duration(
        f.max_backoff.as_ref(),
        "delivery.max_backoff",
        defaults::DELIVERY_MAX_BACKOFF,
    );
    if let Some(v) = &f.max_backoff
        && max_backoff < initial_backoff
    {
        c.problem(
            v,
            "delivery.max_backoff",
            "must be at least delivery.initial_backoff",
        );
    }
    DeliveryConfig {
        max_age: c.duration(
            f.max_age.as_ref(),
            "delivery.max_age",
            defaults::DELIVERY_MAX_AGE,
        ),
        initial_backoff,
        max_backoff,
        workers: c.bounded(
            f.workers.as_ref(),
            "delivery.workers",
            defaults::DELIVERY_WORKERS,
            &defaults::DELIVERY_WORKERS_RANGE,
        ),
        lease: c.duration(f.lease.as_ref(), "delivery.lease", defaults::DELIVERY_LEASE),
    }
}

/// A delivery worker's lease must outlast the longest queued route's timeout: otherwise another replica could take
/// a delivery back while its first attempt is still waiting for the upstream, and send it twice.
pub(super) fn lease_outlasts_routes(
    c: &mut Checker<'_>,
    f: &FileDelivery,
    d: &DeliveryConfig,
    hops: &[HopConfig],
) {
    let longest = hops
        .iter()
        .flat_map(|h| &h.routes)
        .filter(|r| r.delivery == DeliveryMode::Queued)
        .max_by_key(|r| r.timeout);
    let Some(route) = longest else { return };
    // The worker also reads the answer and writes the outcome under the lease: leave it that much again.
    if d.lease >= route.timeout.saturating_mul(2) {
        return;
    }
    let message = format!(
        "must be at least twice the longest queued route's timeout (route {}: {}), so a delivery still under way is never taken back and sent twice; e.g. lease = \"{}\"",
        route.name,
        human(route.timeout),
        human(route.timeout.saturating_mul(2))
    );
    match &f.lease {
        Some(v) => c.problem(v, "delivery.lease", message),
        None => c.missing("delivery.lease", message),
    }
}

#[cfg(test)]
mod tests {
    use crate::tests::problems_of;

    #[test]
    fn the_journal_lives_beside_the_config_unless_it_is_postgresql() {
        let c = crate::parse(crate::EMBEDDED, "t.toml", std::path::Path::new("/etc/lgsp")).unwrap();
        assert_eq!(c.journal.url, "sqlite:///etc/lgsp/journal.db");
        assert_eq!(
            c.journal.retention,
            std::time::Duration::from_secs(1825 * 86_400)
        );
        let p = problems_of("url = \"sqlite://journal.db\"", "url = \"mysql://x\"");
        assert_eq!(p[0].field, "journal.url");
        let p = problems_of("max_backoff = \"5m\"", "max_backoff = \"1ms\"");
        assert_eq!(p[0].field, "delivery.max_backoff");
    }

    #[test]
    fn a_lease_shorter_than_a_queued_route_could_send_a_packet_twice() {
        let text = crate::EMBEDDED
            .replacen("delivery = \"direct\"", "delivery = \"queued\"", 1)
            .replacen("lease = \"2m\"", "lease = \"15s\"", 1);
        let e = crate::parse(&text, "t.toml", std::path::Path::new("/etc/lgsp")).unwrap_err();
        let p = &e.problems[0];
        assert_eq!(p.field, "delivery.lease");
        assert!(p.message.contains("route HoSoCBCCVC: 30s"), "{p:?}");
        // Direct routes hold no lease.
        let direct = crate::EMBEDDED.replacen("lease = \"2m\"", "lease = \"1s\"", 1);
        assert!(crate::parse(&direct, "t.toml", std::path::Path::new("/")).is_ok());
    }

    #[test]
    fn a_messages_route_is_read_only_and_answers_from_the_journal() {
        let route = "[[hop.route]]\nname = \"validate\"";
        let messages = "[[hop.route]]\nname = \"m2\"\nmethods = [\"GET\"]\nprefix = \"/lgsp/v1/m2\"\nmessages = true\nagencies = [\"*\"]\n";
        let ok = crate::EMBEDDED.replacen(route, &format!("{messages}{route}"), 1);
        let c = crate::parse(&ok, "t.toml", std::path::Path::new("/")).unwrap();
        let m = c.hops[0].routes.iter().find(|r| r.name == "m2").unwrap();
        assert!(m.messages && m.local() && m.trial_upstream.is_none());
        let posting = ok.replacen(
            "name = \"m2\"\nmethods = [\"GET\"]",
            "name = \"m2\"\nmethods = [\"POST\"]",
            1,
        );
        let e = crate::parse(&posting, "t.toml", std::path::Path::new("/")).unwrap_err();
        assert!(
            e.problems.iter().any(|p| p.field.ends_with(".methods")),
            "{e}"
        );
        let forwarding = ok.replacen(
            "messages = true\n",
            "messages = true\nupstream = \"https://localhost:1\"\n",
            1,
        );
        let e = crate::parse(&forwarding, "t.toml", std::path::Path::new("/")).unwrap_err();
        assert!(
            e.problems.iter().any(|p| p.field.ends_with(".upstream")),
            "{e}"
        );
    }
}
