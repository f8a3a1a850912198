//! The journal's tables, as versioned migrations per database. Applied in order at open (or by
//! `lgsp-gateway journal migrate`), each in its own transaction, recorded in `journal_schema`.

/// Which SQL a statement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// One migration: its version and its statements (run in order).
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub statements: fn(Dialect) -> Vec<String>,
}

fn blob(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "BLOB",
        Dialect::Postgres => "BYTEA",
    }
}

fn v1(d: Dialect) -> Vec<String> {
    vec![
        // The append-only chain: one record per acceptance and per outcome.
        "CREATE TABLE journal_records (
            seq BIGINT PRIMARY KEY,
            at_us BIGINT NOT NULL,
            kind TEXT NOT NULL,
            hop TEXT NOT NULL,
            message_id TEXT NOT NULL,
            agency TEXT NOT NULL,
            content TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        )"
        .to_owned(),
        "CREATE INDEX journal_records_at ON journal_records (at_us)".to_owned(),
        // The chain's head: the row every appending transaction updates first, which serialises appenders.
        "CREATE TABLE journal_head (
            id INTEGER PRIMARY KEY,
            seq BIGINT NOT NULL,
            hash TEXT NOT NULL
        )"
        .to_owned(),
        format!(
            "INSERT INTO journal_head (id, seq, hash) VALUES (1, 0, '{}')",
            crate::chain::GENESIS
        ),
        // Each message's current state, its idempotency key and (queued, or kept) its body.
        format!(
            "CREATE TABLE messages (
            hop TEXT NOT NULL,
            message_id TEXT NOT NULL,
            agency TEXT NOT NULL,
            route TEXT NOT NULL,
            message_type TEXT,
            mode TEXT NOT NULL,
            idempotency_key TEXT,
            body_sha256 TEXT NOT NULL,
            body_size BIGINT NOT NULL,
            delivery TEXT NOT NULL,
            request TEXT,
            body {blob},
            status TEXT NOT NULL,
            upstream_status BIGINT,
            receipt TEXT,
            detail TEXT,
            accepted_us BIGINT NOT NULL,
            updated_us BIGINT NOT NULL,
            attempts BIGINT NOT NULL DEFAULT 0,
            next_attempt_us BIGINT,
            lease_owner TEXT,
            lease_until_us BIGINT,
            body_until_us BIGINT,
            PRIMARY KEY (hop, message_id)
        )",
            blob = blob(d)
        ),
        "CREATE UNIQUE INDEX messages_idempotency ON messages (hop, agency, idempotency_key)
            WHERE idempotency_key IS NOT NULL"
            .to_owned(),
        "CREATE INDEX messages_agency_accepted ON messages (agency, accepted_us)".to_owned(),
        "CREATE INDEX messages_due ON messages (status, next_attempt_us)".to_owned(),
    ]
}

/// The head remembers how far the chain was pruned, so `verify` can tell a record pruned by the retention from one
/// removed from the start of the chain by hand.
fn v2(_: Dialect) -> Vec<String> {
    vec!["ALTER TABLE journal_head ADD COLUMN pruned_through BIGINT NOT NULL DEFAULT 0".to_owned()]
}

/// Whose profile a packet is (SoCCCD) and what a verified approval approved, so approvals are checked against the
/// profiles sent and the monthly report names the profiles still unapproved.
fn v3(_: Dialect) -> Vec<String> {
    vec![
        "ALTER TABLE messages ADD COLUMN subject TEXT".to_owned(),
        "ALTER TABLE messages ADD COLUMN approval TEXT".to_owned(),
        "CREATE INDEX messages_type_accepted ON messages (hop, agency, message_type, accepted_us)"
            .to_owned(),
    ]
}

/// The relaying hop's signature (RFC 9421) of each packet it handed on.
fn v4(_: Dialect) -> Vec<String> {
    vec!["ALTER TABLE messages ADD COLUMN hop_signature TEXT".to_owned()]
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "records, head, messages",
        statements: v1,
    },
    Migration {
        version: 2,
        name: "head: pruned_through",
        statements: v2,
    },
    Migration {
        version: 3,
        name: "messages: subject, approval",
        statements: v3,
    },
    Migration {
        version: 4,
        name: "messages: hop_signature",
        statements: v4,
    },
];

/// The table that remembers which migrations ran.
pub const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS journal_schema (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    applied_us BIGINT NOT NULL
)";
