//! JSON packets: a strict parse (duplicate keys, nesting depth and oversized numbers refused, with line and
//! column), then JSON Schema 2020-12 through the `jsonschema` crate, compiled once at load.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::{Field, Limits, Violation};

/// Largest magnitude accepted for a JSON number (beyond it, doubles lose integer precision).
const MAX_NUMBER: f64 = 9_007_199_254_740_992.0;
/// Marks our own parse errors inside serde's error text: `lgsp:{rule}:{message}`.
const MARK: &str = "lgsp:";

struct Strict {
    depth: usize,
    max_depth: usize,
}

fn refuse<E: de::Error>(rule: &str, message: impl fmt::Display) -> E {
    E::custom(format!("{MARK}{rule}:{message}"))
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        if v.unsigned_abs() > MAX_NUMBER as u64 {
            return Err(refuse(
                "json.number_too_large",
                format!("{v} is larger than 2^53; send it as a string if it is an identifier"),
            ));
        }
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        if v > MAX_NUMBER as u64 {
            return Err(refuse(
                "json.number_too_large",
                format!("{v} is larger than 2^53; send it as a string if it is an identifier"),
            ));
        }
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        if !v.is_finite() || v.abs() > MAX_NUMBER {
            return Err(refuse(
                "json.number_too_large",
                "a number is too large to be exact; send it as a string",
            ));
        }
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.depth >= self.max_depth {
            return Err(refuse(
                "json.depth_exceeded",
                format!("values are nested deeper than {} levels", self.max_depth),
            ));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict {
            depth: self.depth + 1,
            max_depth: self.max_depth,
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if self.depth >= self.max_depth {
            return Err(refuse(
                "json.depth_exceeded",
                format!("values are nested deeper than {} levels", self.max_depth),
            ));
        }
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(refuse(
                    "json.duplicate_key",
                    format!(
                        "the key \"{}\" appears twice in one object",
                        crate::xsd::clip_text(&k)
                    ),
                ));
            }
            let v = map.next_value_seed(Strict {
                depth: self.depth + 1,
                max_depth: self.max_depth,
            })?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parses JSON strictly; errors carry line and column.
pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Value, Violation> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if let Err(e) = std::str::from_utf8(bytes) {
        let before = &bytes[..e.valid_up_to()];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        return Err(Violation {
            path: "/".into(),
            line: Some(line),
            column: Some(column),
            rule: "json.encoding",
            message: format!(
                "byte {} is not valid UTF-8; send the packet as UTF-8",
                e.valid_up_to()
            ),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Strict {
        depth: 0,
        max_depth: limits.max_depth,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    parsed.map_err(|e| {
        let text = e.to_string();
        let (rule, message) = match text.find(MARK) {
            Some(i) => {
                let rest = &text[i + MARK.len()..];
                let (rule, msg) = rest.split_once(':').unwrap_or(("json.malformed", rest));
                let msg = msg.rsplit_once(" at line ").map_or(msg, |(m, _)| m);
                (static_rule(rule), msg.to_owned())
            }
            None if e.is_eof() => (
                "json.truncated",
                format!("the packet ends early ({text}); send it whole"),
            ),
            None if text.contains("recursion limit") => ("json.depth_exceeded", text),
            None if text.contains("number out of range") => ("json.number_too_large", text),
            None => ("json.malformed", format!("not well-formed JSON: {text}")),
        };
        Violation {
            path: "/".into(),
            line: Some(e.line()),
            column: Some(e.column()),
            rule,
            message,
        }
    })
}

fn static_rule(rule: &str) -> &'static str {
    match rule {
        "json.number_too_large" => "json.number_too_large",
        "json.depth_exceeded" => "json.depth_exceeded",
        "json.duplicate_key" => "json.duplicate_key",
        _ => "json.malformed",
    }
}

/// `additionalProperties` → `json.additional_properties`.
fn rule_of(keyword: &str) -> &'static str {
    match keyword {
        "required" => "json.required",
        "additionalProperties" => "json.additional_properties",
        "type" => "json.type",
        "pattern" => "json.pattern",
        "enum" => "json.enum",
        "const" => "json.const",
        "minimum" => "json.minimum",
        "maximum" => "json.maximum",
        "exclusiveMinimum" => "json.exclusive_minimum",
        "exclusiveMaximum" => "json.exclusive_maximum",
        "minLength" => "json.min_length",
        "maxLength" => "json.max_length",
        "minItems" => "json.min_items",
        "maxItems" => "json.max_items",
        "oneOf" => "json.one_of",
        "anyOf" => "json.any_of",
        "allOf" => "json.all_of",
        "not" => "json.not",
        "multipleOf" => "json.multiple_of",
        "uniqueItems" => "json.unique_items",
        "format" => "json.format",
        _ => "json.schema",
    }
}

/// `/HoSoCBCCVC/QuaTrinhCongTac/1/NgayBatDau` → `/HoSoCBCCVC/QuaTrinhCongTac[2]/NgayBatDau`.
pub fn display_path(pointer: &[String]) -> String {
    let mut out = String::new();
    for seg in pointer {
        match seg.parse::<usize>() {
            Ok(i) if !out.is_empty() => out.push_str(&format!("[{}]", i + 1)),
            _ => {
                out.push('/');
                out.push_str(seg);
            }
        }
    }
    if out.is_empty() { "/".into() } else { out }
}

/// Validates a parsed packet; returns violations (path and rule; lines are added by [`locate`]).
pub fn check(
    validator: &jsonschema::Validator,
    value: &Value,
    text: &[u8],
    max_errors: usize,
) -> (Vec<Violation>, bool) {
    let mut out = Vec::new();
    let mut truncated = false;
    for e in validator.iter_errors(value) {
        if out.len() >= max_errors {
            truncated = true;
            break;
        }
        let pointer: Vec<String> = e.instance_path().iter().map(|s| s.to_string()).collect();
        let (line, column) =
            locate(text, &pointer).map_or((None, None), |(l, c)| (Some(l), Some(c)));
        out.push(Violation {
            path: display_path(&pointer),
            line,
            column,
            rule: rule_of(e.kind().keyword()),
            message: e.to_string().chars().take(300).collect(),
        });
    }
    (out, truncated)
}

/// Values of the JSON fields named by `interest`, grouped by their object's path, as the XML validator gives them.
pub fn fields(value: &Value, interest: &dyn Fn(&str) -> Option<&'static str>) -> Vec<Field> {
    let mut out = Vec::new();
    walk(value, &mut Vec::new(), interest, &mut out);
    out
}

fn walk(
    v: &Value,
    pointer: &mut Vec<String>,
    interest: &dyn Fn(&str) -> Option<&'static str>,
    out: &mut Vec<Field>,
) {
    match v {
        Value::Object(map) => {
            // The object's path, made once for all its fields.
            let mut parent: Option<std::sync::Arc<str>> = None;
            for (k, child) in map {
                pointer.push(k.clone());
                let scalar = match child {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                };
                match (scalar, interest(k)) {
                    (Some(s), Some(name)) => {
                        let parent = parent
                            .get_or_insert_with(|| {
                                std::sync::Arc::from(display_path(&pointer[..pointer.len() - 1]))
                            })
                            .clone();
                        out.push(Field {
                            parent,
                            name,
                            value: s,
                            path: display_path(pointer),
                            line: None,
                            column: None,
                        });
                    }
                    (None, _) => walk(child, pointer, interest, out),
                    (Some(_), None) => {}
                }
                pointer.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointer.push(i.to_string());
                walk(child, pointer, interest, out);
                pointer.pop();
            }
        }
        _ => {}
    }
}

/// Line and column of the value at `pointer` in well-formed JSON text.
pub fn locate(text: &[u8], pointer: &[String]) -> Option<(usize, usize)> {
    let mut s = Scanner { text, pos: 0 };
    s.ws();
    for seg in pointer {
        match s.peek()? {
            b'{' => {
                s.pos += 1;
                loop {
                    s.ws();
                    if s.peek()? == b'}' {
                        return None;
                    }
                    let key = s.string()?;
                    s.ws();
                    s.expect(b':')?;
                    s.ws();
                    if key == *seg {
                        break;
                    }
                    s.skip_value()?;
                    s.ws();
                    if s.peek()? == b',' {
                        s.pos += 1;
                    }
                }
            }
            b'[' => {
                s.pos += 1;
                let want: usize = seg.parse().ok()?;
                for _ in 0..want {
                    s.ws();
                    s.skip_value()?;
                    s.ws();
                    s.expect(b',')?;
                }
                s.ws();
            }
            _ => return None,
        }
    }
    let before = &text[..s.pos.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&text[line_start..s.pos.min(text.len())])
        .chars()
        .count()
        + 1;
    Some((line, column))
}

struct Scanner<'a> {
    text: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.pos += 1)
    }

    fn string(&mut self) -> Option<String> {
        let start = self.pos;
        self.expect(b'"')?;
        loop {
            match self.peek()? {
                b'\\' => self.pos += 2,
                b'"' => {
                    self.pos += 1;
                    break;
                }
                _ => self.pos += 1,
            }
        }
        serde_json::from_slice(&self.text[start..self.pos]).ok()
    }

    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.pos += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.pos += 1;
                }
            }
            _ => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.pos += 1;
                }
                Some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> &'static str {
        parse(text.as_bytes(), &Limits::default()).unwrap_err().rule
    }

    #[test]
    fn hostile_json_is_refused_with_its_rule_and_place() {
        assert_eq!(rule(r#"{"a":1,"a":2}"#), "json.duplicate_key");
        assert_eq!(rule(&"[".repeat(100)), "json.depth_exceeded");
        assert_eq!(
            rule(&format!("{}{}", "[".repeat(40), "]".repeat(40))),
            "json.depth_exceeded"
        );
        assert_eq!(rule("[1e999]"), "json.number_too_large");
        assert_eq!(
            rule("[123456789012345678901234567890]"),
            "json.number_too_large"
        );
        assert_eq!(rule(r#"{"a": [1, 2"#), "json.truncated");
        assert_eq!(rule(r#"{"a" 1}"#), "json.malformed");
        assert_eq!(
            parse(b"{\"a\":\"\xff\"}", &Limits::default())
                .unwrap_err()
                .rule,
            "json.encoding"
        );
        let e = parse(b"{\n  \"a\": 1,\n  \"a\": 2\n}", &Limits::default()).unwrap_err();
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn locate_finds_nested_values() {
        let text = b"{\n \"A\": {\"B\": [1, {\"C\": \"x\"}]}\n}";
        let p = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(locate(text, &p(&["A", "B", "1", "C"])), Some((2, 23)));
        assert_eq!(locate(text, &p(&["A"])), Some((2, 7)));
        assert_eq!(display_path(&p(&["A", "B", "1", "C"])), "/A/B[2]/C");
    }
}
