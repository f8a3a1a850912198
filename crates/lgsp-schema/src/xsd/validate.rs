//! The streaming validator: one pass over quick-xml events, no DOM. Memory is one frame per open element (bounded
//! by `max_depth`), the sibling counts and kept values of the open elements, the text of the current simple
//! element (bounded by `max_text`) and the violations (bounded by `max_errors`). DOCTYPE, entities other than the
//! five predefined ones, and non-UTF-8 input are refused.
//!
//! The hot path allocates nothing per element: names and values borrow the input, paths and line numbers are
//! worked out only when a violation needs them, and the domain rules run on each record as it closes.

use std::borrow::Cow;
use std::sync::Arc;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use super::load::{Content, Schema, Shape, TypeRef};
use super::model::ElemId;
use super::simple::{clip, line_ends};
use crate::domain::{self, Rules, Tally};
use crate::{Field, Limits, Violation};

const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

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
    /// What the domain rules found, in document order of the fields they name (at most `max_errors`, the first
    /// records found); empty unless [`Extras::rules`] were given.
    pub domain: Vec<Violation>,
    /// The root element's own kept values named in [`Extras::root_fields`] (its `MaDonVi`, for the
    /// jurisdiction check).
    pub fields: Vec<Field>,
}

/// What the caller wants besides the schema's verdict.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras<'a> {
    /// Per element declaration (by index): the domain field (index in [`domain::FIELDS`]) its value is kept
    /// as, if any.
    pub keep: &'a [Option<usize>],
    /// Run the domain rules on every record as it closes.
    pub rules: Option<Rules<'a>>,
    /// Kept fields of the root element to return in [`XmlOutcome::fields`].
    pub root_fields: &'a [&'static str],
}

/// Where a content model stands: a DFA state normally; an NFA state set after recovering from an error.
enum ModelState {
    Dfa(usize),
    /// Boxed: recovery is rare, and frames stay small.
    Nfa(Box<[usize]>),
}

enum Kind {
    Model {
        ct: usize,
        state: ModelState,
    },
    All {
        ct: usize,
        seen: Box<[bool]>,
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
    decl: Option<ElemId>,
    /// Borrowed from the input (no allocation per element).
    local: &'i str,
    /// Which of its parent's children of this name it is (1-based), and whether its path shows that number.
    index: u32,
    repeatable: bool,
    /// Byte offset of its `<`.
    pos: usize,
    /// Where this element's children's entries start in `Run::counts`, `Run::touched` and `Run::kept`, and
    /// how many namespace bindings were in scope before its own.
    counts_mark: u32,
    touched_mark: u32,
    kept_mark: u32,
    ns_mark: u32,
    nil: bool,
    /// The text of a simple element: as it stands in the input (line ends normalised at the close) until a
    /// character reference joins it; from then on normalised piece by piece (`eol_done`), so that a reference
    /// such as `&#13;` keeps its character.
    text: Cow<'i, str>,
    eol_done: bool,
    text_reported: bool,
    /// Simple content that held a child element: its value is not checked again.
    broken: bool,
}

fn push_segment(path: &mut String, local: &str, index: u32, repeatable: bool) {
    path.push('/');
    path.push_str(local);
    if repeatable || index > 1 {
        path.push('[');
        push_number(path, index);
        path.push(']');
    }
}

/// A simple value kept for the domain rules until its record (the parent element) closes.
struct Kept<'i> {
    /// Index in [`domain::FIELDS`].
    field: usize,
    value: Cow<'i, str>,
    pos: usize,
    index: u32,
    repeatable: bool,
}

impl Kept<'_> {
    fn name(&self) -> &'static str {
        domain::FIELDS.get(self.field).copied().unwrap_or_default()
    }
}

impl domain::Item for Kept<'_> {
    fn field(&self) -> usize {
        self.field
    }
    fn value(&self) -> &str {
        &self.value
    }
}

/// Byte offset → line and column, worked out only for violations. Remembers the last answer, so offsets that
/// mostly grow cost one pass over the document in all.
struct Lines<'a> {
    text: &'a str,
    offset: usize,
    line: usize,
    line_start: usize,
}

impl Lines<'_> {
    fn locate(&mut self, offset: usize) -> (usize, usize) {
        let bytes = self.text.as_bytes();
        let offset = offset.min(bytes.len());
        if offset >= self.offset {
            let span = &bytes[self.offset..offset];
            self.line += span.iter().filter(|b| **b == b'\n').count();
            if let Some(i) = span.iter().rposition(|b| *b == b'\n') {
                self.line_start = self.offset + i + 1;
            }
        } else {
            self.line -= bytes[offset..self.offset]
                .iter()
                .filter(|b| **b == b'\n')
                .count();
            self.line_start = bytes[..offset]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
        }
        self.offset = offset;
        let column = self
            .text
            .get(self.line_start..offset)
            .map_or(1, |s| s.chars().count() + 1);
        (self.line, column)
    }
}

/// An element's or attribute's namespace: none, one the schema declares elements in (its index in
/// `Schema::namespaces`: the target namespace, or an imported one), or another one (by its binding's index in
/// `Run::bindings`). Copied freely; compared with the schema's without touching strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ns {
    None,
    Known(usize),
    Other(usize),
}

impl Ns {
    /// Whether a declaration's namespace is this one.
    fn is(self, decl: &Option<usize>) -> bool {
        match (self, decl) {
            (Ns::None, None) => true,
            (Ns::Known(a), Some(b)) => a == *b,
            _ => false,
        }
    }
}

/// One namespace declaration in scope.
struct Binding {
    /// "" for the default namespace.
    prefix: String,
    uri: String,
    ns: Ns,
}

/// Local name and namespace of a resolved element.
struct Name<'i> {
    ns: Ns,
    local: &'i str,
}

struct Run<'s, 'i> {
    schema: &'s Schema,
    limits: &'s Limits,
    extras: Extras<'s>,
    text: &'i str,
    out: XmlOutcome,
    stack: Vec<Frame<'i>>,
    /// Sibling counts of the open elements' children by declared name: one row of `Schema::names` per depth
    /// (row d counts the children of the open element at depth d); `touched` lists the non-zero slots, so a
    /// closing element clears its row in the time it took to fill it.
    tally: Vec<u32>,
    touched: Vec<usize>,
    /// Sibling counts of children whose names the schema does not declare: (name, how many so far).
    counts: Vec<(&'i str, u32)>,
    /// Values kept for the open elements' records.
    kept: Vec<Kept<'i>>,
    /// Namespace declarations in scope, innermost last.
    bindings: Vec<Binding>,
    /// What the default namespace is in scope (kept in step with `bindings`).
    default_ns: Ns,
    /// Reused buffer for NFA steps.
    scratch: Vec<usize>,
    lines: Lines<'i>,
    root_seen: bool,
    /// What the root must agree with, from its children's records, and the root's `phienBan`.
    totals: Tally,
}

impl<'s, 'i> Run<'s, 'i> {
    fn full(&self) -> bool {
        self.out.violations.len() >= self.limits.max_errors
    }

    /// The path of the open elements, `/HoSoCBCCVC/QuaTrinhCongTac[2]/…` ("/" before the root).
    fn path(&self) -> String {
        let mut path = String::new();
        for f in &self.stack {
            push_segment(&mut path, f.local, f.index, f.repeatable);
        }
        if path.is_empty() {
            path.push('/');
        }
        path
    }

    fn violation(&mut self, path: String, at: usize, rule: &'static str, message: String) {
        if self.full() {
            self.out.truncated = true;
            return;
        }
        let (line, column) = self.lines.locate(at);
        self.out.violations.push(Violation {
            path,
            line: Some(line),
            column: Some(column),
            rule,
            message,
        });
    }

    fn fatal(&mut self, at: usize, rule: &'static str, message: String) {
        let path = self.path();
        let (line, column) = self.lines.locate(at);
        self.out.violations.push(Violation {
            path,
            line: Some(line),
            column: Some(column),
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

    /// The namespace bound to `prefix` ("" = the default namespace) by the innermost declaration in scope.
    fn lookup(&self, prefix: &str) -> Option<Ns> {
        if prefix == "xml" {
            return None;
        }
        self.bindings
            .iter()
            .rev()
            .find(|b| b.prefix == prefix)
            .map(|b| b.ns)
    }

    /// The namespace as a URI ("" = none), for messages and attribute checks.
    fn uri(&self, ns: Ns) -> &str {
        match ns {
            Ns::None => "",
            Ns::Known(i) => self.schema.namespaces.get(i).map_or("", String::as_str),
            Ns::Other(i) => self.bindings.get(i).map_or("", |b| b.uri.as_str()),
        }
    }

    /// Pushes the namespace declarations (`xmlns`, `xmlns:p`) of a start tag onto `bindings`.
    fn declare(&mut self, e: &BytesStart<'_>, at: usize) -> Result<(), ()> {
        for a in e.attributes() {
            let a = match a {
                Ok(a) => a,
                Err(err) => {
                    self.fatal(at, "xml.malformed", format!("attribute error: {err}"));
                    return Err(());
                }
            };
            let key = a.key.as_ref();
            let prefix = if key == "xmlns" {
                ""
            } else if let Some(p) = key.strip_prefix("xmlns:") {
                p
            } else {
                continue;
            };
            let uri = match a.normalized_value(quick_xml::XmlVersion::Implicit1_0) {
                Ok(v) => v,
                Err(err) => {
                    self.fatal(at, "xml.malformed", format!("attribute xmlns: {err}"));
                    return Err(());
                }
            };
            if !prefix.is_empty() && uri.is_empty() {
                self.fatal(
                    at,
                    "xml.malformed",
                    format!("xmlns:{prefix} cannot be undeclared in XML 1.0"),
                );
                return Err(());
            }
            let ns = if uri.is_empty() {
                Ns::None
            } else if let Some(i) = self.schema.namespaces.iter().position(|n| **n == *uri) {
                Ns::Known(i)
            } else {
                Ns::Other(self.bindings.len())
            };
            if prefix.is_empty() {
                self.default_ns = ns;
            }
            self.bindings.push(Binding {
                prefix: prefix.to_owned(),
                uri: uri.into_owned(),
                ns,
            });
        }
        Ok(())
    }

    /// The start tag's namespace and local name; the name borrows the input (`<` at `at`, then the name).
    fn resolve(&mut self, e: &BytesStart<'_>, at: usize) -> Result<Name<'i>, ()> {
        let qname = e.name();
        let q = qname.as_ref();
        let (prefix, skip) = match q.bytes().position(|b| b == b':') {
            None => ("", 0),
            Some(i) => (&q[..i], i + 1),
        };
        let local = self
            .text
            .get(at + 1 + skip..at + 1 + q.len())
            .unwrap_or_default();
        debug_assert_eq!(local, &q[skip..]);
        let ns = if prefix.is_empty() {
            self.default_ns
        } else {
            match self.lookup(prefix) {
                Some(ns) => ns,
                None => {
                    self.fatal(
                        at,
                        "xml.malformed",
                        format!("namespace prefix `{prefix}` is not declared"),
                    );
                    return Err(());
                }
            }
        };
        Ok(Name { ns, local })
    }

    /// Which of its parent's children of this name the new element is.
    fn count(&mut self, local: &'i str, decl: Option<ElemId>) -> u32 {
        let Some(parent) = self.stack.last() else {
            return 1;
        };
        let names = &self.schema.names;
        let id = match decl {
            Some(d) => Some(self.schema.elements[d].name_id),
            None => names.iter().position(|n| n == local),
        };
        let Some(id) = id else {
            return match self.counts[parent.counts_mark as usize..]
                .iter_mut()
                .find(|(k, _)| *k == local)
            {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    self.counts.push((local, 1));
                    1
                }
            };
        };
        let row = self.stack.len() - 1;
        let slot = row * names.len() + id;
        if self.tally.len() <= slot {
            self.tally.resize((row + 1) * names.len(), 0);
        }
        let n = &mut self.tally[slot];
        if *n == 0 {
            self.touched.push(slot);
        }
        *n += 1;
        *n
    }

    /// Decides which declaration the new child is, or reports why none.
    fn place_child(&mut self, name: &Name<'i>, at: usize) -> Option<ElemId> {
        let schema = self.schema;
        let matches = |d: ElemId| {
            let decl = &schema.elements[d];
            decl.name == name.local && name.ns.is(&decl.ns)
        };
        let parent = self.stack.last_mut()?;
        if parent.nil {
            let path = self.path();
            self.violation(
                path,
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
                            *set = std::mem::take(&mut self.scratch).into_boxed_slice();
                            return Some(d);
                        }
                        set.to_vec()
                    }
                };
                let parent_local = parent.local;
                let nfa = &model.nfa;
                let expected = nfa.expected(&set);
                let later = nfa.reachable_later(&set, matches);
                let path = self.path();
                let list = self.expected_list(&expected);
                if later {
                    self.violation(
                        path,
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
                        *state = ModelState::Nfa(next.into_boxed_slice());
                        return matched;
                    }
                } else {
                    let same_name = expected
                        .iter()
                        .find(|d| schema.elements[**d].name == name.local);
                    let message = if let Some(d) = same_name {
                        let wanted = schema.elements[*d].ns.map_or(Ns::None, Ns::Known);
                        format!(
                            "{} is in namespace {:?} here; {parent_local} expects it in {:?}",
                            name.local,
                            self.uri(name.ns),
                            self.uri(wanted)
                        )
                    } else {
                        format!(
                            "{} is not allowed here in {parent_local}; expected: {list}",
                            name.local
                        )
                    };
                    self.violation(path, at, "xsd.unexpected_element", message);
                }
                None
            }
            Kind::All { ct, seen } => {
                let Content::All(group) = &schema.complex[*ct].content else {
                    return None;
                };
                let message = match group.members.iter().position(|(d, _)| matches(*d)) {
                    Some(i) if !seen[i] => {
                        seen[i] = true;
                        return Some(group.members[i].0);
                    }
                    Some(_) => format!("{} may appear only once in {}", name.local, parent.local),
                    None => {
                        let parent_local = parent.local;
                        let names: Vec<ElemId> = group.members.iter().map(|(d, _)| *d).collect();
                        format!(
                            "{} is not allowed in {parent_local}; it takes: {}",
                            name.local,
                            self.expected_list(&names)
                        )
                    }
                };
                let path = self.path();
                self.violation(path, at, "xsd.unexpected_element", message);
                None
            }
            Kind::Simple { .. } | Kind::Empty => {
                let simple = matches!(parent.kind, Kind::Simple { .. });
                parent.broken = simple;
                let why = if simple {
                    "holds a plain value"
                } else {
                    "must be empty"
                };
                let message = format!(
                    "{} {why}; the child element {} is not allowed",
                    parent.local, name.local
                );
                let path = self.path();
                self.violation(path, at, "xsd.unexpected_element", message);
                None
            }
        }
    }

    /// A start tag (or an empty-element tag, which the caller closes at once).
    fn open(&mut self, e: &BytesStart<'_>, at: usize) -> Result<(), ()> {
        match self.expected_child(e, at) {
            Some((decl, local)) => self.push(e, Some(decl), local, at, self.bindings.len()),
            None => self.open_general(e, at),
        }
    }

    /// The common case, decided without resolving anything: an element without attributes or prefix that
    /// its parent's content model takes next (one DFA transition).
    #[inline]
    fn expected_child(&mut self, e: &BytesStart<'_>, at: usize) -> Option<(ElemId, &'i str)> {
        let depth = self.stack.len();
        if depth == 0 || depth >= self.limits.max_depth || !is_blank(e.attributes_raw()) {
            return None;
        }
        let schema = self.schema;
        let ns = self.default_ns;
        let qname = e.name();
        let q = qname.as_ref();
        let parent = self.stack.last_mut()?;
        let Kind::Model {
            ct,
            state: ModelState::Dfa(state),
        } = &mut parent.kind
        else {
            return None;
        };
        if parent.nil {
            return None;
        }
        let Content::Model(model) = &schema.complex[*ct].content else {
            return None;
        };
        // A declared name holds no colon, so a prefixed name never matches here.
        let (d, next) = model.dfa.states[*state].trans.iter().find(|(d, _)| {
            let decl = &schema.elements[*d];
            decl.name == q && ns.is(&decl.ns)
        })?;
        *state = *next;
        let local = self.text.get(at + 1..at + 1 + q.len()).unwrap_or_default();
        debug_assert_eq!(local, q);
        Some((*d, local))
    }

    /// Any start tag: the root, attributes and namespace declarations, prefixes, and elements out of place.
    fn open_general(&mut self, e: &BytesStart<'_>, at: usize) -> Result<(), ()> {
        if self.root_seen && self.stack.is_empty() {
            self.fatal(at, "xml.malformed", "a second root element".into());
            return Err(());
        }
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
        let ns_mark = self.bindings.len();
        let has_attributes = !is_blank(e.attributes_raw());
        if has_attributes {
            self.declare(e, at)?;
        }
        let name = self.resolve(e, at)?;
        let decl = if self.stack.is_empty() {
            self.root_seen = true;
            self.out.root = Some(name.local.to_string());
            match self.schema.globals.get(name.local).copied() {
                Some(d) if name.ns.is(&self.schema.elements[d].ns) => Some(d),
                _ => {
                    let ns = self.schema.target_ns.clone().unwrap_or_default();
                    let path = format!("/{}", name.local);
                    self.violation(path, at, "xsd.unknown_root", format!(
                        "the root element {{{}}}{} is not a packet of this schema; use a root declared in namespace {ns}",
                        self.uri(name.ns),
                        name.local
                    ));
                    None
                }
            }
        } else {
            self.place_child(&name, at)
        };
        self.push(e, decl, name.local, at, ns_mark)
    }

    /// Opens the element's frame; `decl` is its declaration, if it has one here.
    fn push(
        &mut self,
        e: &BytesStart<'_>,
        decl: Option<ElemId>,
        local: &'i str,
        at: usize,
        ns_mark: usize,
    ) -> Result<(), ()> {
        let index = self.count(local, decl);
        let element = decl.and_then(|d| self.schema.elements.get(d));
        let kind = match element.map(|el| el.shape) {
            None => Kind::Skip,
            Some(Shape::Simple(st)) => Kind::Simple { st },
            Some(Shape::Empty) => Kind::Empty,
            Some(Shape::Model(ct)) => Kind::Model {
                ct,
                state: ModelState::Dfa(0),
            },
            Some(Shape::All(ct, n)) => Kind::All {
                ct,
                seen: vec![false; n].into_boxed_slice(),
            },
        };
        let mark = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.stack.push(Frame {
            kind,
            decl,
            local,
            index,
            repeatable: element.is_some_and(|el| el.repeatable),
            pos: at,
            counts_mark: mark(self.counts.len()),
            touched_mark: mark(self.touched.len()),
            kept_mark: mark(self.kept.len()),
            ns_mark: mark(ns_mark),
            nil: false,
            text: Cow::Borrowed(""),
            eol_done: false,
            text_reported: false,
            broken: false,
        });
        if element.is_some_and(|el| el.has_attributes) || !is_blank(e.attributes_raw()) {
            self.attributes(e, at)?;
        }
        Ok(())
    }

    /// A well-formedness or limit failure in the start tag of the element just opened: reported at its parent.
    fn fatal_in_tag(&mut self, at: usize, rule: &'static str, message: String) -> Result<(), ()> {
        self.stack.pop();
        self.fatal(at, rule, message);
        Err(())
    }

    /// The attributes of the element just opened (the top of the stack).
    fn attributes(&mut self, e: &BytesStart<'_>, at: usize) -> Result<(), ()> {
        let Some(frame) = self.stack.last() else {
            return Ok(());
        };
        let (decl, local_name) = (frame.decl, frame.local);
        let declared = match decl.map(|d| self.schema.elements[d].ty) {
            Some(TypeRef::Complex(ct)) => self.schema.complex[ct].attributes.as_slice(),
            _ => &[],
        };
        let attribute_path = |run: &Self, local: &str| {
            let mut path = run.path();
            path.push_str("/@");
            path.push_str(local);
            path
        };
        let mut present = vec![false; declared.len()];
        let mut count = 0usize;
        for a in e.attributes() {
            let a = match a {
                Ok(a) => a,
                Err(err) => {
                    return self.fatal_in_tag(
                        at,
                        "xml.malformed",
                        format!("attribute error: {err}"),
                    );
                }
            };
            count += 1;
            if count > self.limits.max_attributes {
                let message = format!(
                    "an element carries more than {} attributes",
                    self.limits.max_attributes
                );
                return self.fatal_in_tag(at, "xml.too_many_attributes", message);
            }
            let key = a.key.as_ref();
            if key == "xmlns" || key.starts_with("xmlns:") {
                continue;
            }
            let value = match a.normalized_value(quick_xml::XmlVersion::Implicit1_0) {
                Ok(v) => v,
                Err(err) => {
                    return self.fatal_in_tag(
                        at,
                        "xml.malformed",
                        format!("attribute {key}: {err}"),
                    );
                }
            };
            if value.len() > self.limits.max_text {
                let message = format!(
                    "attribute {key} is longer than {} bytes",
                    self.limits.max_text
                );
                return self.fatal_in_tag(at, "xml.text_too_long", message);
            }
            // Unprefixed attributes are in no namespace; prefixed ones resolve through the declarations in scope.
            let (ns, local) = match key.split_once(':') {
                None => (None, key),
                Some(("xml", l)) => (Some(XML_NS), l),
                Some((p, l)) => match self.lookup(p) {
                    Some(ns) => (Some(self.uri(ns)).filter(|u| !u.is_empty()), l),
                    None => {
                        let message = format!("namespace prefix `{p}` is not declared");
                        return self.fatal_in_tag(at, "xml.malformed", message);
                    }
                },
            };
            if decl.is_none() {
                continue;
            }
            if ns == Some(XSI) {
                match local {
                    "nil" => match value.trim() {
                        "true" | "1" => {
                            if decl.is_some_and(|d| self.schema.elements[d].nillable) {
                                if let Some(f) = self.stack.last_mut() {
                                    f.nil = true;
                                }
                            } else {
                                let path = self.path();
                                self.violation(path, at, "xsd.nil_not_allowed", format!("{local_name} is not nillable; send a value or leave the element out"));
                            }
                        }
                        "false" | "0" => {}
                        other => {
                            let path = self.path();
                            self.violation(
                                path,
                                at,
                                "xsd.invalid_value",
                                format!("xsi:nil=\"{}\" must be true or false", clip(other)),
                            );
                        }
                    },
                    "type" => {
                        let path = self.path();
                        self.violation(
                            path,
                            at,
                            "xsd.xsi_type_unsupported",
                            "xsi:type is not supported; send the declared type".into(),
                        );
                    }
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
                        let path = attribute_path(self, local);
                        self.violation(path, at, err.rule, err.message);
                    }
                    // The packet's version, for the rules that depend on it.
                    if local == "phienBan" && self.stack.len() == 1 {
                        self.totals.set_version(value.trim());
                    }
                }
                None => {
                    let path = attribute_path(self, local);
                    let names: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
                    let allowed = if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    };
                    self.violation(
                        path,
                        at,
                        "xsd.attribute_unexpected",
                        format!(
                            "attribute {key} is not allowed on {local_name}; allowed: {allowed}"
                        ),
                    );
                }
            }
        }
        for (i, d) in declared.iter().enumerate() {
            if d.required && !present[i] {
                let path = attribute_path(self, &d.name);
                self.violation(
                    path,
                    at,
                    "xsd.attribute_missing",
                    format!("{local_name} needs the attribute {}", d.name),
                );
            }
        }
        Ok(())
    }

    /// Character data at `at`: `raw` as it stands in the input (no references; line ends not yet normalised).
    /// The common cases (a value, whitespace between elements) are decided inline.
    #[inline(always)]
    fn text(&mut self, raw: Cow<'i, str>, at: usize) -> Result<(), ()> {
        match self.stack.last_mut() {
            Some(frame) => match frame.kind {
                Kind::Simple { .. }
                    if frame.text.is_empty() && raw.len() <= self.limits.max_text =>
                {
                    frame.text = raw;
                    Ok(())
                }
                Kind::Skip => Ok(()),
                Kind::Model { .. } | Kind::All { .. } | Kind::Empty if is_blank(&raw) => Ok(()),
                _ => self.text_other(raw, at),
            },
            None if is_blank(&raw) => Ok(()),
            None => self.text_other(raw, at),
        }
    }

    /// The character a reference (`&amp;`, `&#13;`, …) stands for, taken as it is.
    fn reference(&mut self, c: String, at: usize) -> Result<(), ()> {
        let max_text = self.limits.max_text;
        match self.stack.last_mut() {
            Some(frame) if matches!(frame.kind, Kind::Simple { .. }) => {
                if frame.text.len() + c.len() > max_text {
                    self.fatal(
                        at,
                        "xml.text_too_long",
                        format!("the text of an element is longer than {max_text} bytes"),
                    );
                    return Err(());
                }
                if !frame.eol_done {
                    frame.text = line_ends(std::mem::take(&mut frame.text));
                    frame.eol_done = true;
                }
                frame.text.to_mut().push_str(&c);
                Ok(())
            }
            _ => self.text_other(Cow::Owned(c), at),
        }
    }

    /// The rest of [`Run::text`]: a value in pieces, text too long, where no text belongs.
    #[cold]
    #[inline(never)]
    fn text_other(&mut self, raw: Cow<'i, str>, at: usize) -> Result<(), ()> {
        let max_text = self.limits.max_text;
        let Some(frame) = self.stack.last_mut() else {
            if !is_blank(&raw) {
                self.fatal(at, "xml.malformed", "text outside the root element".into());
                return Err(());
            }
            return Ok(());
        };
        match frame.kind {
            Kind::Simple { .. } => {
                if frame.text.len() + raw.len() > max_text {
                    self.fatal(
                        at,
                        "xml.text_too_long",
                        format!("the text of an element is longer than {max_text} bytes"),
                    );
                    return Err(());
                }
                let t = if frame.eol_done { line_ends(raw) } else { raw };
                if frame.text.is_empty() {
                    frame.text = t;
                } else {
                    frame.text.to_mut().push_str(&t);
                }
            }
            Kind::Skip => {}
            _ if !frame.text_reported && !is_blank(&raw) => {
                frame.text_reported = true;
                let message = if frame.nil {
                    (
                        "xsd.nil_with_content",
                        format!("{} is xsi:nil=\"true\" and must be empty", frame.local),
                    )
                } else {
                    (
                        "xsd.text_not_allowed",
                        format!(
                            "{} holds elements only; the text `{}` is not allowed",
                            frame.local,
                            clip(raw.trim())
                        ),
                    )
                };
                let path = self.path();
                self.violation(path, at, message.0, message.1);
            }
            _ => {}
        }
        Ok(())
    }

    /// The end of the element on top of the stack: its content model must be complete, its value valid; its
    /// record goes to the domain rules. It stays on the stack (so paths include it) until the end.
    fn close(&mut self) {
        let Some(top) = self.stack.len().checked_sub(1) else {
            return;
        };
        if self.kept.len() > self.stack[top].kept_mark as usize {
            self.record(top);
        }
        let frame = &self.stack[top];
        let (at, nil) = (frame.pos, frame.nil);
        match frame.kind {
            Kind::Model { ct, ref state } if !nil => {
                if let Content::Model(model) = &self.schema.complex[ct].content
                    && let Some(set) = match state {
                        ModelState::Dfa(i) => {
                            (!model.dfa.states[*i].accept).then(|| model.dfa.states[*i].set.clone())
                        }
                        ModelState::Nfa(set) => (!model.nfa.accepts(set)).then(|| set.to_vec()),
                    }
                {
                    let message = format!(
                        "{} is incomplete; expected: {}",
                        frame.local,
                        self.expected_list(&model.nfa.expected(&set))
                    );
                    let path = self.path();
                    self.violation(path, at, "xsd.missing_element", message);
                }
            }
            Kind::All { ct, ref seen } if !nil => {
                if let Content::All(g) = &self.schema.complex[ct].content {
                    let none = !seen.iter().any(|s| *s);
                    let missing: Vec<ElemId> = g
                        .members
                        .iter()
                        .zip(seen)
                        .filter(|((_, req), s)| *req && !**s)
                        .map(|((d, _), _)| *d)
                        .collect();
                    if !(missing.is_empty() || (g.optional && none)) {
                        let message =
                            format!("{} lacks: {}", frame.local, self.expected_list(&missing));
                        let path = self.path();
                        self.violation(path, at, "xsd.missing_element", message);
                    }
                }
            }
            Kind::Simple { st } if !frame.broken => {
                if nil {
                    if !frame.text.is_empty() {
                        let message =
                            format!("{} is xsi:nil=\"true\" and must be empty", frame.local);
                        let path = self.path();
                        self.violation(path, at, "xsd.nil_with_content", message);
                    }
                } else {
                    let ty = &self.schema.simple[st];
                    let (decl, index, repeatable) = (frame.decl, frame.index, frame.repeatable);
                    let eol = !frame.eol_done;
                    let raw = std::mem::take(&mut self.stack[top].text);
                    // Dates, numbers and booleans hold no whitespace: a raw text that passes is already in
                    // normal form, so the scan for whitespace runs only when it does not.
                    let passed = !ty.builtin.is_stringy() && ty.check_normalized(&raw).is_ok();
                    let value = if passed {
                        raw
                    } else {
                        match raw {
                            Cow::Borrowed(s) => ty.builtin.normalized_text(s, eol),
                            Cow::Owned(s) => {
                                Cow::Owned(ty.builtin.normalized_text(&s, eol).into_owned())
                            }
                        }
                    };
                    if let Err(err) = if passed {
                        Ok(())
                    } else {
                        ty.check_normalized(&value)
                    } {
                        let path = self.path();
                        self.violation(path, at, err.rule, err.message);
                    }
                    if let Some(field) =
                        decl.and_then(|d| self.extras.keep.get(d).copied().flatten())
                    {
                        self.kept.push(Kept {
                            field,
                            value,
                            pos: at,
                            index,
                            repeatable,
                        });
                    }
                }
            }
            _ => {}
        }
        // The element is done: its children's counts and its namespace declarations leave the scope.
        let frame = &self.stack[top];
        let (counts_mark, touched_mark, ns_mark) = (
            frame.counts_mark as usize,
            frame.touched_mark as usize,
            frame.ns_mark as usize,
        );
        self.stack.truncate(top);
        self.counts.truncate(counts_mark);
        for slot in self.touched.drain(touched_mark..) {
            if let Some(n) = self.tally.get_mut(slot) {
                *n = 0;
            }
        }
        if self.bindings.len() > ns_mark {
            self.bindings.truncate(ns_mark);
            self.default_ns = self.lookup("").unwrap_or(Ns::None);
        }
    }

    /// The element on top of the stack (at `top`) closes holding kept values: run the domain rules on them as
    /// one record; the root's values also go to the caller.
    fn record(&mut self, top: usize) {
        let mark = self.stack[top].kept_mark as usize;
        let items = &self.kept[mark..];
        let element = self.stack[top].local;
        let mut found: Vec<(usize, &'static str, String)> = Vec::new();
        if let Some(rules) = &self.extras.rules {
            let full = self.out.domain.len() >= self.limits.max_errors;
            domain::close_record(
                element,
                items,
                rules,
                &mut self.totals,
                &mut |i, rule, message| {
                    if !full {
                        found.push((i, rule, message));
                    }
                },
            );
        }
        let root = top == 0
            && items
                .iter()
                .any(|k| self.extras.root_fields.contains(&k.name()));
        if !found.is_empty() || root {
            let parent = self.path();
            let item_path = |k: &Kept| {
                let mut path = parent.clone();
                push_segment(&mut path, k.name(), k.index, k.repeatable);
                path
            };
            for (i, rule, message) in found {
                let k = &self.kept[mark + i];
                let path = item_path(k);
                let (line, column) = self.lines.locate(k.pos);
                if self.out.domain.len() < self.limits.max_errors {
                    self.out.domain.push(Violation {
                        path,
                        line: Some(line),
                        column: Some(column),
                        rule,
                        message,
                    });
                }
            }
            if root {
                let shared: Arc<str> = Arc::from(parent.as_str());
                for i in mark..self.kept.len() {
                    let k = &self.kept[i];
                    if !self.extras.root_fields.contains(&k.name()) {
                        continue;
                    }
                    let path = item_path(k);
                    let (name, value, pos) = (k.name(), k.value.to_string(), k.pos);
                    let (line, column) = self.lines.locate(pos);
                    self.out.fields.push(Field {
                        parent: shared.clone(),
                        name,
                        value,
                        path,
                        line: Some(line),
                        column: Some(column),
                    });
                }
            }
        }
        self.kept.truncate(mark);
    }
}

/// Whitespace only.
fn is_blank(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
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

/// Checks the encoding and returns the document as text (UTF-8 BOM removed) and the BOM's length.
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

/// Validates `bytes` against `schema`; `extras` asks for kept values and the domain rules.
pub fn validate(schema: &Schema, bytes: &[u8], limits: &Limits, extras: Extras<'_>) -> XmlOutcome {
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
    let mut reader = Reader::from_str(text);
    let mut run = Run {
        schema,
        limits,
        extras,
        text,
        out: XmlOutcome::default(),
        // Room for the usual depth and record size up front: growing these would cost more than a small
        // packet's validation.
        stack: Vec::with_capacity(8),
        tally: vec![0; schema.names.len() * 4],
        touched: Vec::with_capacity(32),
        counts: Vec::new(),
        kept: Vec::with_capacity(16),
        bindings: Vec::new(),
        default_ns: Ns::None,
        scratch: Vec::new(),
        lines: Lines {
            text,
            offset: 0,
            line: 1,
            line_start: 0,
        },
        root_seen: false,
        totals: Tally::default(),
    };
    loop {
        let at = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let ev = match reader.read_event() {
            Ok(ev) => ev,
            Err(err) => {
                let at_offset = usize::try_from(reader.error_position()).unwrap_or(at);
                let eof = usize::try_from(reader.buffer_position()).is_ok_and(|p| p >= text.len());
                let rule = if eof {
                    "xml.truncated"
                } else {
                    "xml.malformed"
                };
                run.fatal(
                    at_offset,
                    rule,
                    format!("the packet is not well-formed XML: {err}"),
                );
                break;
            }
        };
        match ev {
            Event::Start(ref e) => {
                if run.open(e, at).is_err() {
                    break;
                }
            }
            Event::Empty(ref e) => {
                if run.open(e, at).is_err() {
                    break;
                }
                run.close();
            }
            Event::End(_) => run.close(),
            Event::Text(t) => {
                if run.text(t.into_inner(), at).is_err() {
                    break;
                }
            }
            Event::CData(c) => {
                let content = c.xml10_content().into_owned();
                if run.text(Cow::Owned(content), at).is_err() {
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
                        if run.reference(s, at).is_err() {
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
                if let Some(Ok(enc)) = d.encoding()
                    && !enc.eq_ignore_ascii_case("utf-8")
                    && !enc.eq_ignore_ascii_case("utf8")
                {
                    run.fatal(
                        at,
                        "xml.encoding",
                        format!(
                            "encoding=\"{}\" is not accepted; send the packet as UTF-8",
                            clip(&enc.to_ascii_lowercase())
                        ),
                    );
                    break;
                }
            }
            Event::Eof => {
                if let Some(open) = run.stack.last().map(|f| f.local) {
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
    // Records are checked as they close (inner ones first): put their findings back in document order.
    run.out
        .domain
        .sort_by_key(|v| (v.line.unwrap_or(0), v.column.unwrap_or(0)));
    run.out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::xsd::EmbeddedFiles;

    const SCHEMA: &str = r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns="urn:t" targetNamespace="urn:t" elementFormDefault="qualified">
  <xs:element name="r">
    <xs:complexType>
      <xs:sequence>
        <xs:element name="lf" minOccurs="0" maxOccurs="unbounded">
          <xs:simpleType><xs:restriction base="xs:string"><xs:pattern value="a\nb"/></xs:restriction></xs:simpleType>
        </xs:element>
        <xs:element name="cr" minOccurs="0" maxOccurs="unbounded">
          <xs:simpleType><xs:restriction base="xs:string"><xs:pattern value="a\rb"/></xs:restriction></xs:simpleType>
        </xs:element>
        <xs:element name="ns" minOccurs="0" maxOccurs="unbounded">
          <xs:simpleType><xs:restriction base="xs:normalizedString"><xs:pattern value="a b"/></xs:restriction></xs:simpleType>
        </xs:element>
      </xs:sequence>
    </xs:complexType>
  </xs:element>
</xs:schema>"#;

    fn rules(doc: &str) -> Vec<(String, &'static str)> {
        let files: &[(&str, &str)] = &[("t.xsd", SCHEMA)];
        let files: &'static [(&'static str, &'static str)] =
            Box::leak(files.to_vec().into_boxed_slice());
        let schema = Schema::load_from(&EmbeddedFiles(files), Path::new("t.xsd")).expect("schema");
        let out = validate(
            &schema,
            doc.as_bytes(),
            &Limits::default(),
            Extras::default(),
        );
        out.violations
            .into_iter()
            .map(|v| (v.path, v.rule))
            .collect()
    }

    #[test]
    fn line_ends_are_normalised_but_referenced_characters_kept() {
        let ok = "<r xmlns=\"urn:t\"><lf>a\r\nb</lf><lf>a\rb</lf><lf>a&#10;b</lf><cr>a&#13;b</cr><ns>a\r\nb</ns><ns>a&#13;b</ns></r>";
        assert_eq!(rules(ok), []);
        let bad = "<r xmlns=\"urn:t\"><lf>a&#13;b</lf><cr>a\rb</cr><cr>a\r&#13;b</cr><ns>a\r\n\r\nb</ns></r>";
        assert_eq!(
            rules(bad),
            [
                ("/r/lf[1]".to_owned(), "xsd.pattern"),
                ("/r/cr[1]".to_owned(), "xsd.pattern"),
                ("/r/cr[2]".to_owned(), "xsd.pattern"),
                ("/r/ns[1]".to_owned(), "xsd.pattern"),
            ]
        );
    }

    #[test]
    fn sibling_numbers_count_each_name_on_its_own() {
        let doc = "<r xmlns=\"urn:t\"><lf>x</lf><lf>a\nb</lf><cr>y</cr><ns>z</ns><ns>a b</ns><ns>w</ns></r>";
        assert_eq!(
            rules(doc),
            [
                ("/r/lf[1]".to_owned(), "xsd.pattern"),
                ("/r/cr[1]".to_owned(), "xsd.pattern"),
                ("/r/ns[1]".to_owned(), "xsd.pattern"),
                ("/r/ns[3]".to_owned(), "xsd.pattern"),
            ]
        );
    }
}
