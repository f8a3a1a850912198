//! API keys. Only their SHA-256 is kept; lookup hashes the presented key, narrows to a bucket by the first
//! 8 bytes of the digest and compares whole digests in constant time.

use std::collections::HashMap;
use std::sync::Arc;

use lgsp_config::{AgencyConfig, KeyKind};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a valid key says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub agency: Arc<str>,
    pub kind: KeyKind,
    /// The key's id: the first 16 hex digits of its SHA-256 (what tokens issued for it name as `kid`).
    pub id: Arc<str>,
    /// When it works (Unix seconds): from `not_before`, until `not_after` (exclusive).
    pub not_before: Option<i64>,
    pub not_after: Option<i64>,
}

impl KeyRecord {
    /// Whether the key works at `now` (Unix seconds).
    pub fn valid_at(&self, now: i64) -> bool {
        self.not_before.is_none_or(|b| now >= b) && self.not_after.is_none_or(|a| now < a)
    }
}

/// Every configured key, by digest, and by id.
#[derive(Debug, Default, Clone)]
pub struct KeyStore {
    buckets: HashMap<u64, Vec<([u8; 32], KeyRecord)>>,
    ids: HashMap<Arc<str>, KeyRecord>,
}

/// The id of a key given its SHA-256.
pub fn key_id(sha256: &[u8; 32]) -> String {
    hex::encode(&sha256[..8])
}

/// Longest key accepted; anything longer is refused before hashing.
const MAX_KEY_LEN: usize = 256;

fn bucket(digest: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(b)
}

impl KeyStore {
    pub fn from_agencies(agencies: &[AgencyConfig]) -> Self {
        let mut buckets: HashMap<u64, Vec<([u8; 32], KeyRecord)>> = HashMap::new();
        let mut ids = HashMap::new();
        for a in agencies {
            let agency: Arc<str> = Arc::from(a.code.as_str());
            for k in &a.keys {
                let record = KeyRecord {
                    agency: agency.clone(),
                    kind: k.kind,
                    id: Arc::from(key_id(&k.sha256)),
                    not_before: k.not_before,
                    not_after: k.not_after,
                };
                ids.insert(record.id.clone(), record.clone());
                buckets
                    .entry(bucket(&k.sha256))
                    .or_default()
                    .push((k.sha256, record));
            }
        }
        KeyStore { buckets, ids }
    }

    /// The record of a presented key, if it is one of ours.
    pub fn lookup(&self, presented: &[u8]) -> Option<&KeyRecord> {
        if presented.is_empty() || presented.len() > MAX_KEY_LEN {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let candidates = self.buckets.get(&bucket(&digest))?;
        // No early exit inside the bucket: every candidate is compared in full.
        let mut found = None;
        for (stored, record) in candidates {
            if bool::from(stored.ct_eq(&digest)) {
                found = Some(record);
            }
        }
        found
    }

    /// The record of the key with this id (a token's `kid`), while it is configured.
    pub fn by_id(&self, id: &str) -> Option<&KeyRecord> {
        self.ids.get(id)
    }

    pub fn len(&self) -> usize {
        self.buckets.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod validity {
    use super::*;

    #[test]
    fn a_key_works_from_not_before_until_not_after() {
        let r = KeyRecord {
            agency: Arc::from("000.00.00.H29"),
            kind: KeyKind::Production,
            id: Arc::from("id"),
            not_before: Some(100),
            not_after: Some(200),
        };
        assert!(!r.valid_at(99));
        assert!(r.valid_at(100));
        assert!(r.valid_at(199));
        assert!(!r.valid_at(200));
        let open = KeyRecord {
            not_before: None,
            not_after: None,
            ..r
        };
        assert!(open.valid_at(0) && open.valid_at(i64::MAX));
    }
}

/// SHA-256 of a key, lower-case hex: what `gateway.toml` stores.
pub fn sha256_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A fresh random key: `lgsp_<kind>_` + 64 hex digits (256 bits from the OS RNG).
pub fn generate_key(kind: KeyKind) -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let tag = match kind {
        KeyKind::Trial => "trial",
        KeyKind::Production => "prod",
    };
    Ok(format!("lgsp_{tag}_{}", hex::encode(bytes)))
}

/// The published dev key of a dev agency (the default `gateway.toml` holds its hash). Never for production.
pub fn dev_key(agency: &str, kind: KeyKind) -> String {
    format!("lgsp_dev_{agency}_{}", kind.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> KeyStore {
        let cfg = lgsp_config::embedded().unwrap();
        KeyStore::from_agencies(&cfg.agencies)
    }

    #[test]
    fn dev_keys_of_the_default_config_resolve_to_their_agency() {
        let s = store();
        let r = s
            .lookup(dev_key("000.00.00.H29", KeyKind::Production).as_bytes())
            .unwrap();
        assert_eq!((&*r.agency, r.kind), ("000.00.00.H29", KeyKind::Production));
        let r = s
            .lookup(dev_key("000.00.00.G09", KeyKind::Trial).as_bytes())
            .unwrap();
        assert_eq!((&*r.agency, r.kind), ("000.00.00.G09", KeyKind::Trial));
    }

    #[test]
    fn unknown_empty_and_oversized_keys_are_refused() {
        let s = store();
        assert!(s.lookup(b"lgsp_prod_00").is_none());
        assert!(s.lookup(b"").is_none());
        assert!(s.lookup(&[b'a'; 10_000]).is_none());
    }

    #[test]
    fn generated_keys_are_random_and_hash_like_the_config_expects() {
        let a = generate_key(KeyKind::Production).unwrap();
        let b = generate_key(KeyKind::Production).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("lgsp_prod_") && a.len() == 10 + 64);
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
