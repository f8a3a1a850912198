//! JSON packets: a strict parse (duplicate keys, nesting depth and oversized numbers refused, with line and
//! column), then JSON Schema 2020-12 through the `jsonschema` crate, compiled once at load.
//!
//! A packet is never held whole as a `serde_json::Value` (a `Value` costs up to 16 times the text it came from).
//! The parse is guided by the schema's shape ([`Shape`]): a container where only a scalar may stand, or under a
//! key a closed object does not declare, is read past and kept as an empty placeholder (the schema still refuses
//! it); the arrays of the packet's envelope (a profile's histories, a batch's records) are streamed, each element
//! built, checked against its item schema and its domain rules, and dropped. What is kept whole is the envelope
//! with its arrays emptied, checked last against the schema with those arrays' constraints taken out (their
//! `minItems`/`maxItems` are counted here). Peak memory is then the text plus one element plus the envelope.

use std::fmt;

use std::collections::HashMap;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::domain::{self, Rules, Tally};
use crate::{Field, Limits, Violation};

/// Largest magnitude accepted for a JSON number (beyond it, doubles lose integer precision).
const MAX_NUMBER: f64 = 9_007_199_254_740_992.0;
/// Marks our own parse errors inside serde's error text: `lgsp:{rule}:{message}`.
const MARK: &str = "lgsp:";

/// What the schema allows at one place of a packet, as far as building the parsed value needs to know.
#[derive(Debug, Clone, Default)]
pub enum Shape {
    /// Anything (built as it comes).
    #[default]
    Any,
    /// A string, number, boolean or null: a container here is read past, not built.
    Scalar,
    /// An object; under a key it does not declare, a closed object's value is read past, not built.
    Object {
        props: HashMap<String, Shape>,
        closed: bool,
    },
    /// An array; `stream` names the streamed array of the envelope it is (its elements go one by one to the
    /// [`Compiled`] validator's stream of that index).
    Array {
        items: Box<Shape>,
        stream: Option<usize>,
    },
}

static ANY: Shape = Shape::Any;

/// The shape of the schema `node` (local `$ref`s resolved against `root`).
fn shape_of(node: &Value, root: &Value, depth: usize) -> Shape {
    if depth > 32 {
        return Shape::Any;
    }
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        return r
            .strip_prefix('#')
            .and_then(|p| root.pointer(p))
            .map_or(Shape::Any, |n| shape_of(n, root, depth + 1));
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = node.get(key).and_then(Value::as_array) {
            let scalar = branches
                .iter()
                .all(|b| matches!(shape_of(b, root, depth + 1), Shape::Scalar));
            return if scalar { Shape::Scalar } else { Shape::Any };
        }
    }
    let scalar_type = |t: &str| matches!(t, "string" | "integer" | "number" | "boolean" | "null");
    let scalar_value = |v: &Value| !v.is_array() && !v.is_object();
    match node.get("type") {
        Some(Value::String(t)) if t == "object" => Shape::Object {
            props: node
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| {
                    p.iter()
                        .map(|(k, v)| (k.clone(), shape_of(v, root, depth + 1)))
                        .collect()
                })
                .unwrap_or_default(),
            closed: node.get("additionalProperties") == Some(&Value::Bool(false)),
        },
        Some(Value::String(t)) if t == "array" => Shape::Array {
            items: Box::new(
                node.get("items")
                    .map_or(Shape::Any, |i| shape_of(i, root, depth + 1)),
            ),
            stream: None,
        },
        Some(Value::String(t)) if scalar_type(t) => Shape::Scalar,
        Some(Value::Array(ts)) if ts.iter().all(|t| t.as_str().is_some_and(scalar_type)) => {
            Shape::Scalar
        }
        None if node
            .get("enum")
            .and_then(Value::as_array)
            .is_some_and(|e| e.iter().all(scalar_value))
            || node.get("const").is_some_and(scalar_value) =>
        {
            Shape::Scalar
        }
        _ => Shape::Any,
    }
}

/// One streamed array of the envelope: its item schema and the counts the envelope no longer checks.
struct Stream {
    validator: jsonschema::Validator,
    min_items: Option<u64>,
    max_items: Option<u64>,
}

/// A message type's JSON schema, compiled for streaming.
pub struct Compiled {
    /// The schema with every streamed array's constraints replaced by `{"type": "array"}`.
    envelope: jsonschema::Validator,
    shape: Shape,
    streams: Vec<Stream>,
}

impl Compiled {
    /// Compiles `schema`: every array reachable from the root through inline `properties` is streamed.
    pub fn new(schema: &Value) -> Result<Compiled, String> {
        let mut shape = shape_of(schema, schema, 0);
        let mut envelope = schema.clone();
        let mut streams = Vec::new();
        mark_streams(&mut shape, &mut envelope, schema, &mut streams)?;
        Ok(Compiled {
            envelope: jsonschema::draft202012::new(&envelope).map_err(|e| e.to_string())?,
            shape,
            streams,
        })
    }
}

fn mark_streams(
    shape: &mut Shape,
    node: &mut Value,
    root: &Value,
    streams: &mut Vec<Stream>,
) -> Result<(), String> {
    match shape {
        Shape::Object { props, .. } => {
            if let Some(p) = node.get_mut("properties").and_then(Value::as_object_mut) {
                for (k, s) in props.iter_mut() {
                    if let Some(child) = p.get_mut(k) {
                        mark_streams(s, child, root, streams)?;
                    }
                }
            }
        }
        Shape::Array { stream, .. }
            if node.get("$ref").is_none()
                && node.get("type").and_then(Value::as_str) == Some("array") =>
        {
            let mut items = node
                .get("items")
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new()));
            if let Some(obj) = items.as_object_mut() {
                for key in ["$schema", "$defs"] {
                    if let Some(v) = root.get(key) {
                        obj.insert(key.to_owned(), v.clone());
                    }
                }
            }
            streams.push(Stream {
                validator: jsonschema::draft202012::new(&items).map_err(|e| e.to_string())?,
                min_items: node.get("minItems").and_then(Value::as_u64),
                max_items: node.get("maxItems").and_then(Value::as_u64),
            });
            *stream = Some(streams.len() - 1);
            *node = serde_json::json!({ "type": "array" });
        }
        _ => {}
    }
    Ok(())
}

/// Builds the value at one place of a packet, as its [`Shape`] allows; in the envelope (`sink` set) streamed
/// arrays go element by element to the sink.
struct Build<'s, 'k, 'c> {
    depth: usize,
    max_depth: usize,
    shape: &'s Shape,
    sink: Option<&'k mut Sink<'c>>,
}

fn refuse<E: de::Error>(rule: &str, message: impl fmt::Display) -> E {
    E::custom(format!("{MARK}{rule}:{message}"))
}

impl<'de> DeserializeSeed<'de> for Build<'_, '_, '_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'c> Build<'_, '_, 'c> {
    fn deeper<'s, 'k>(&'k mut self, shape: &'s Shape, stream: bool) -> Build<'s, 'k, 'c> {
        Build {
            depth: self.depth + 1,
            max_depth: self.max_depth,
            shape,
            sink: if stream {
                self.sink.as_deref_mut()
            } else {
                None
            },
        }
    }

    fn too_deep<E: de::Error>(&self) -> Result<(), E> {
        if self.depth >= self.max_depth {
            return Err(refuse(
                "json.depth_exceeded",
                format!("values are nested deeper than {} levels", self.max_depth),
            ));
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for Build<'_, '_, '_> {
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

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        self.too_deep()?;
        match self.shape {
            // Where only a scalar may stand: read past it; the schema refuses the (empty) array.
            Shape::Scalar => {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Value::Array(Vec::new()))
            }
            Shape::Array {
                items,
                stream: Some(i),
            } if self.sink.is_some() => {
                let mut n = 0usize;
                while let Some(v) = seq.next_element_seed(self.deeper(items, false))? {
                    if let Some(sink) = self.sink.as_deref_mut() {
                        sink.element(*i, n, v);
                    }
                    n += 1;
                }
                if let Some(sink) = self.sink.as_deref_mut() {
                    sink.counted(*i, n);
                }
                Ok(Value::Array(Vec::new()))
            }
            shape => {
                let items = match shape {
                    Shape::Array { items, .. } => &**items,
                    _ => &ANY,
                };
                let mut out = Vec::new();
                while let Some(v) = seq.next_element_seed(self.deeper(items, false))? {
                    out.push(v);
                }
                Ok(Value::Array(out))
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        self.too_deep()?;
        if let Shape::Scalar = self.shape {
            while map.next_key::<IgnoredAny>()?.is_some() {
                map.next_value::<IgnoredAny>()?;
            }
            return Ok(Value::Object(Map::new()));
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
            let (shape, skip) = match self.shape {
                Shape::Object { props, closed } => match props.get(&k) {
                    Some(s) => (s, false),
                    None => (&ANY, *closed),
                },
                _ => (&ANY, false),
            };
            let v = if skip {
                // A key the object does not allow: its value is never built (the schema names the key).
                map.next_value::<IgnoredAny>()?;
                Value::Null
            } else {
                if let Some(sink) = self.sink.as_deref_mut() {
                    sink.pointer.push(k.clone());
                }
                let v = map.next_value_seed(self.deeper(shape, true));
                if let Some(sink) = self.sink.as_deref_mut() {
                    sink.pointer.pop();
                }
                v?
            };
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// What the streamed elements leave behind: their violations, their domain findings and the root's tally.
struct Sink<'c> {
    compiled: &'c Compiled,
    text: &'c [u8],
    max_errors: usize,
    rules: Option<&'c Rules<'c>>,
    /// The envelope path of the array being streamed.
    pointer: Vec<String>,
    violations: Vec<Violation>,
    truncated: bool,
    domain: Vec<Violation>,
    tally: Tally,
}

impl Sink<'_> {
    fn push(&mut self, pointer: &[String], rule: &'static str, message: String) {
        if self.violations.len() >= self.max_errors {
            self.truncated = true;
            return;
        }
        let (line, column) =
            locate(self.text, pointer).map_or((None, None), |(l, c)| (Some(l), Some(c)));
        self.violations.push(Violation {
            path: display_path(pointer),
            line,
            column,
            rule,
            message,
        });
    }

    /// One element of streamed array `stream`, at `index`: checked against its item schema and its domain
    /// rules, then dropped.
    fn element(&mut self, stream: usize, index: usize, value: Value) {
        let mut pointer = self.pointer.clone();
        pointer.push(index.to_string());
        let Some(s) = self.compiled.streams.get(stream) else {
            return;
        };
        let found: Vec<(Vec<String>, &'static str, String)> = s
            .validator
            .iter_errors(&value)
            .take(self.max_errors.saturating_sub(self.violations.len()) + 1)
            .map(|e| {
                let mut at = pointer.clone();
                at.extend(e.instance_path().iter().map(|seg| seg.to_string()));
                (
                    at,
                    rule_of(e.kind().keyword()),
                    e.to_string().chars().take(300).collect(),
                )
            })
            .collect();
        for (at, rule, message) in found {
            self.push(&at, rule, message);
        }
        if let Some(rules) = self.rules {
            records(
                &value,
                &mut pointer,
                rules,
                &mut self.tally,
                &mut self.domain,
                self.max_errors,
                self.text,
            );
        }
    }

    /// Streamed array `stream` ended with `n` elements: the counts the envelope no longer checks.
    fn counted(&mut self, stream: usize, n: usize) {
        let Some(s) = self.compiled.streams.get(stream) else {
            return;
        };
        let n = n as u64;
        let pointer = self.pointer.clone();
        if let Some(min) = s.min_items.filter(|m| n < *m) {
            let message = format!("the array has {n} items; at least {min} are required");
            self.push(&pointer, "json.min_items", message);
        }
        if let Some(max) = s.max_items.filter(|m| n > *m) {
            let message = format!("the array has {n} items; at most {max} are allowed");
            self.push(&pointer, "json.max_items", message);
        }
    }
}

/// A kept value of a JSON record, as the domain rules read it.
struct Kept {
    field: usize,
    value: String,
    key: String,
}

impl domain::Item for Kept {
    fn field(&self) -> usize {
        self.field
    }
    fn value(&self) -> &str {
        &self.value
    }
}

/// The domain records of `v` (at `pointer`), children before their parent, as the XML validator closes them:
/// each object's scalar fields the rules read form one record.
fn records(
    v: &Value,
    pointer: &mut Vec<String>,
    rules: &Rules<'_>,
    tally: &mut Tally,
    out: &mut Vec<Violation>,
    max_errors: usize,
    text: &[u8],
) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if child.is_object() || child.is_array() {
                    pointer.push(k.clone());
                    records(child, pointer, rules, tally, out, max_errors, text);
                    pointer.pop();
                }
            }
            let items: Vec<Kept> = map
                .iter()
                .filter_map(|(k, child)| {
                    let field = domain::field_index(k)?;
                    let value = match child {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => return None,
                    };
                    Some(Kept {
                        field,
                        value,
                        key: k.clone(),
                    })
                })
                .collect();
            if items.is_empty() {
                return;
            }
            let element = display_path(pointer);
            let element = element_name(&element).to_owned();
            let mut found = Vec::new();
            domain::close_record(&element, &items, rules, tally, &mut |i, rule, message| {
                found.push((i, rule, message));
            });
            for (i, rule, message) in found {
                if out.len() >= max_errors {
                    break;
                }
                let Some(item) = items.get(i) else { continue };
                let mut at = pointer.clone();
                at.push(item.key.clone());
                let (line, column) =
                    locate(text, &at).map_or((None, None), |(l, c)| (Some(l), Some(c)));
                out.push(Violation {
                    path: display_path(&at),
                    line,
                    column,
                    rule,
                    message,
                });
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointer.push(i.to_string());
                records(child, pointer, rules, tally, out, max_errors, text);
                pointer.pop();
            }
        }
        _ => {}
    }
}

/// The element a display path names: `/A/B[2]` → `B`.
fn element_name(path: &str) -> &str {
    let last = path.rsplit('/').next().unwrap_or_default();
    last.split('[').next().unwrap_or_default()
}

/// What validating a JSON packet found.
pub struct Outcome {
    pub violations: Vec<Violation>,
    pub malformed: bool,
    pub truncated: bool,
    /// Domain findings (paths and lines set), in record-close order.
    pub domain: Vec<Violation>,
    /// The root element's own fields the rules read (the caller takes `MaDonVi` from them).
    pub root_fields: Vec<Field>,
}

/// Validates a JSON packet against `compiled` (and the domain `rules`, when given) in one streaming pass.
pub fn validate(
    compiled: &Compiled,
    bytes: &[u8],
    limits: &Limits,
    rules: Option<&Rules<'_>>,
) -> Outcome {
    let mut sink = Sink {
        compiled,
        text: bytes,
        max_errors: limits.max_errors,
        rules,
        pointer: Vec::new(),
        violations: Vec::new(),
        truncated: false,
        domain: Vec::new(),
        tally: Tally::default(),
    };
    let envelope = match parse_with(bytes, limits, &compiled.shape, Some(&mut sink)) {
        Ok(v) => v,
        Err(v) => {
            return Outcome {
                violations: vec![v],
                malformed: true,
                truncated: false,
                domain: Vec::new(),
                root_fields: Vec::new(),
            };
        }
    };
    // The envelope last: its errors after the elements', within the same limit.
    let room = sink.max_errors.saturating_sub(sink.violations.len());
    let (mut found, truncated) = check(&compiled.envelope, &envelope, bytes, room);
    sink.truncated |= truncated;
    sink.violations.append(&mut found);
    if let Some(rules) = rules {
        records(
            &envelope,
            &mut Vec::new(),
            rules,
            &mut sink.tally,
            &mut sink.domain,
            sink.max_errors,
            bytes,
        );
    }
    let root_fields = fields(&envelope, &domain::field_name)
        .into_iter()
        .filter(|f| f.parent.matches('/').count() == 1)
        .collect();
    Outcome {
        violations: sink.violations,
        malformed: false,
        truncated: sink.truncated,
        domain: sink.domain,
        root_fields,
    }
}

/// The single top-level key of a JSON packet (its message type), read without building the packet.
pub fn root_name(bytes: &[u8]) -> Option<String> {
    struct Root;
    impl<'de> Visitor<'de> for Root {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
            let mut first = None;
            let mut n = 0;
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                n += 1;
                first.get_or_insert(k);
            }
            Ok(first.filter(|_| n == 1))
        }
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let name = de::Deserializer::deserialize_map(&mut de, Root).ok()?;
    de.end().ok()?;
    name
}

/// Parses JSON strictly into one value, whatever its size (for packets, [`validate`] streams); errors carry line
/// and column.
pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Value, Violation> {
    parse_with(bytes, limits, &ANY, None)
}

fn parse_with(
    bytes: &[u8],
    limits: &Limits,
    shape: &Shape,
    sink: Option<&mut Sink<'_>>,
) -> Result<Value, Violation> {
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
    let parsed = Build {
        depth: 0,
        max_depth: limits.max_depth,
        shape,
        sink,
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
