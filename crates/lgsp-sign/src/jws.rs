//! JWS (RFC 7515) over JSON approval packets: the same two signatures as XML-DSig carries in XML.
//!
//! A JSON `PheDuyetDuLieu` object holds `ChuKySo`, an array of signature entries of the general JWS JSON
//! serialization (`{"protected": …, "signature": …}`) whose payload is detached (RFC 7515 appendix F): it is the
//! JCS form (RFC 8785) of the `PheDuyetDuLieu` object without `ChuKySo`, so whitespace, key order and the other
//! signature never change what was signed. The protected header names `alg` (ES256, RS256, PS256) and `x5c` (the
//! signer's certificate first); no other header is trusted. The signature bytes are what XML-DSig's methods make
//! (ECDSA as r‖s), so both formats share one set of keys and algorithms (bergshamra's, on aws-lc-rs).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value};

use crate::xml::{Check, ECDSA_SHA256, Found, RSA_PSS_SHA256, RSA_SHA256, SignError, SigningKey};

/// The JWS `alg` of an XML-DSig signature method, and back.
const ALGS: &[(&str, &str)] = &[
    ("ES256", ECDSA_SHA256),
    ("RS256", RSA_SHA256),
    ("PS256", RSA_PSS_SHA256),
];

/// The field holding the signatures.
pub const FIELD: &str = "ChuKySo";

/// RFC 8785: the canonical text of a JSON value (keys sorted by UTF-16 code units, no whitespace, strings escaped
/// as ECMAScript does, integral numbers without a fraction).
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (_, Some(u), _) => out.push_str(&u.to_string()),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => {
                // ECMAScript prints 2.0 as 2.
                out.push_str(&format!("{f:.0}"));
            }
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                if let Some(v) = map.get(*k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The detached payload: the approval object without its signatures, canonical.
fn payload(object: &Map<String, Value>) -> String {
    let mut unsigned = object.clone();
    unsigned.remove(FIELD);
    canonical(&Value::Object(unsigned))
}

/// The object under the packet's single root key (`{"PheDuyetDuLieu": {…}}`).
pub fn approval_object(packet: &Value) -> Option<&Map<String, Value>> {
    packet.as_object()?.values().next()?.as_object()
}

fn check_entry(entry: &Value, payload_b64: &str) -> Check {
    let unsupported = |why: &str| Check::Unsupported(why.to_owned());
    let (Some(protected), Some(signature)) = (
        entry.get("protected").and_then(Value::as_str),
        entry.get("signature").and_then(Value::as_str),
    ) else {
        return unsupported("a signature entry needs `protected` and `signature`");
    };
    let Ok(header) = URL_SAFE_NO_PAD.decode(protected) else {
        return unsupported("`protected` is not base64url");
    };
    let Ok(header) = serde_json::from_slice::<Value>(&header) else {
        return unsupported("the protected header is not JSON");
    };
    let Some(method) = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(|a| ALGS.iter().find(|(alg, _)| *alg == a))
        .map(|(_, m)| *m)
    else {
        return unsupported("the protected header's alg is not ES256, RS256 or PS256");
    };
    if header.get("crit").is_some() || header.get("b64").is_some() {
        return unsupported(
            "the protected header asks for extensions (crit, b64) the profile does not use",
        );
    }
    let chain: Result<Vec<Vec<u8>>, _> = match header.get("x5c").and_then(Value::as_array) {
        Some(certs) if !certs.is_empty() && certs.len() <= 4 => certs
            .iter()
            .map(|c| {
                c.as_str()
                    .ok_or(())
                    .and_then(|c| STANDARD.decode(c).map_err(|_| ()))
            })
            .collect(),
        _ => Err(()),
    };
    let Ok(chain) = chain else {
        return unsupported(
            "the protected header carries no x5c (1 to 4 base64 certificates, the signer's first)",
        );
    };
    let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
        return unsupported("`signature` is not base64url");
    };
    let verified = bergshamra::keys::loader::load_x509_cert_der(&chain[0])
        .and_then(|key| {
            key.data
                .software_key()?
                .ok_or_else(|| bergshamra::Error::Key("no public key".into()))
        })
        .and_then(|key| {
            let input = format!("{protected}.{payload_b64}");
            bergshamra::crypto::sign::from_uri(method)?.verify(&key, input.as_bytes(), &signature)
        });
    match verified {
        Ok(true) => Check::Verified { chain },
        // The payload is the packet itself: a JWS cannot tell a changed packet from a wrong key.
        Ok(false) => Check::DigestMismatch(
            "the signature does not verify over this packet with the key of x5c[0]: the packet was changed, or signed with another key".into(),
        ),
        Err(e) => Check::Unsupported(format!("the signature cannot be checked: {e}")),
    }
}

/// Checks every entry of the approval's `ChuKySo`.
pub fn verify(object: &Map<String, Value>) -> Vec<Found> {
    let payload_b64 = URL_SAFE_NO_PAD.encode(payload(object));
    object
        .get(FIELD)
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| Found {
                    index: i + 1,
                    check: check_entry(e, &payload_b64),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Adds a signature by `key` to the approval's `ChuKySo`, leaving those it carries valid.
pub fn sign(packet: &mut Value, key: &SigningKey) -> Result<(), SignError> {
    let alg = ALGS
        .iter()
        .find(|(_, m)| *m == key.method)
        .map(|(a, _)| *a)
        .ok_or_else(|| SignError::Key(format!("no JWS alg for {}", key.method)))?;
    let object = packet
        .as_object_mut()
        .and_then(|o| o.values_mut().next())
        .and_then(Value::as_object_mut)
        .ok_or_else(|| SignError::Packet("not a {\"PheDuyetDuLieu\": {…}} object".into()))?;
    let x5c: Vec<Value> = key
        .chain
        .iter()
        .map(|c| Value::String(STANDARD.encode(c)))
        .collect();
    let header = serde_json::json!({ "alg": alg, "x5c": x5c });
    let protected = URL_SAFE_NO_PAD.encode(canonical(&header));
    let input = format!("{protected}.{}", URL_SAFE_NO_PAD.encode(payload(object)));
    let signature = key.software_key().and_then(|sk| {
        bergshamra::crypto::sign::from_uri(key.method)
            .and_then(|alg| alg.sign(&sk, input.as_bytes()))
            .map_err(|e| SignError::Sign(e.to_string()))
    })?;
    let entry = serde_json::json!({
        "protected": protected,
        "signature": URL_SAFE_NO_PAD.encode(signature),
    });
    match object
        .entry(FIELD)
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        Value::Array(entries) => entries.push(entry),
        _ => return Err(SignError::Packet(format!("`{FIELD}` is not an array"))),
    }
    let check = verify(object).pop().map(|f| f.check);
    match check {
        Some(Check::Verified { .. }) => Ok(()),
        Some(Check::DigestMismatch(_)) => Err(SignError::KeyMismatch),
        other => Err(SignError::Sign(format!(
            "the new signature does not verify: {other:?}"
        ))),
    }
}

/// The members of a JSON object in the order written, each value as its own text.
struct Members<'a>(Vec<(String, &'a serde_json::value::RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) =
                    m.next_entry::<String, &'de serde_json::value::RawValue>()?
                {
                    out.push(entry);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Where `part` (a slice of `text`) starts in it.
fn offset(text: &str, part: &str) -> usize {
    (part.as_ptr() as usize).saturating_sub(text.as_ptr() as usize)
}

/// Signs a JSON packet's text and writes the signature into it, leaving the rest of the text as it was (member
/// order, spacing): `ChuKySo` is rewritten in place, or added as the approval's last member.
pub fn sign_text(text: &str, key: &SigningKey) -> Result<String, SignError> {
    let bad = |e: serde_json::Error| SignError::Packet(format!("not JSON: {e}"));
    let mut value: Value = serde_json::from_str(text).map_err(bad)?;
    sign(&mut value, key)?;
    let signatures = approval_object(&value)
        .and_then(|o| o.get(FIELD))
        .cloned()
        .unwrap_or(Value::Null);
    let outer: Members<'_> = serde_json::from_str(text).map_err(bad)?;
    let Some((_, inner)) = outer.0.first() else {
        return Err(SignError::Packet("an empty object".into()));
    };
    let members: Members<'_> = serde_json::from_str(inner.get()).map_err(bad)?;
    let Some((_, last)) = members.0.last() else {
        return Err(SignError::Packet("an empty approval object".into()));
    };
    let at = offset(text, last.get());
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let indent: String = text[line_start..]
        .chars()
        .take_while(|c| *c == ' ' || *c == '\t')
        .collect();
    let rendered = serde_json::to_string_pretty(&signatures)
        .map_err(|e| SignError::Sign(e.to_string()))?
        .replace('\n', &format!("\n{indent}"));
    let mut out = String::with_capacity(text.len() + rendered.len() + 32);
    match members.0.iter().find(|(k, _)| k == FIELD) {
        Some((_, existing)) => {
            let start = offset(text, existing.get());
            out.push_str(&text[..start]);
            out.push_str(&rendered);
            out.push_str(&text[start + existing.get().len()..]);
        }
        None => {
            let end = at + last.get().len();
            out.push_str(&text[..end]);
            out.push_str(&format!(",\n{indent}\"{FIELD}\": {rendered}"));
            out.push_str(&text[end..]);
        }
    }
    Ok(out)
}
