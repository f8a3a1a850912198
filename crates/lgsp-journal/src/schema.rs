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

/// One writer and one chain per replica: records per chain (`journal_chains` replaces the one head row every
/// appender waited for), bodies stored once by their SHA-256 and never rewritten, the outbox as small rows of its
/// own (a retry rewrites a few bytes, not the packet), idempotency keys scoped by mode, and an index of each
/// message's records (what `verify` checks the derived tables against).
fn v5(d: Dialect) -> Vec<String> {
    let blob = blob(d);
    // SQLite keeps a table clustered on its primary key when told (records are appended in key order; outbox rows
    // are small); PostgreSQL tables are heaps either way.
    let clustered = match d {
        Dialect::Sqlite => " WITHOUT ROWID",
        Dialect::Postgres => "",
    };
    let mut s = vec![
        "ALTER TABLE journal_records RENAME TO journal_records_v4".to_owned(),
        "DROP INDEX IF EXISTS journal_records_at".to_owned(),
        format!(
            "CREATE TABLE journal_records (
                chain TEXT NOT NULL,
                seq BIGINT NOT NULL,
                at_us BIGINT NOT NULL,
                kind TEXT NOT NULL,
                hop TEXT NOT NULL,
                message_id TEXT NOT NULL,
                agency TEXT NOT NULL,
                content TEXT NOT NULL,
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL,
                PRIMARY KEY (chain, seq)
            )"
        ),
        "INSERT INTO journal_records (chain, seq, at_us, kind, hop, message_id, agency, content, prev_hash, hash)
            SELECT 'main', seq, at_us, kind, hop, message_id, agency, content, prev_hash, hash FROM journal_records_v4"
            .to_owned(),
        "DROP TABLE journal_records_v4".to_owned(),
        "CREATE INDEX journal_records_message ON journal_records (hop, message_id)".to_owned(),
        // One row per chain: its head, how far it was pruned, when its writer last committed.
        "CREATE TABLE journal_chains (
            chain TEXT PRIMARY KEY,
            seq BIGINT NOT NULL,
            hash TEXT NOT NULL,
            pruned_through BIGINT NOT NULL DEFAULT 0,
            alive_us BIGINT NOT NULL DEFAULT 0
        )"
        .to_owned(),
        "INSERT INTO journal_chains (chain, seq, hash, pruned_through)
            SELECT 'main', seq, hash, pruned_through FROM journal_head WHERE seq > 0 OR pruned_through > 0"
            .to_owned(),
        "DROP TABLE journal_head".to_owned(),
        format!(
            "CREATE TABLE journal_bodies (
                sha256 TEXT PRIMARY KEY,
                size BIGINT NOT NULL,
                stored_us BIGINT NOT NULL,
                body {blob} NOT NULL
            )"
        ),
        "CREATE INDEX journal_bodies_stored ON journal_bodies (stored_us)".to_owned(),
        format!(
            "CREATE TABLE outbox (
                hop TEXT NOT NULL,
                message_id TEXT NOT NULL,
                agency TEXT NOT NULL,
                body_sha256 TEXT NOT NULL,
                bytes BIGINT NOT NULL,
                delivery TEXT NOT NULL,
                accepted_us BIGINT NOT NULL,
                due_us BIGINT NOT NULL,
                attempts BIGINT NOT NULL DEFAULT 0,
                lease_owner TEXT,
                detail TEXT,
                PRIMARY KEY (hop, message_id)
            ){clustered}"
        ),
        "CREATE INDEX outbox_due ON outbox (hop, due_us)".to_owned(),
        "CREATE INDEX outbox_body ON outbox (body_sha256)".to_owned(),
    ];
    // The queued packets of the last version move to the outbox, their bodies to the body table.
    s.push(match d {
        Dialect::Sqlite => "INSERT INTO journal_bodies (sha256, size, stored_us, body)
            SELECT body_sha256, MAX(body_size), MAX(updated_us), body FROM messages WHERE body IS NOT NULL
            GROUP BY body_sha256"
            .to_owned(),
        Dialect::Postgres => "INSERT INTO journal_bodies (sha256, size, stored_us, body)
            SELECT DISTINCT ON (body_sha256) body_sha256, body_size, updated_us, body FROM messages
            WHERE body IS NOT NULL ORDER BY body_sha256, updated_us DESC"
            .to_owned(),
    });
    s.extend([
        "INSERT INTO outbox (hop, message_id, agency, body_sha256, bytes, delivery, accepted_us, due_us, attempts,
                lease_owner, detail)
            SELECT hop, message_id, agency, body_sha256, body_size, 'queued', accepted_us,
                COALESCE(next_attempt_us, updated_us), attempts, NULL, detail
            FROM messages WHERE status = 'queued' AND body IS NOT NULL"
            .to_owned(),
        // A queued message's retries live in its outbox row now; its row is as its acceptance record left it.
        "UPDATE messages SET attempts = 0, detail = NULL, updated_us = accepted_us WHERE status = 'queued'"
            .to_owned(),
        "DROP INDEX messages_due".to_owned(),
        "DROP INDEX messages_idempotency".to_owned(),
        "DROP INDEX messages_type_accepted".to_owned(),
    ]);
    for column in [
        "body",
        "next_attempt_us",
        "lease_owner",
        "lease_until_us",
        "body_until_us",
    ] {
        s.push(format!("ALTER TABLE messages DROP COLUMN {column}"));
    }
    s.extend([
        "ALTER TABLE messages ADD COLUMN answer_type TEXT".to_owned(),
        "CREATE UNIQUE INDEX messages_idempotency ON messages (hop, agency, mode, idempotency_key)
            WHERE idempotency_key IS NOT NULL"
            .to_owned(),
        "CREATE INDEX messages_subject ON messages (hop, agency, subject) WHERE subject IS NOT NULL".to_owned(),
        // What `settle_orphans` looks for: messages in progress whose packet the journal does not hold (a broker's);
        // a hop's own direct packets (their request kept) are not in it, so they cost it nothing.
        "CREATE INDEX messages_unleased ON messages (updated_us) WHERE status = 'in_progress' AND request IS NULL"
            .to_owned(),
    ]);
    s
}

/// SQLite: the outbox without its index of bodies, a b-tree more that every acceptance and every outcome wrote; the
/// body sweep gathers the outbox's bodies once per round instead (`writer::sweep`). PostgreSQL's sweep uses the
/// index: nothing changes there.
fn v6(d: Dialect) -> Vec<String> {
    match d {
        Dialect::Sqlite => vec!["DROP INDEX outbox_body".to_owned()],
        Dialect::Postgres => Vec::new(),
    }
}

/// SQLite: the last batch of the writer's redo log the database holds (`redo.rs`): a batch whose number is at most
/// this is not run again after a crash; and this database's token, which every frame of its log carries (a log
/// left beside a database file made anew is not run on it). PostgreSQL commits every batch: nothing changes there.
fn v7(d: Dialect) -> Vec<String> {
    match d {
        Dialect::Sqlite => vec![
            "CREATE TABLE journal_redo (id INTEGER PRIMARY KEY CHECK (id = 1), batch BIGINT NOT NULL,
                token BIGINT NOT NULL)"
                .to_owned(),
            "INSERT INTO journal_redo (id, batch, token) VALUES (1, 0, random())".to_owned(),
        ],
        Dialect::Postgres => Vec::new(),
    }
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
    Migration {
        version: 5,
        name: "chains per writer, bodies by SHA-256, outbox rows, idempotency by mode",
        statements: v5,
    },
    Migration {
        version: 6,
        name: "SQLite: no outbox index of bodies",
        statements: v6,
    },
    Migration {
        version: 7,
        name: "SQLite: the redo log's last batch",
        statements: v7,
    },
];

/// The table that remembers which migrations ran.
pub const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS journal_schema (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    applied_us BIGINT NOT NULL
)";
