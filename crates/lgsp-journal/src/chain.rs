//! The hash chain: each record holds the hash of the one before it, and its own hash covers that link and its
//! content, so a record changed, removed or inserted after the fact breaks every hash from there on.

use sha2::{Digest, Sha256};

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of a record: SHA-256 over its sequence number, its link to the previous record and its content.
pub fn hash(seq: i64, prev_hash: &str, content: &str) -> String {
    let mut h = Sha256::new();
    h.update(seq.to_be_bytes());
    h.update(prev_hash.as_bytes());
    h.update([0u8]);
    h.update(content.as_bytes());
    hex::encode(h.finalize())
}

/// Why a chain does not verify, at its first broken record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("record {seq}: sequence number out of order (expected {expected})")]
    Gap { seq: i64, expected: i64 },
    #[error("record {seq}: its link does not name the record before it")]
    Link { seq: i64 },
    #[error("record {seq}: its content does not match its hash (changed after it was written)")]
    Content { seq: i64 },
    #[error(
        "the chain ends at record {last}, but its head says {head} records were written (the last ones removed)"
    )]
    Truncated { last: i64, head: i64 },
    #[error(
        "the chain goes on to record {last}, past its head at {head} (records added without the writer's head)"
    )]
    Beyond { last: i64, head: i64 },
}

/// Checks records in sequence order, carrying the state from one page to the next.
#[derive(Debug, Clone)]
pub struct Verifier {
    expected_seq: i64,
    prev_hash: String,
    pub checked: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            expected_seq: 1,
            prev_hash: GENESIS.to_owned(),
            checked: 0,
        }
    }
}

impl Verifier {
    /// A verifier that trusts the first record it is given (`seq`, linked to `prev_hash`): the oldest record kept
    /// once older ones were pruned.
    pub fn starting_at(seq: i64, prev_hash: &str) -> Verifier {
        Verifier {
            expected_seq: seq,
            prev_hash: prev_hash.to_owned(),
            checked: 0,
        }
    }

    /// After the last record: the chain must reach the head, and its last hash be the head's (a last record
    /// rewritten with a fresh hash has no successor to expose it, but the head does).
    pub fn end(&self, head_seq: i64, head_hash: &str) -> Result<(), Broken> {
        let last = self.expected_seq - 1;
        if last > head_seq {
            return Err(Broken::Beyond {
                last,
                head: head_seq,
            });
        }
        if last < head_seq {
            return Err(Broken::Truncated {
                last,
                head: head_seq,
            });
        }
        if self.checked > 0 && self.prev_hash != head_hash {
            return Err(Broken::Link { seq: head_seq });
        }
        Ok(())
    }

    pub fn next(
        &mut self,
        seq: i64,
        prev_hash: &str,
        content: &str,
        stored_hash: &str,
    ) -> Result<(), Broken> {
        if seq != self.expected_seq {
            return Err(Broken::Gap {
                seq,
                expected: self.expected_seq,
            });
        }
        if prev_hash != self.prev_hash {
            return Err(Broken::Link { seq });
        }
        if hash(seq, prev_hash, content) != stored_hash {
            return Err(Broken::Content { seq });
        }
        self.expected_seq += 1;
        self.prev_hash = stored_hash.to_owned();
        self.checked += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_verifies_and_every_change_breaks_it_where_it_was_made() {
        let contents = ["a", "b", "c"];
        let mut rows = Vec::new();
        let mut prev = GENESIS.to_owned();
        for (i, c) in contents.iter().enumerate() {
            let seq = i as i64 + 1;
            let h = hash(seq, &prev, c);
            rows.push((seq, prev.clone(), (*c).to_owned(), h.clone()));
            prev = h;
        }
        let verify = |rows: &[(i64, String, String, String)]| {
            let mut v = Verifier::default();
            rows.iter()
                .try_for_each(|(s, p, c, h)| v.next(*s, p, c, h))
                .map(|()| v.checked)
        };
        assert_eq!(verify(&rows), Ok(3));
        let mut changed = rows.clone();
        changed[1].2 = "B".into();
        assert_eq!(verify(&changed), Err(Broken::Content { seq: 2 }));
        let mut removed = rows.clone();
        removed.remove(1);
        assert_eq!(
            verify(&removed),
            Err(Broken::Gap {
                seq: 3,
                expected: 2
            })
        );
        // Rewritten with a fresh hash: the next record's link exposes it.
        let mut rehashed = rows.clone();
        rehashed[1].2 = "B".into();
        rehashed[1].3 = hash(2, &rehashed[1].1, "B");
        assert_eq!(verify(&rehashed), Err(Broken::Link { seq: 3 }));
        // The last record rewritten with a fresh hash, or removed: the head exposes it.
        let head = rows[2].3.clone();
        let mut v = Verifier::default();
        let mut last = rows.clone();
        last[2].2 = "C".into();
        last[2].3 = hash(3, &last[2].1, "C");
        last.iter()
            .for_each(|(s, p, c, h)| v.next(*s, p, c, h).unwrap());
        assert_eq!(v.end(3, &head), Err(Broken::Link { seq: 3 }));
        let mut v = Verifier::default();
        rows[..2]
            .iter()
            .for_each(|(s, p, c, h)| v.next(*s, p, c, h).unwrap());
        assert_eq!(v.end(3, &head), Err(Broken::Truncated { last: 2, head: 3 }));
        // A record added past the head, without moving it.
        let mut v = Verifier::default();
        rows.iter()
            .for_each(|(s, p, c, h)| v.next(*s, p, c, h).unwrap());
        assert_eq!(
            v.end(2, &rows[1].3),
            Err(Broken::Beyond { last: 3, head: 2 })
        );
    }
}
