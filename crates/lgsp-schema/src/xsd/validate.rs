//! The streaming validator: one pass over quick-xml events, no DOM. Memory is one frame per open element (bounded
//! by `max_depth`), the text of the current simple element (bounded by `max_text`) and the violations (bounded by
//! `max_errors`). DOCTYPE, entities other than the five predefined ones, and non-UTF-8 input are refused.

use quick_xml::NsReader;
use std::borrow::Cow;
use std::sync::Arc;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;

use super::load::{Content, Schema, TypeRef};
use super::model::ElemId;
use super::simple::clip;
use crate::{Field, Limits, Violation};

const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// What one XML document turned out to be.
#[derive(Debug, Default)]
pub struct XmlOutcome {
    /// Local name of the root element, when the document had one.
    pub root: Option<String>,
    pub violations: Vec<Violation>,
    /// The document is not well-formed or hostile (DOCTYPE, limits, encoding): nothing after it was checked.
    pub fatal: bool,
    /// More violations existed than `max_errors`.
    pub truncated: bool,
    /// Values of the simple elements the caller asked for (domain rules, jurisdiction).
    pub fields: Vec<Field>,
}

/// Where a content model stands: a DFA state normally; an NFA state set after recovering from an error.
enum ModelState {
    Dfa(usize),
    Nfa(Vec<usize>),
}

enum Kind {
    Model {
        ct: usize,
        state: ModelState,
    },
    All {
        ct: usize,
        seen: Vec<bool>,
    },
    Simple {
        st: usize,
    },
    Empty,
    /// Content not checked: the element itself was already reported.
    Skip,
}

struct Frame<'i> {
    kind: Kind,
    /// Borrowed from the input (no allocation per element).
    local: Cow<'i, str>,
    /// Length of `Run::path` up to and including this element (its path is that prefix: no String per element).
    path_len: usize,
    /// Length of `Run::path` before this element's segment (what closing it truncates back to).
    parent_len: usize,
    /// Where the element starts.
    pos: Pos,
    counts: Vec<(Cow<'i, str>, u32)>,
    nil: bool,
    text: Cow<'i, str>,
    text_reported: bool,
    /// Simple content that held a child element: its value is not checked again.
    broken: bool,
    /// `path`, shared by the fields this element's children give the domain rules.
    shared_path: Option<Arc<str>>,
}

/// A place in the document: its line, where that line starts, and its byte offset. The column is counted from
/// these only when a violation or a kept field needs it.
#[derive(Debug, Clone, Copy)]
struct Pos {
    line: usize,
    line_start: usize,
    offset: usize,
}

impl Pos {
    fn column(&self, text: &str) -> usize {
        text.get(self.line_start..self.offset.min(text.len()))
            .map_or(1, |s| s.chars().count() + 1)
    }
}

/// Byte offset → [`Pos`], counting lines as the offsets grow. Holds only the current line, so memory does not
/// grow with the number of lines.
struct Lines<'a> {
    text: &'a str,
    offset: usize,
    line: usize,
    line_start: usize,
}

impl<'a> Lines<'a> {
    fn at(&mut self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        if offset < self.offset {
            // Rare (an error position before the current one): count again from the start.
            self.offset = 0;
            self.line = 1;
            self.line_start = 0;
        }
        for (i, b) in self.text.as_bytes()[self.offset..offset].iter().enumerate() {
            if *b == b'\n' {
                self.line += 1;
                self.line_start = self.offset + i + 1;
            }
        }
        self.offset = offset;
        Pos {
            line: self.line,
            line_start: self.line_start,
            offset,
        }
    }
}

struct Run<'s, 'i> {
    schema: &'s Schema,
    limits: &'s Limits,
    interest: &'s dyn Fn(&str) -> Option<&'static str>,
    out: XmlOutcome,
    stack: Vec<Frame<'i>>,
    /// Reused buffer for NFA steps.
    scratch: Vec<usize>,
    /// The path of the open elements, `/HoSoCBCCVC/QuaTrinhCongTac[2]/…`, grown on open and cut back on close.
    path: String,
    lines: Lines<'i>,
    root_seen: bool,
}

/// Local name and namespace of a resolved element.
struct Name<'i> {
    ns: Ns,
    local: Cow<'i, str>,
}

/// An element's namespace, compared with the schema's without allocating in the common cases.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ns {
    None,
    Target,
    Other(String),
}

impl Ns {
    fn of(resolved: Option<&str>, target: Option<&str>) -> Ns {
        match resolved {
            None => Ns::None,
            Some(n) if Some(n) == target => Ns::Target,
            Some(n) => Ns::Other(n.to_owned()),
        }
    }

    /// Whether a declaration's namespace (`None` or the target namespace) is this one.
    fn is(&self, decl: &Option<String>) -> bool {
        matches!((self, decl), (Ns::None, None) | (Ns::Target, Some(_)))
    }

    fn shown(&self, target: Option<&str>) -> String {
        match self {
            Ns::None => String::new(),
            Ns::Target => target.unwrap_or_default().to_owned(),
            Ns::Other(n) => n.clone(),
        }
    }
}

impl<'s, 'i> Run<'s, 'i> {
    fn full(&self) -> bool {
        self.out.violations.len() >= self.limits.max_errors
    }

    /// A violation at the element whose path is the first `len` bytes of `self.path`.
    fn violation_len(&mut self, len: usize, at: Pos, rule: &'static str, message: String) {
        let path = self.path[..len].to_owned();
        self.violation(&path, at, rule, message);
    }

    fn violation(&mut self, path: &str, at: Pos, rule: &'static str, message: String) {
        if self.full() {
            self.out.truncated = true;
            return;
        }
        self.out.violations.push(Violation {
            path: path.to_owned(),
            line: Some(at.line),
            column: Some(at.column(self.lines.text)),
            rule,
            message,
        });
    }

    fn fatal(&mut self, at: Pos, rule: &'static str, message: String) {
        let path = self
            .stack
            .last()
            .map(|f| self.path[..f.path_len].to_owned())
            .unwrap_or_else(|| "/".to_owned());
        self.out.violations.push(Violation {
            path,
            line: Some(at.line),
            column: Some(at.column(self.lines.text)),
            rule,
            message,
        });
        self.out.fatal = true;
    }

    fn decl_name(&self, d: ElemId) -> &str {
        &self.schema.elements[d].name
    }

    fn expected_list(&self, decls: &[ElemId]) -> String {
        let mut names: Vec<&str> = decls.iter().map(|d| self.decl_name(*d)).collect();
        names.dedup();
        if names.is_empty() {
            "nothing more".to_owned()
        } else {
            names.join(", ")
        }
    }

    /// Appends the child's segment to `self.path`; returns the path length before and after it.
    fn push_segment(&mut self, local: Cow<'i, str>, repeatable: bool) -> (usize, usize) {
        let before = self.path.len();
        let n = match self.stack.last_mut() {
            None => 1,
            Some(parent) => match parent.counts.iter_mut().find(|(k, _)| *k == local) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    parent.counts.push((local.clone(), 1));
                    1
                }
            },
        };
        self.path.push('/');
        self.path.push_str(&local);
        if repeatable || n > 1 {
            self.path.push('[');
            push_number(&mut self.path, n);
            self.path.push(']');
        }
        (before, self.path.len())
    }

    /// Decides which declaration the new child is, or reports why none.
    fn place_child(&mut self, name: &Name<'i>, at: Pos) -> Option<ElemId> {
        let schema = self.schema;
        let matches = |d: ElemId| {
            schema.elements[d].name == *name.local && name.ns.is(&schema.elements[d].ns)
        };
        let parent = self.stack.last_mut()?;
        if parent.nil {
            let path = self.path[..parent.path_len].to_owned();
            self.violation(
                &path,
                at,
                "xsd.nil_with_content",
                format!("{} is xsi:nil=\"true\" and must be empty", name.local),
            );
            return None;
        }
        match &mut parent.kind {
            Kind::Skip => None,
            Kind::Model { ct, state } => {
                let Content::Model(model) = &schema.complex[*ct].content else {
                    return None;
                };
                // The common path: one DFA transition, no allocation.
                let set = match state {
                    ModelState::Dfa(i) => {
                        if let Some((d, next)) =
                            model.dfa.states[*i].trans.iter().find(|(d, _)| matches(*d))
                        {
                            *state = ModelState::Dfa(*next);
                            return Some(*d);
                        }
                        model.dfa.states[*i].set.clone()
                    }
                    ModelState::Nfa(set) => {
                        let matched = model.nfa.step_into(set, matches, &mut self.scratch);
                        if let Some(d) = matched.filter(|_| !self.scratch.is_empty()) {
                            std::mem::swap(set, &mut self.scratch);
                            return Some(d);
                        }
                        set.clone()
                    }
                };
                let nfa = &model.nfa;
                let expected = nfa.expected(&set);
                let later = nfa.reachable_later(&set, matches);
                let (parent_path, parent_local) = (
                    self.path[..parent.path_len].to_owned(),
                    parent.local.clone(),
                );
                let list = self.expected_list(&expected);
                if later {
                    self.violation(
                        &parent_path,
                        at,
                        "xsd.missing_element",
                        format!("{list} must come before {}", name.local),
                    );
                    // Go on as if the missing elements had been there.
                    let (next, matched) = nfa.recover(&set, matches);
                    if !next.is_empty()
                        && let Some(Kind::Model { state, .. }) =
                            self.stack.last_mut().map(|f| &mut f.kind)
                    {
                        *state = ModelState::Nfa(next);
                        return matched;
                    }
                } else {
                    let same_name = expected
                        .iter()
                        .any(|d| schema.elements[*d].name == *name.local);
                    let message = if same_name {
                        let target = schema.target_ns.as_deref();
                        format!(
                            "{} is in namespace {:?} here; {parent_local} expects it in {:?}",
                            name.local,
                            name.ns.shown(target),
                            target.unwrap_or_default()
                        )
                    } else {
                        format!(
                            "{} is not allowed here in {parent_local}; expected: {list}",
                            name.local
                        )
                    };
                    self.violation(&parent_path, at, "xsd.unexpected_element", message);
                }
                None
            }
            Kind::All { ct, seen } => {
                let Content::All(group) = &schema.complex[*ct].content else {
                    return None;
                };
                match group.members.iter().position(|(d, _)| matches(*d)) {
                    Some(i) if !seen[i] => {
                        seen[i] = true;
                        Some(group.members[i].0)
                    }
                    Some(_) => {
                        let (parent_path, parent_local) = (
                            self.path[..parent.path_len].to_owned(),
                            parent.local.clone(),
                        );
                        self.violation(
                            &parent_path,
                            at,
                            "xsd.unexpected_element",
                            format!("{} may appear only once in {parent_local}", name.local),
                        );
                        None
                    }
                    None => {
                        let (parent_path, parent_local) = (
                            self.path[..parent.path_len].to_owned(),
                            parent.local.clone(),
                        );
                        let names: Vec<ElemId> = group.members.iter().map(|(d, _)| *d).collect();
                        let list = self.expected_list(&names);
                        self.violation(
                            &parent_path,
                            at,
                            "xsd.unexpected_element",
                            format!(
                                "{} is not allowed in {parent_local}; it takes: {list}",
                                name.local
                            ),
                        );
                        None
                    }
                }
            }
            Kind::Simple { .. } | Kind::Empty => {
                let simple = matches!(parent.kind, Kind::Simple { .. });
                parent.broken = simple;
                let (parent_path, parent_local) = (
                    self.path[..parent.path_len].to_owned(),
                    parent.local.clone(),
                );
                let why = if simple {
                    "holds a plain value"
                } else {
                    "must be empty"
                };
                self.violation(
                    &parent_path,
                    at,
                    "xsd.unexpected_element",
                    format!(
                        "{parent_local} {why}; the child element {} is not allowed",
                        name.local
                    ),
                );
                None
            }
        }
    }

    fn open(
        &mut self,
        e: &BytesStart<'_>,
        name: Name<'i>,
        reader: &NsReader<&'i [u8]>,
        at: Pos,
    ) -> Result<(), ()> {
        if self.stack.len() >= self.limits.max_depth {
            self.fatal(
                at,
                "xml.depth_exceeded",
                format!(
                    "elements are nested deeper than {} levels",
                    self.limits.max_depth
                ),
            );
            return Err(());
        }
        let decl = if self.stack.is_empty() {
            self.root_seen = true;
            self.out.root = Some(name.local.to_string());
            match self.schema.globals.get(&*name.local).copied() {
                Some(d) if name.ns.is(&self.schema.elements[d].ns) => Some(d),
                _ => {
                    let ns = self.schema.target_ns.clone().unwrap_or_default();
                    let path = format!("/{}", name.local);
                    self.violation(&path, at, "xsd.unknown_root", format!(
                        "the root element {{{}}}{} is not a packet of this schema; use a root declared in namespace {ns}",
                        name.ns.shown(self.schema.target_ns.as_deref()),
                        name.local
                    ));
                    None
                }
            }
        } else {
            self.place_child(&name, at)
        };
        let repeatable = decl.is_some_and(|d| self.schema.elements[d].repeatable);
        let (parent_len, path_len) = self.push_segment(name.local.clone(), repeatable);
        let kind = match decl.map(|d| self.schema.elements[d].ty) {
            None => Kind::Skip,
            Some(TypeRef::Simple(st)) => Kind::Simple { st },
            Some(TypeRef::Complex(ct)) => match &self.schema.complex[ct].content {
                Content::Empty => Kind::Empty,
                Content::Simple(st) => Kind::Simple { st: *st },
                Content::Model(_) => Kind::Model {
                    ct,
                    state: ModelState::Dfa(0),
                },
                Content::All(g) => Kind::All {
                    ct,
                    seen: vec![false; g.members.len()],
                },
            },
        };
        let mut frame = Frame {
            kind,
            local: name.local,
            path_len,
            parent_len,
            pos: at,
            counts: Vec::new(),
            nil: false,
            text: Cow::Borrowed(""),
            text_reported: false,
            broken: false,
            shared_path: None,
        };
        self.attributes(e, decl, &mut frame, reader, at)?;
        self.stack.push(frame);
        Ok(())
    }

    fn attributes(
        &mut self,
        e: &BytesStart<'_>,
        decl: Option<ElemId>,
        frame: &mut Frame,
        reader: &NsReader<&'i [u8]>,
        at: Pos,
    ) -> Result<(), ()> {
        let declared = match decl.map(|d| self.schema.elements[d].ty) {
            Some(TypeRef::Complex(ct)) => self.schema.complex[ct].attributes.as_slice(),
            _ => &[],
        };
        let mut present = vec![false; declared.len()];
        let mut count = 0usize;
        for a in e.attributes() {
            let a = match a {
                Ok(a) => a,
                Err(err) => {
                    self.fatal(at, "xml.malformed", format!("attribute error: {err}"));
                    return Err(());
                }
            };
            count += 1;
            if count > self.limits.max_attributes {
                self.fatal(
                    at,
                    "xml.too_many_attributes",
                    format!(
                        "an element carries more than {} attributes",
                        self.limits.max_attributes
                    ),
                );
                return Err(());
            }
            let key = a.key.as_ref();
            if key == "xmlns" || key.starts_with("xmlns:") {
                continue;
            }
            let value = match a.normalized_value(quick_xml::XmlVersion::Implicit1_0) {
                Ok(v) => v.into_owned(),
                Err(err) => {
                    self.fatal(at, "xml.malformed", format!("attribute {key}: {err}"));
                    return Err(());
                }
            };
            if value.len() > self.limits.max_text {
                self.fatal(
                    at,
                    "xml.text_too_long",
                    format!(
                        "attribute {key} is longer than {} bytes",
                        self.limits.max_text
                    ),
                );
                return Err(());
            }
            let (ns, local) = reader.resolver().resolve_attribute(a.key);
            let ns = match ns {
                ResolveResult::Bound(n) => Some(n.0.to_owned()),
                ResolveResult::Unbound => None,
                ResolveResult::Unknown(p) => {
                    self.fatal(
                        at,
                        "xml.malformed",
                        format!("namespace prefix `{p}` is not declared"),
                    );
                    return Err(());
                }
            };
            let local = local.as_ref();
            if decl.is_none() {
                continue;
            }
            if ns.as_deref() == Some(XSI) {
                match local {
                    "nil" => {
                        match value.trim() {
                            "true" | "1" => {
                                if decl.is_some_and(|d| self.schema.elements[d].nillable) {
                                    frame.nil = true;
                                } else {
                                    self.violation_len(frame.path_len, at, "xsd.nil_not_allowed", format!("{} is not nillable; send a value or leave the element out", frame.local));
                                }
                            }
                            "false" | "0" => {}
                            other => self.violation_len(
                                frame.path_len,
                                at,
                                "xsd.invalid_value",
                                format!("xsi:nil=\"{}\" must be true or false", clip(other)),
                            ),
                        }
                    }
                    "type" => self.violation_len(
                        frame.path_len,
                        at,
                        "xsd.xsi_type_unsupported",
                        "xsi:type is not supported; send the declared type".into(),
                    ),
                    _ => {}
                }
                continue;
            }
            match declared
                .iter()
                .position(|d| d.name == local && ns.is_none())
            {
                Some(i) => {
                    present[i] = true;
                    if let Err(err) = self.schema.simple[declared[i].ty].check(&value) {
                        let path = format!("{}/@{local}", &self.path[..frame.path_len]);
                        self.violation(&path, at, err.rule, err.message);
                    }
                }
                None => {
                    let path = format!("{}/@{local}", &self.path[..frame.path_len]);
                    let names: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
                    let allowed = if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    };
                    self.violation(
                        &path,
                        at,
                        "xsd.attribute_unexpected",
                        format!(
                            "attribute {key} is not allowed on {}; allowed: {allowed}",
                            frame.local
                        ),
                    );
                }
            }
        }
        for (i, d) in declared.iter().enumerate() {
            if d.required && !present[i] {
                let path = format!("{}/@{}", &self.path[..frame.path_len], d.name);
                self.violation(
                    &path,
                    at,
                    "xsd.attribute_missing",
                    format!("{} needs the attribute {}", frame.local, d.name),
                );
            }
        }
        Ok(())
    }

    fn text(&mut self, t: Cow<'i, str>, at: Pos) -> Result<(), ()> {
        let max_text = self.limits.max_text;
        let Some(frame) = self.stack.last_mut() else {
            if !t.trim().is_empty() {
                self.fatal(at, "xml.malformed", "text outside the root element".into());
                return Err(());
            }
            return Ok(());
        };
        match frame.kind {
            Kind::Simple { .. } => {
                if frame.text.len() + t.len() > max_text {
                    self.fatal(
                        at,
                        "xml.text_too_long",
                        format!("the text of an element is longer than {max_text} bytes"),
                    );
                    return Err(());
                }
                if frame.text.is_empty() {
                    frame.text = t;
                } else {
                    frame.text.to_mut().push_str(&t);
                }
            }
            Kind::Skip => {}
            _ if !t.trim().is_empty() && !frame.text_reported => {
                frame.text_reported = true;
                let (path, local, nil) = (
                    self.path[..frame.path_len].to_owned(),
                    frame.local.clone(),
                    frame.nil,
                );
                let (rule, msg) = if nil {
                    (
                        "xsd.nil_with_content",
                        format!("{local} is xsi:nil=\"true\" and must be empty"),
                    )
                } else {
                    (
                        "xsd.text_not_allowed",
                        format!(
                            "{local} holds elements only; the text `{}` is not allowed",
                            clip(t.trim())
                        ),
                    )
                };
                self.violation(&path, at, rule, msg);
            }
            _ => {}
        }
        Ok(())
    }

    fn close(&mut self) {
        let Some(frame) = self.stack.pop() else {
            return;
        };
        let at = frame.pos;
        match frame.kind {
            Kind::Model { ct, state } if !frame.nil => {
                if let Content::Model(model) = &self.schema.complex[ct].content
                    && let Some(set) = match &state {
                        ModelState::Dfa(i) => {
                            (!model.dfa.states[*i].accept).then(|| model.dfa.states[*i].set.clone())
                        }
                        ModelState::Nfa(set) => (!model.nfa.accepts(set)).then(|| set.clone()),
                    }
                {
                    let list = self.expected_list(&model.nfa.expected(&set));
                    self.violation_len(
                        frame.path_len,
                        at,
                        "xsd.missing_element",
                        format!("{} is incomplete; expected: {list}", frame.local),
                    );
                }
            }
            Kind::All { ct, seen } if !frame.nil => {
                if let Content::All(g) = &self.schema.complex[ct].content {
                    let none = !seen.iter().any(|s| *s);
                    if !(g.optional && none) {
                        let missing: Vec<ElemId> = g
                            .members
                            .iter()
                            .zip(&seen)
                            .filter(|((_, req), s)| *req && !**s)
                            .map(|((d, _), _)| *d)
                            .collect();
                        if !missing.is_empty() {
                            let list = self.expected_list(&missing);
                            self.violation_len(
                                frame.path_len,
                                at,
                                "xsd.missing_element",
                                format!("{} lacks: {list}", frame.local),
                            );
                        }
                    }
                }
            }
            Kind::Simple { st } if !frame.broken => {
                if frame.nil {
                    if !frame.text.is_empty() {
                        self.violation_len(
                            frame.path_len,
                            at,
                            "xsd.nil_with_content",
                            format!("{} is xsi:nil=\"true\" and must be empty", frame.local),
                        );
                    }
                } else {
                    if let Err(err) = self.schema.simple[st].check(&frame.text) {
                        self.violation_len(frame.path_len, at, err.rule, err.message);
                    }
                    if let Some(name) = (self.interest)(&frame.local) {
                        // The parent's path, made once for all the fields of its record.
                        let parent = match self.stack.last_mut() {
                            Some(p) => p
                                .shared_path
                                .get_or_insert_with(|| Arc::from(&self.path[..p.path_len]))
                                .clone(),
                            None => Arc::from(""),
                        };
                        self.out.fields.push(Field {
                            parent,
                            name,
                            value: self.schema.simple[st].builtin.normalize(&frame.text),
                            path: self.path[..frame.path_len].to_owned(),
                            line: Some(frame.pos.line),
                            column: Some(frame.pos.column(self.lines.text)),
                        });
                    }
                }
            }
            _ => {}
        }
        // The element is done: its segment leaves the path.
        self.path.truncate(frame.parent_len);
    }
}

fn push_number(out: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for d in &digits[i..] {
        out.push(char::from(*d));
    }
}

/// The element's namespace and local name; the name borrows the input when it can be found there (always, for
/// a start tag: `<` at `pos`, then the qualified name).
fn resolve<'i>(
    ns: ResolveResult<'_>,
    e: &BytesStart<'_>,
    text: &'i str,
    pos: usize,
    target: Option<&str>,
) -> Result<Name<'i>, String> {
    let ns = match ns {
        ResolveResult::Bound(n) => Ns::of(Some(n.0), target),
        ResolveResult::Unbound => Ns::None,
        ResolveResult::Unknown(p) => return Err(format!("namespace prefix `{p}` is not declared")),
    };
    let qname = e.name();
    let local = e.local_name();
    let (q, l) = (qname.as_ref(), local.as_ref());
    let start = pos + 1 + (q.len() - l.len());
    let local = match text.get(start..start + l.len()) {
        Some(borrowed) if borrowed == l => Cow::Borrowed(borrowed),
        _ => Cow::Owned(l.to_owned()),
    };
    Ok(Name { ns, local })
}

/// Checks the encoding and returns the document as text (UTF-8 BOM removed).
fn decode(bytes: &[u8]) -> Result<&str, (usize, String)> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.starts_with(b"\xFE\xFF")
        || bytes.starts_with(b"\xFF\xFE")
        || bytes.starts_with(b"\x00<")
        || bytes.starts_with(b"<\x00")
    {
        return Err((0, "the packet is UTF-16; send it as UTF-8".into()));
    }
    std::str::from_utf8(bytes).map_err(|e| {
        (
            e.valid_up_to(),
            format!(
                "byte {} is not valid UTF-8; send the packet as UTF-8",
                e.valid_up_to()
            ),
        )
    })
}

/// Validates `bytes` against `schema`. `interest` picks the simple elements whose values are returned as fields.
pub fn validate(
    schema: &Schema,
    bytes: &[u8],
    limits: &Limits,
    interest: &dyn Fn(&str) -> Option<&'static str>,
) -> XmlOutcome {
    let text = match decode(bytes) {
        Ok(t) => t,
        Err((offset, message)) => {
            let before = &bytes[..offset.min(bytes.len())];
            let line = before.iter().filter(|b| **b == b'\n').count() + 1;
            let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
            return XmlOutcome {
                violations: vec![Violation {
                    path: "/".into(),
                    line: Some(line),
                    column: Some(column),
                    rule: "xml.encoding",
                    message,
                }],
                fatal: true,
                ..XmlOutcome::default()
            };
        }
    };
    let mut reader = NsReader::from_str(text);
    let mut run = Run {
        schema,
        limits,
        interest,
        out: XmlOutcome::default(),
        stack: Vec::new(),
        scratch: Vec::new(),
        path: String::new(),
        lines: Lines {
            text,
            offset: 0,
            line: 1,
            line_start: 0,
        },
        root_seen: false,
    };
    loop {
        let pos = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let event = reader.read_resolved_event();
        let (ns, ev) = match event {
            Ok(x) => x,
            Err(err) => {
                let at_offset = usize::try_from(reader.error_position()).unwrap_or(pos);
                let at = run.lines.at(at_offset);
                let eof = usize::try_from(reader.buffer_position()).is_ok_and(|p| p >= text.len());
                let rule = if eof {
                    "xml.truncated"
                } else {
                    "xml.malformed"
                };
                run.fatal(
                    at,
                    rule,
                    format!("the packet is not well-formed XML: {err}"),
                );
                break;
            }
        };
        let at = run.lines.at(pos);
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                if run.root_seen && run.stack.is_empty() {
                    run.fatal(at, "xml.malformed", "a second root element".into());
                    break;
                }
                let name = match resolve(ns, e, text, pos, schema.target_ns.as_deref()) {
                    Ok(n) => n,
                    Err(m) => {
                        run.fatal(at, "xml.malformed", m);
                        break;
                    }
                };
                if run.open(e, name, &reader, at).is_err() {
                    break;
                }
                if matches!(ev, Event::Empty(_)) {
                    run.close();
                }
            }
            Event::End(_) => run.close(),
            Event::Text(t) => {
                if run.text(t.xml10_content(), at).is_err() {
                    break;
                }
            }
            Event::CData(c) => {
                if run.text(c.xml10_content(), at).is_err() {
                    break;
                }
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => Some(c.to_string()),
                    Ok(None) => match r.xml10_content().as_ref() {
                        "lt" => Some("<".into()),
                        "gt" => Some(">".into()),
                        "amp" => Some("&".into()),
                        "apos" => Some("'".into()),
                        "quot" => Some("\"".into()),
                        _ => None,
                    },
                    Err(_) => None,
                };
                match resolved {
                    Some(s) => {
                        if run.text(Cow::Owned(s), at).is_err() {
                            break;
                        }
                    }
                    None => {
                        run.fatal(at, "xml.undeclared_entity", format!("&{}; is not one of the five predefined XML entities; write the character itself", clip(&r.xml10_content())));
                        break;
                    }
                }
            }
            Event::DocType(_) => {
                run.fatal(at, "xml.doctype_forbidden", "DOCTYPE and entity declarations are refused; send the packet without a DOCTYPE".into());
                break;
            }
            Event::Decl(d) => {
                if let Some(Ok(enc)) = d.encoding() {
                    let enc = enc.to_ascii_lowercase();
                    if enc != "utf-8" && enc != "utf8" {
                        run.fatal(
                            at,
                            "xml.encoding",
                            format!(
                                "encoding=\"{}\" is not accepted; send the packet as UTF-8",
                                clip(&enc)
                            ),
                        );
                        break;
                    }
                }
            }
            Event::Eof => {
                if !run.stack.is_empty() {
                    let open = run
                        .stack
                        .last()
                        .map(|f| f.local.clone())
                        .unwrap_or_default();
                    run.fatal(
                        at,
                        "xml.truncated",
                        format!("the packet ends inside <{open}>; send it whole"),
                    );
                } else if !run.root_seen {
                    run.fatal(at, "xml.malformed", "the packet holds no element".into());
                }
                break;
            }
            Event::PI(_) | Event::Comment(_) => {}
        }
        if run.full() {
            run.out.truncated = true;
            break;
        }
    }
    run.out
}
