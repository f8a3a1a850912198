//! `[[hop.route]]`: which requests a route takes (methods, path prefix, agencies), where they go (upstream,
//! rewrite, trial upstream, timeout, or a dry run), what it checks (message type, body size) and its rate limit.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use toml::Spanned;

use super::broker::{Broker, is_broker_url, parse_broker};
use super::check::Checker;
use super::{Origin, defaults};
use crate::file::{FileOverride, FileRoute};
use crate::parse::{parse_rate, parse_upstream};

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub methods: Vec<String>,
    pub prefix: String,
    /// Empty (no authority) on a dry-run route, which forwards nothing.
    pub upstream: Upstream,
    pub rewrite: Option<String>,
    /// A dry run: the packet at `{prefix}/{MessageType}` is validated with the full rules and the verdict
    /// answered; nothing is forwarded.
    pub dry_run: bool,
    /// The journal's message status API, answered by the hop itself (`GET {prefix}/{id}`, `GET {prefix}?…`).
    pub messages: bool,
    /// The agencies' inbox, answered by the hop itself from a JetStream subject per agency (`Broker::Nats`, its
    /// subject the prefix the agency's code is appended to).
    pub inbox: Option<Upstream>,
    /// Where trial-mode requests go (`base_path` replaces the matched prefix); `None`: this route takes no
    /// trial traffic. Defaults to the emulator of the same file, `/cbccvc/v1/{message type or route name}`.
    pub trial_upstream: Option<Upstream>,
    /// How a packet route delivers: at once, or from the outbox after a 202.
    pub delivery: DeliveryMode,
    /// A look-up route: the JSON Pointer (RFC 6901) into the upstream's answer that names the record's agency.
    /// A 2xx answer reaches the caller only when it names the caller's agency; otherwise the caller gets 404, as
    /// for an unknown id.
    pub owner: Option<String>,
    pub timeout: Duration,
    /// Agency codes allowed on this route; `None` means every known agency (`"*"`).
    pub agencies: Option<Vec<String>>,
    pub message_type: Option<String>,
    pub max_body_bytes: usize,
    /// The rate limit per (agency, route), if any.
    pub rate: Option<RateSpec>,
    /// Per-agency rates replacing `rate` for that agency.
    pub overrides: BTreeMap<String, RateSpec>,
}

/// How a packet route delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryMode {
    /// Forwarded now; the caller gets the upstream's answer.
    #[default]
    Direct,
    /// Journalled with its body, answered 202 Accepted, delivered from the outbox with retries.
    Queued,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `host:port`, also the bounded `upstream` metric label.
    pub authority: String,
    /// Path the upstream is mounted under, without a trailing slash (may be empty; always empty for a broker).
    pub base_path: String,
    /// A NATS JetStream or RabbitMQ target instead of an HTTPS endpoint.
    pub broker: Option<Broker>,
    /// Where the config names it (`check-config --connect` reports by it).
    pub origin: Origin,
}

impl Upstream {
    /// No upstream: a dry-run route's.
    pub fn none() -> Upstream {
        Upstream {
            authority: String::new(),
            base_path: String::new(),
            broker: None,
            origin: Origin::default(),
        }
    }
}

/// A rate and a burst, e.g. 20 per 1 s with a burst of 40.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    pub count: u32,
    pub period_secs: u32,
    pub burst: u32,
}

pub(super) fn route(
    c: &mut Checker<'_>,
    r: &FileRoute,
    field: &str,
    known: &HashSet<&str>,
) -> RouteConfig {
    let max_body = c.bounded(
        r.max_body_bytes.as_ref(),
        &format!("{field}.max_body_bytes"),
        defaults::MAX_BODY_BYTES,
        &defaults::MAX_BODY_BYTES_RANGE,
    );
    let config = RouteConfig {
        name: r.name.get_ref().clone(),
        methods: methods(c, r, field),
        prefix: path_prefix(c, &r.prefix, &format!("{field}.prefix")),
        rewrite: r
            .rewrite
            .as_ref()
            .map(|w| path_prefix(c, w, &format!("{field}.rewrite"))),
        upstream: upstream(c, r, field),
        dry_run: r.dry_run,
        messages: messages(c, r, field),
        inbox: inbox(c, r, field),
        trial_upstream: r.trial_upstream.as_ref().and_then(|t| {
            let f = format!("{field}.trial_upstream");
            url(c, t, &f)
        }),
        owner: owner(c, r, field),
        delivery: delivery(c, r, field),
        timeout: c.duration(
            r.timeout.as_ref(),
            &format!("{field}.timeout"),
            defaults::ROUTE_TIMEOUT,
        ),
        agencies: agencies(c, r, field, known),
        message_type: message_type(c, r, field),
        max_body_bytes: max_body,
        rate: rate(c, r, field),
        overrides: overrides(c, &r.overrides, field, known),
    };
    broker_route(c, r, field, &config);
    config
}

/// A route with a broker upstream publishes packets: it takes POST and PUT only, and neither rewrites a path nor
/// reads an answer's owner (a broker answers with a confirmation, not a record).
fn broker_route(c: &mut Checker<'_>, r: &FileRoute, field: &str, config: &RouteConfig) {
    let brokered = config.upstream.broker.is_some()
        || config
            .trial_upstream
            .as_ref()
            .is_some_and(|t| t.broker.is_some());
    if !brokered {
        return;
    }
    if let Some(m) = config
        .methods
        .iter()
        .find(|m| !matches!(m.as_str(), "POST" | "PUT"))
    {
        c.problem(
            &r.name,
            format!("{field}.methods"),
            format!("`{m}` has no packet to publish; a route with a broker upstream takes methods = [\"POST\"] (or PUT)"),
        );
    }
    if let Some(w) = &r.rewrite {
        c.problem(
            w,
            format!("{field}.rewrite"),
            "a broker upstream has no path to rewrite; remove `rewrite` (the subject or routing key is in the URL)",
        );
    }
    if let Some(o) = &r.owner {
        c.problem(
            o,
            format!("{field}.owner"),
            "a broker answers with a confirmation, not a record; `owner` belongs to look-up routes with an https upstream",
        );
    }
}

fn methods(c: &mut Checker<'_>, r: &FileRoute, field: &str) -> Vec<String> {
    if r.methods.is_empty() {
        c.problem(
            &r.name,
            format!("{field}.methods"),
            "list at least one method, e.g. [\"POST\"]",
        );
    }
    let mut methods = Vec::new();
    for m in &r.methods {
        let up = m.get_ref().to_ascii_uppercase();
        if defaults::METHODS.contains(&up.as_str()) {
            methods.push(up);
        } else {
            c.problem(
                m,
                format!("{field}.methods"),
                format!(
                    "`{}` is not one of {}",
                    m.get_ref(),
                    defaults::METHODS.join(", ")
                ),
            );
        }
    }
    methods
}

/// An absolute path prefix; `"/a/b/"` and `"/a/b"` are the same prefix, `"/"` stays `"/"`.
fn path_prefix(c: &mut Checker<'_>, v: &Spanned<String>, field: &str) -> String {
    let s = v.get_ref();
    if !s.starts_with('/') || s.contains(['?', '#', ' ']) || s.contains("//") {
        c.problem(v, field, format!("`{s}` must be an absolute path like \"/lgsp/v1/HoSoCBCCVC\" without query or spaces"));
    }
    let trimmed = s.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn url(c: &mut Checker<'_>, v: &Spanned<String>, field: &str) -> Option<Upstream> {
    let parsed = if is_broker_url(v.get_ref()) {
        parse_broker(v.get_ref()).map(|(authority, b)| (authority, String::new(), Some(b)))
    } else {
        parse_upstream(v.get_ref()).map(|(authority, base)| (authority, base, None))
    };
    match parsed {
        Ok((authority, base_path, broker)) => Some(Upstream {
            authority,
            base_path,
            broker,
            origin: c.origin(v, field),
        }),
        Err(e) => {
            c.problem(v, field, e);
            None
        }
    }
}

impl RouteConfig {
    /// Answered by the hop itself (a dry run, the messages API): no upstream.
    pub fn local(&self) -> bool {
        self.dry_run || self.messages || self.inbox.is_some()
    }
}

/// The production upstream: required, except on a dry-run, messages or inbox route, which must have none.
fn upstream(c: &mut Checker<'_>, r: &FileRoute, field: &str) -> Upstream {
    let f = format!("{field}.upstream");
    match (&r.upstream, r.dry_run || r.messages || r.inbox.is_some()) {
        (Some(u), false) => url(c, u, &f).unwrap_or_else(Upstream::none),
        (None, true) => Upstream::none(),
        (Some(u), true) => {
            c.problem(
                u,
                f,
                "a dry-run, messages or inbox route forwards nothing; remove `upstream`",
            );
            Upstream::none()
        }
        (None, false) => {
            c.problem(
                &r.name,
                f,
                "name the upstream, e.g. upstream = \"https://ndxp.example:8444\" (or set dry_run = true)",
            );
            Upstream::none()
        }
    }
}

/// The agencies allowed; `None` when the list holds `"*"`.
fn agencies(
    c: &mut Checker<'_>,
    r: &FileRoute,
    field: &str,
    known: &HashSet<&str>,
) -> Option<Vec<String>> {
    if r.agencies.is_empty() {
        c.problem(
            &r.name,
            format!("{field}.agencies"),
            "list the agency codes allowed here, or [\"*\"] for every agency",
        );
    }
    let mut agencies = Some(Vec::new());
    for a in &r.agencies {
        if a.get_ref() == "*" {
            agencies = None;
        } else if !known.contains(a.get_ref().as_str()) {
            let message = format!("`{}` is not an [[agency]] code in this file", a.get_ref());
            c.problem(a, format!("{field}.agencies"), message);
        } else if let Some(list) = agencies.as_mut() {
            list.push(a.get_ref().clone());
        }
    }
    agencies
}

/// The first of `settings` (set, name) that is set: what a route the hop answers itself must not have.
fn first_set(settings: &[(bool, &'static str)]) -> Option<&'static str> {
    settings.iter().find_map(|(set, what)| set.then_some(*what))
}

/// A route the hop answers itself from what it holds: GET only.
fn get_only(c: &mut Checker<'_>, r: &FileRoute, field: &str, message: &str) {
    if r.methods
        .iter()
        .any(|m| !m.get_ref().eq_ignore_ascii_case("GET"))
    {
        c.problem(&r.name, format!("{field}.methods"), message);
    }
}

/// An inbox route reads a NATS subject per agency: GET only, and nothing of a route that forwards.
fn inbox(c: &mut Checker<'_>, r: &FileRoute, field: &str) -> Option<Upstream> {
    let v = r.inbox.as_ref()?;
    let f = format!("{field}.inbox");
    let clash = first_set(&[
        (r.dry_run, "`dry_run`"),
        (r.messages, "`messages`"),
        (r.message_type.is_some(), "`message_type`"),
        (r.owner.is_some(), "`owner`"),
        (r.trial_upstream.is_some(), "`trial_upstream`"),
        (r.delivery.is_some(), "`delivery`"),
        (r.rewrite.is_some(), "`rewrite`"),
    ]);
    if let Some(what) = clash {
        c.problem(
            v,
            f.clone(),
            format!("an inbox route answers from its broker; remove {what}"),
        );
    }
    get_only(c, r, field, "an inbox route takes methods = [\"GET\"] only");
    let u = url(c, v, &f)?;
    if !matches!(u.broker, Some(Broker::Nats { .. })) {
        c.problem(
            v,
            f,
            "an inbox reads a JetStream subject per agency; write \"nats://host:port/<subject prefix>\", e.g. \"nats://nats.example:4222/cbccvc.out\"",
        );
        return None;
    }
    Some(u)
}

/// `messages = true`: the journal's status API, GET only, checking no packet and forwarding nothing.
fn messages(c: &mut Checker<'_>, r: &FileRoute, field: &str) -> bool {
    if !r.messages {
        return false;
    }
    let clash = first_set(&[
        (r.dry_run, "`dry_run`"),
        (r.message_type.is_some(), "`message_type`"),
        (r.owner.is_some(), "`owner`"),
        (r.trial_upstream.is_some(), "`trial_upstream`"),
        (r.delivery.is_some(), "`delivery`"),
    ]);
    if let Some(what) = clash {
        c.problem(
            &r.name,
            format!("{field}.messages"),
            format!("a messages route answers from the journal; remove {what}"),
        );
    }
    get_only(
        c,
        r,
        field,
        "a messages route is read only: methods = [\"GET\"]",
    );
    true
}

/// `delivery`: `direct` (the default) or `queued`, which only a packet route that forwards can be.
fn delivery(c: &mut Checker<'_>, r: &FileRoute, field: &str) -> DeliveryMode {
    let Some(d) = &r.delivery else {
        return DeliveryMode::Direct;
    };
    let f = format!("{field}.delivery");
    match d.get_ref().as_str() {
        "direct" => DeliveryMode::Direct,
        "queued" if r.message_type.is_some() && !r.dry_run => DeliveryMode::Queued,
        "queued" => {
            c.problem(
                d,
                f,
                "only a packet route (with `message_type`) that forwards can be queued",
            );
            DeliveryMode::Direct
        }
        other => {
            c.problem(
                d,
                f,
                format!("`{other}` is not a delivery; write \"direct\" or \"queued\""),
            );
            DeliveryMode::Direct
        }
    }
}

/// A look-up route's owner pointer: a JSON Pointer, on a route that forwards.
fn owner(c: &mut Checker<'_>, r: &FileRoute, field: &str) -> Option<String> {
    let o = r.owner.as_ref()?;
    let f = format!("{field}.owner");
    if r.dry_run || r.message_type.is_some() {
        c.problem(
            o,
            f,
            "`owner` marks a look-up route (its answers name their agency); a packet or dry-run route has none",
        );
        return None;
    }
    if !o.get_ref().starts_with('/') {
        let message = format!(
            "`{}` is not a JSON Pointer; write the path to the agency code in the upstream's answer, e.g. \"/agency\"",
            o.get_ref()
        );
        c.problem(o, f, message);
        return None;
    }
    Some(o.get_ref().clone())
}

fn message_type(c: &mut Checker<'_>, r: &FileRoute, field: &str) -> Option<String> {
    let m = r.message_type.as_ref()?;
    let f = format!("{field}.message_type");
    if r.dry_run {
        c.problem(
            m,
            f,
            "a dry-run route takes the message type from the path ({prefix}/{MessageType}); remove `message_type`",
        );
        return None;
    }
    if lgsp_schema::MESSAGE_TYPES.contains(&m.get_ref().as_str()) {
        return Some(m.get_ref().clone());
    }
    let message = format!(
        "`{}` is not a message type; use one of {}",
        m.get_ref(),
        lgsp_schema::MESSAGE_TYPES.join(", ")
    );
    c.problem(m, f, message);
    None
}

/// The route's rate: `rate` and `burst` come together or not at all.
fn rate(c: &mut Checker<'_>, r: &FileRoute, field: &str) -> Option<RateSpec> {
    match (&r.rate, &r.burst) {
        (Some(rate), Some(burst)) => rate_spec(c, rate, burst, field),
        (None, None) => None,
        (Some(rate), None) => {
            let fix = "a rate needs a burst too, e.g. burst = 40";
            c.problem(rate, format!("{field}.burst"), fix);
            None
        }
        (None, Some(burst)) => {
            let fix = "a burst needs a rate too, e.g. rate = \"20/s\"";
            c.problem(burst, format!("{field}.rate"), fix);
            None
        }
    }
}

/// `field.rate` / `field.burst` into a spec (None when either is wrong; each problem recorded).
pub(super) fn rate_spec(
    c: &mut Checker<'_>,
    rate: &Spanned<String>,
    burst: &Spanned<u64>,
    field: &str,
) -> Option<RateSpec> {
    let parsed = parse_rate(rate.get_ref());
    if let Err(e) = &parsed {
        c.problem(rate, format!("{field}.rate"), e.clone());
    }
    let b = *burst.get_ref();
    if !defaults::BURST_RANGE.contains(&b) {
        let (lo, hi) = (defaults::BURST_RANGE.start(), defaults::BURST_RANGE.end());
        c.problem(
            burst,
            format!("{field}.burst"),
            format!("choose a burst between {lo} and {hi}"),
        );
        return None;
    }
    let (count, period_secs) = parsed.ok()?;
    Some(RateSpec {
        count,
        period_secs,
        burst: u32::try_from(b).unwrap_or(u32::MAX),
    })
}

fn overrides(
    c: &mut Checker<'_>,
    list: &[FileOverride],
    field: &str,
    known: &HashSet<&str>,
) -> BTreeMap<String, RateSpec> {
    let mut out = BTreeMap::new();
    for (k, o) in list.iter().enumerate() {
        let of = format!("{field}.overrides[{k}]");
        if !known.contains(o.agency.get_ref().as_str()) {
            let message = format!(
                "`{}` is not an [[agency]] code in this file",
                o.agency.get_ref()
            );
            c.problem(&o.agency, format!("{of}.agency"), message);
        }
        if let Some(spec) = rate_spec(c, &o.rate, &o.burst, &of) {
            out.insert(o.agency.get_ref().clone(), spec);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::tests::problems_of;

    #[test]
    fn a_look_up_names_its_owner_field_as_a_json_pointer() {
        let c = crate::embedded().unwrap();
        let receipts = c.hops[0]
            .routes
            .iter()
            .find(|r| r.name == "BienNhan")
            .unwrap();
        assert_eq!(receipts.owner.as_deref(), Some("/agency"));
        let p = problems_of("owner = \"/agency\"", "owner = \"agency\"");
        assert!(p[0].field.ends_with(".owner"), "{p:?}");
        assert!(p[0].message.contains("JSON Pointer"), "{p:?}");
        let p = problems_of(
            "message_type = \"HoSoCBCCVC\"",
            "message_type = \"HoSoCBCCVC\"\nowner = \"/agency\"",
        );
        assert!(p[0].message.contains("look-up route"), "{p:?}");
    }

    #[test]
    fn methods_must_be_known_and_rates_come_with_bursts() {
        let p = problems_of(
            "methods = [\"POST\", \"PUT\"]",
            "methods = [\"POST\", \"BREW\"]",
        );
        assert_eq!(p[0].field, "hop[0].route[0].methods");
        assert!(p[0].message.contains("`BREW` is not one of"), "{p:?}");
        let p = problems_of("burst = 40\n# Per-agency", "# Per-agency");
        assert_eq!(p[0].field, "hop[0].route[0].burst");
        let p = problems_of("burst = 40\n# Per-agency", "burst = 0\n# Per-agency");
        assert_eq!(p[0].field, "hop[0].route[0].burst");
        assert!(p[0].message.contains("between 1 and 1000000"), "{p:?}");
    }

    #[test]
    fn overrides_name_known_agencies_with_valid_rates() {
        let p = problems_of(
            "overrides = []",
            "overrides = [{ agency = \"000.00.00.X01\", rate = \"5/fortnight\", burst = 1 }]",
        );
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "hop[0].route[0].overrides[0].agency",
                "hop[0].route[0].overrides[0].rate"
            ]
        );
    }

    #[test]
    fn prefixes_are_absolute_and_the_body_limit_bounded() {
        let p = problems_of(
            "prefix = \"/lgsp/v1/HoSoCBCCVC\"",
            "prefix = \"lgsp/v1/HoSoCBCCVC?x\"",
        );
        assert_eq!(p[0].field, "hop[0].route[0].prefix");
        let p = problems_of(
            "max_body_bytes = 8388608\n# Rate",
            "max_body_bytes = 0\n# Rate",
        );
        assert_eq!(p[0].field, "hop[0].route[0].max_body_bytes");
        assert!(p[0].message.contains("between 1 and 1073741824"), "{p:?}");
    }
}
