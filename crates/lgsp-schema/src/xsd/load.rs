//! Loading an XSD (and the local files it includes or imports) into the compiled [`Schema`]. Every construct
//! outside the subset is a load-time error naming the construct, the file and the line — never silently ignored.
//!
//! Named components are kept per namespace (`{namespace}local`), so a schema may `xs:import` a local schema of
//! another namespace (the XML-DSig profile of the approval packets) and refer to its elements and types.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use regex::Regex;

use super::model::{AllGroup, ElemId, Model, Particle};
use super::simple::{Builtin, Facets, SimpleType, translate_pattern};

pub const XS: &str = "http://www.w3.org/2001/XMLSchema";

/// A schema that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct LoadError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// An element declaration.
#[derive(Debug, Clone)]
pub struct ElementDecl {
    pub name: String,
    /// Namespace the element must be in, an index into [`Schema::namespaces`] (`None` = no namespace).
    pub ns: Option<usize>,
    pub ty: TypeRef,
    pub nillable: bool,
    /// Some particle lets it occur more than once (paths then show `[n]`).
    pub repeatable: bool,
    /// Declarations of the same local name share this number (an index into [`Schema::names`]).
    pub name_id: usize,
    /// What validating an instance needs first, resolved once at load.
    pub shape: Shape,
    /// Its type declares attributes (an instance without any still has its attributes checked).
    pub has_attributes: bool,
}

/// An element declaration's content, resolved through its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A simple type, or a complex type with simple content: the index of the simple type.
    Simple(usize),
    Empty,
    /// A content model: the index of the complex type.
    Model(usize),
    /// An `xs:all` group: the index of the complex type and the number of members.
    All(usize, usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeRef {
    Simple(usize),
    Complex(usize),
}

#[derive(Debug, Clone)]
pub struct AttributeDecl {
    pub name: String,
    pub ty: usize,
    pub required: bool,
}

#[derive(Debug, Clone)]
pub enum Content {
    Empty,
    Simple(usize),
    Model(Model),
    All(AllGroup),
}

#[derive(Debug, Clone)]
pub struct ComplexType {
    pub name: Option<String>,
    pub attributes: Vec<AttributeDecl>,
    pub content: Content,
}

/// A compiled schema.
#[derive(Debug, Clone)]
pub struct Schema {
    pub target_ns: Option<String>,
    /// Every namespace the schema declares elements in: the target namespace first, then the imported ones.
    pub namespaces: Vec<String>,
    pub elements: Vec<ElementDecl>,
    pub globals: HashMap<String, ElemId>,
    pub complex: Vec<ComplexType>,
    pub simple: Vec<SimpleType>,
    /// The distinct local names of the element declarations, numbered by [`ElementDecl::name_id`].
    pub names: Vec<String>,
}

/// One element of a schema document.
#[derive(Debug)]
struct XNode {
    local: String,
    attrs: Vec<(String, String)>,
    children: Vec<XNode>,
    line: usize,
    scope: Rc<HashMap<String, String>>,
    doc: usize,
}

impl XNode {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn content(&self) -> impl Iterator<Item = &XNode> {
        self.children.iter().filter(|c| c.local != "annotation")
    }
}

/// Per schema document.
struct DocInfo {
    file: String,
    qualified: bool,
    /// The namespace its components are declared in (a chameleon include's is its includer's).
    tns: Option<String>,
}

/// How a schema document came to be loaded, and so which target namespace it must have.
enum Origin {
    /// The schema file itself.
    Root,
    /// `xs:include`d: the includer's namespace, or none (a chameleon, which adopts it).
    Include(Option<String>),
    /// `xs:import`ed for this namespace.
    Import(String),
}

/// The local name of a [`key`].
fn local_of(key: &str) -> &str {
    key.rsplit_once('}').map_or(key, |(_, local)| local)
}

/// The key of a named component: `{namespace}local`.
fn key(ns: Option<&str>, local: &str) -> String {
    match ns {
        Some(ns) => format!("{{{ns}}}{local}"),
        None => local.to_owned(),
    }
}

/// Where schema files come from: a directory, or files compiled into the binary.
pub trait SchemaFiles {
    /// The text of the file at `name` (a relative path, e.g. `common.xsd`).
    fn read(&self, name: &Path) -> Result<String, String>;
    /// How errors name the file.
    fn display(&self, name: &Path) -> String;
}

/// Schema files in a directory.
pub struct DirFiles(pub PathBuf);

impl SchemaFiles for DirFiles {
    fn read(&self, name: &Path) -> Result<String, String> {
        std::fs::read_to_string(self.0.join(name)).map_err(|e| e.to_string())
    }

    fn display(&self, name: &Path) -> String {
        self.0.join(name).display().to_string()
    }
}

/// Schema files compiled into the binary: (name, text).
pub struct EmbeddedFiles(pub &'static [(&'static str, &'static str)]);

impl SchemaFiles for EmbeddedFiles {
    fn read(&self, name: &Path) -> Result<String, String> {
        let wanted = name.to_string_lossy();
        self.0
            .iter()
            .find(|(n, _)| *n == wanted)
            .map(|(_, t)| (*t).to_owned())
            .ok_or_else(|| "no such embedded schema file".to_owned())
    }

    fn display(&self, name: &Path) -> String {
        format!("<embedded>/{}", name.display())
    }
}

/// `a/b/../c.xsd` → `a/c.xsd`; a path leaving the root is refused.
fn normalise(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(x) => out.push(x),
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            _ => return None,
        }
    }
    Some(out)
}

struct Loader<'f> {
    files: &'f dyn SchemaFiles,
    docs: Vec<DocInfo>,
    target_ns: Option<String>,
    seen_files: HashSet<PathBuf>,
    top_simple: HashMap<String, Rc<XNode>>,
    top_complex: HashMap<String, Rc<XNode>>,
    top_elements: HashMap<String, Rc<XNode>>,
    schema: Schema,
    simple_done: HashMap<String, usize>,
    simple_busy: HashSet<String>,
    complex_done: HashMap<String, usize>,
    global_done: HashMap<String, ElemId>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Attributes each construct may carry (namespace declarations aside).
fn allowed_attrs(local: &str) -> Option<&'static [&'static str]> {
    Some(match local {
        "schema" => &[
            "targetNamespace",
            "elementFormDefault",
            "attributeFormDefault",
            "version",
            "id",
        ],
        "include" => &["schemaLocation", "id"],
        "import" => &["namespace", "schemaLocation", "id"],
        "element" => &[
            "name",
            "type",
            "ref",
            "minOccurs",
            "maxOccurs",
            "nillable",
            "id",
        ],
        "complexType" => &["name", "id", "mixed"],
        "simpleType" => &["name", "id"],
        "sequence" | "choice" | "all" => &["minOccurs", "maxOccurs", "id"],
        "attribute" => &["name", "type", "use", "default", "id"],
        "simpleContent" => &["id"],
        "extension" | "restriction" => &["base", "id"],
        "pattern" | "enumeration" | "length" | "minLength" | "maxLength" | "minInclusive"
        | "maxInclusive" | "minExclusive" | "maxExclusive" | "totalDigits" | "fractionDigits" => {
            &["value", "fixed", "id"]
        }
        _ => return None,
    })
}

impl Loader<'_> {
    fn err(&self, n: &XNode, message: impl Into<String>) -> LoadError {
        LoadError {
            file: self.docs[n.doc].file.clone(),
            line: n.line,
            message: message.into(),
        }
    }

    /// Parses one schema file into its node tree, checking every construct against the subset.
    fn parse_file(&mut self, path: &Path) -> Result<Option<XNode>, LoadError> {
        if !self.seen_files.insert(path.to_owned()) {
            return Ok(None);
        }
        let file = self.files.display(path);
        let text = self.files.read(path).map_err(|e| LoadError {
            file: file.clone(),
            line: 0,
            message: format!("cannot read the schema: {e}"),
        })?;
        let doc = self.docs.len();
        self.docs.push(DocInfo {
            file: file.clone(),
            qualified: false,
            tns: None,
        });
        let mut reader = NsReader::from_str(&text);
        let mut stack: Vec<XNode> = Vec::new();
        let mut root = None;
        let mut skip_depth = 0usize;
        loop {
            let pos = usize::try_from(reader.buffer_position()).unwrap_or(0);
            let event = reader.read_resolved_event();
            let (ns, ev) = match event {
                Ok((ns, ev)) => (
                    match ns {
                        ResolveResult::Bound(n) => Some(n.0.to_owned()),
                        _ => None,
                    },
                    ev,
                ),
                Err(e) => {
                    let at = usize::try_from(reader.error_position()).unwrap_or(0);
                    return Err(LoadError {
                        file,
                        line: line_of(&text, at),
                        message: format!("not well-formed XML: {e}"),
                    });
                }
            };
            let line = line_of(&text, pos);
            match ev {
                Event::Start(ref e) | Event::Empty(ref e) => {
                    let empty = matches!(ev, Event::Empty(_));
                    if skip_depth > 0 {
                        if !empty {
                            skip_depth += 1;
                        }
                        continue;
                    }
                    let local = e.local_name().as_ref().to_owned();
                    if ns.as_deref() != Some(XS) {
                        return Err(LoadError {
                            file,
                            line,
                            message: format!(
                                "<{}> is not an XML Schema construct",
                                e.name().as_ref()
                            ),
                        });
                    }
                    if local == "annotation" {
                        if !empty {
                            skip_depth = 1;
                        }
                        continue;
                    }
                    let mut scope: HashMap<String, String> =
                        stack.last().map(|p| (*p.scope).clone()).unwrap_or_default();
                    let mut attrs = Vec::new();
                    for a in e.attributes() {
                        let a = a.map_err(|err| LoadError {
                            file: file.clone(),
                            line,
                            message: format!("bad attribute: {err}"),
                        })?;
                        let key = a.key.as_ref().to_owned();
                        let value = a
                            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .map_err(|err| LoadError {
                                file: file.clone(),
                                line,
                                message: format!("bad attribute value: {err}"),
                            })?
                            .into_owned();
                        if key == "xmlns" {
                            scope.insert(String::new(), value);
                        } else if let Some(p) = key.strip_prefix("xmlns:") {
                            scope.insert(p.to_owned(), value);
                        } else {
                            attrs.push((key, value));
                        }
                    }
                    let Some(allowed) = allowed_attrs(&local) else {
                        return Err(LoadError {
                            file,
                            line,
                            message: format!(
                                "xs:{local} is outside the supported XSD subset (see schemas/README.md)"
                            ),
                        });
                    };
                    if let Some((k, _)) = attrs
                        .iter()
                        .find(|(k, _)| !allowed.contains(&k.as_str()) && !k.starts_with("xml:"))
                    {
                        return Err(LoadError {
                            file,
                            line,
                            message: format!(
                                "attribute `{k}` on xs:{local} is outside the supported XSD subset"
                            ),
                        });
                    }
                    let node = XNode {
                        local,
                        attrs,
                        children: Vec::new(),
                        line,
                        scope: Rc::new(scope),
                        doc,
                    };
                    if empty {
                        match stack.last_mut() {
                            Some(parent) => parent.children.push(node),
                            None => root = Some(node),
                        }
                    } else {
                        stack.push(node);
                    }
                }
                Event::End(_) => {
                    if skip_depth > 0 {
                        skip_depth -= 1;
                        continue;
                    }
                    if let Some(node) = stack.pop() {
                        match stack.last_mut() {
                            Some(parent) => parent.children.push(node),
                            None => root = Some(node),
                        }
                    }
                }
                Event::DocType(_) => {
                    return Err(LoadError {
                        file,
                        line,
                        message: "schemas may not carry a DOCTYPE".into(),
                    });
                }
                Event::Text(t) if skip_depth == 0 && !t.xml10_content().trim().is_empty() => {
                    return Err(LoadError {
                        file,
                        line,
                        message: "text is not allowed between schema constructs".into(),
                    });
                }
                Event::Eof => break,
                _ => {}
            }
        }
        let root = root.ok_or_else(|| LoadError {
            file: file.clone(),
            line: 1,
            message: "the file holds no xs:schema".into(),
        })?;
        if root.local != "schema" {
            return Err(LoadError {
                file,
                line: root.line,
                message: format!("the root is xs:{}, not xs:schema", root.local),
            });
        }
        Ok(Some(root))
    }

    fn load_doc(&mut self, path: &Path, origin: Origin) -> Result<(), LoadError> {
        let Some(root) = self.parse_file(path)? else {
            return Ok(());
        };
        let declared = root.attr("targetNamespace").map(str::to_owned);
        let tns = match (origin, declared) {
            (Origin::Root, declared) => {
                self.target_ns = declared.clone();
                declared
            }
            // A schema without a target namespace adopts the includer's (chameleon include).
            (Origin::Include(outer), None) => outer,
            (Origin::Include(outer), Some(d)) if outer.as_deref() == Some(d.as_str()) => Some(d),
            (Origin::Include(outer), Some(d)) => {
                return Err(self.err(&root, format!(
                    "included schema has targetNamespace {d:?}, the including one {outer:?}; a schema of another namespace is brought in with xs:import"
                )));
            }
            (Origin::Import(wanted), Some(d)) if d == wanted => Some(d),
            (Origin::Import(wanted), d) => {
                return Err(self.err(
                    &root,
                    format!("imported for namespace {wanted:?}, but its targetNamespace is {d:?}"),
                ));
            }
        };
        if let Some(ns) = &tns
            && !self.schema.namespaces.contains(ns)
        {
            self.schema.namespaces.push(ns.clone());
        }
        self.docs[root.doc].tns = tns.clone();
        let qualified = match root.attr("elementFormDefault") {
            None | Some("unqualified") => false,
            Some("qualified") => true,
            Some(other) => {
                return Err(self.err(
                    &root,
                    format!("elementFormDefault=\"{other}\" must be qualified or unqualified"),
                ));
            }
        };
        if let Some(v) = root
            .attr("attributeFormDefault")
            .filter(|v| *v != "unqualified")
        {
            return Err(self.err(
                &root,
                format!("attributeFormDefault=\"{v}\": only unqualified attributes are supported"),
            ));
        }
        self.docs[root.doc].qualified = qualified;
        let dir = path.parent().map(Path::to_owned).unwrap_or_default();
        for child in root.content() {
            match child.local.as_str() {
                "include" => {
                    let loc = child
                        .attr("schemaLocation")
                        .ok_or_else(|| self.err(child, "xs:include needs schemaLocation"))?;
                    if loc.contains("://") {
                        return Err(self.err(
                            child,
                            format!("xs:include of `{loc}`: only local files can be included"),
                        ));
                    }
                    let target = normalise(&dir.join(loc)).ok_or_else(|| {
                        self.err(
                            child,
                            format!("xs:include of `{loc}` leaves the schema directory"),
                        )
                    })?;
                    self.load_doc(&target, Origin::Include(tns.clone()))?;
                }
                "import" => {
                    let ns = child
                        .attr("namespace")
                        .ok_or_else(|| self.err(child, "xs:import needs the namespace it imports"))?
                        .to_owned();
                    if tns.as_deref() == Some(ns.as_str()) {
                        return Err(self.err(
                            child,
                            "xs:import of the schema's own namespace; use xs:include",
                        ));
                    }
                    let loc = child.attr("schemaLocation").ok_or_else(|| {
                        self.err(
                            child,
                            format!("xs:import of {ns} needs the schemaLocation of a local file"),
                        )
                    })?;
                    if loc.contains("://") {
                        return Err(self.err(
                            child,
                            format!("xs:import of `{loc}`: only local files can be imported"),
                        ));
                    }
                    let target = normalise(&dir.join(loc)).ok_or_else(|| {
                        self.err(
                            child,
                            format!("xs:import of `{loc}` leaves the schema directory"),
                        )
                    })?;
                    self.load_doc(&target, Origin::Import(ns))?;
                }
                "simpleType" | "complexType" | "element" => {
                    let name = child.attr("name").ok_or_else(|| {
                        self.err(
                            child,
                            format!("a top-level xs:{} needs a name", child.local),
                        )
                    })?;
                    let name = key(tns.as_deref(), name);
                    let map = match child.local.as_str() {
                        "simpleType" => &mut self.top_simple,
                        "complexType" => &mut self.top_complex,
                        _ => &mut self.top_elements,
                    };
                    if map.contains_key(&name) {
                        let kind = child.local.clone();
                        return Err(self.err(child, format!("xs:{kind} `{name}` is defined twice")));
                    }
                    map.insert(name, Rc::new(clone_node(child)));
                }
                other => {
                    return Err(self.err(
                        child,
                        format!("xs:{other} is not allowed at the top level of the subset"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Resolves a QName attribute value (`xs:string`, `MaDonViType`) to (namespace, local). An unprefixed name
    /// without a default namespace is the document's own (as in a chameleon include).
    fn qname(&self, n: &XNode, v: &str) -> Result<(Option<String>, String), LoadError> {
        let (prefix, local) = v.split_once(':').map_or(("", v), |(p, l)| (p, l));
        match n.scope.get(prefix) {
            Some(ns) => Ok((Some(ns.clone()), local.to_owned())),
            None if prefix.is_empty() => Ok((self.docs[n.doc].tns.clone(), local.to_owned())),
            None => Err(self.err(n, format!("prefix `{prefix}` of `{v}` is not declared"))),
        }
    }

    /// The namespace's index in [`Schema::namespaces`], if the schema declares anything in it.
    fn namespace_id(&self, ns: Option<&str>) -> Option<usize> {
        let ns = ns?;
        self.schema.namespaces.iter().position(|n| n == ns)
    }

    fn unknown_namespace(&self, n: &XNode, what: &str, v: &str, ns: &str) -> LoadError {
        self.err(
            n,
            format!(
                "{what} `{v}` is in namespace {ns}, which this schema neither declares nor imports"
            ),
        )
    }

    fn occurs(&self, n: &XNode) -> Result<(u32, Option<u32>), LoadError> {
        let num = |name: &str, default: u32| -> Result<u32, LoadError> {
            n.attr(name).map_or(Ok(default), |v| {
                v.parse()
                    .map_err(|_| self.err(n, format!("{name}=\"{v}\" is not a whole number")))
            })
        };
        let min = num("minOccurs", 1)?;
        let max = match n.attr("maxOccurs") {
            Some("unbounded") => None,
            _ => Some(num("maxOccurs", 1)?),
        };
        if max.is_some_and(|m| m < min) {
            return Err(self.err(n, "maxOccurs is smaller than minOccurs"));
        }
        Ok((min, max))
    }

    fn simple_by_qname(&mut self, n: &XNode, v: &str) -> Result<usize, LoadError> {
        let (ns, local) = self.qname(n, v)?;
        if ns.as_deref() == Some(XS) {
            let b = Builtin::from_local(&local).ok_or_else(|| {
                self.err(
                    n,
                    format!("type xs:{local} is outside the supported subset of built-in types"),
                )
            })?;
            let key = format!("{{{XS}}}{local}");
            if let Some(id) = self.simple_done.get(&key) {
                return Ok(*id);
            }
            self.schema.simple.push(SimpleType::builtin(b));
            let id = self.schema.simple.len() - 1;
            self.simple_done.insert(key, id);
            return Ok(id);
        }
        if let Some(ns) = ns.as_deref()
            && self.namespace_id(Some(ns)).is_none()
        {
            return Err(self.unknown_namespace(n, "type", v, ns));
        }
        self.simple_named(n, &key(ns.as_deref(), &local), v)
    }

    /// The simple type named by `name` (a [`key`]).
    fn simple_named(&mut self, n: &XNode, name: &str, v: &str) -> Result<usize, LoadError> {
        let local = name.to_owned();
        if let Some(id) = self.simple_done.get(&local) {
            return Ok(*id);
        }
        let def = self.top_simple.get(&local).cloned().ok_or_else(|| {
            if self.top_complex.contains_key(&local) {
                self.err(
                    n,
                    format!("`{v}` is a complex type where a simple type is needed"),
                )
            } else {
                self.err(n, format!("simple type `{v}` is not defined"))
            }
        })?;
        if !self.simple_busy.insert(local.clone()) {
            return Err(self.err(n, format!("simple type `{v}` derives from itself")));
        }
        let id = self.simple_type(&def, Some(local_of(&local).to_owned()))?;
        self.simple_busy.remove(&local);
        self.simple_done.insert(local, id);
        Ok(id)
    }

    /// An `xs:simpleType` (named or anonymous): exactly one `xs:restriction`.
    fn simple_type(&mut self, n: &XNode, name: Option<String>) -> Result<usize, LoadError> {
        let mut kids = n.content();
        let Some(r) = kids.next() else {
            return Err(self.err(n, "xs:simpleType needs an xs:restriction"));
        };
        if r.local != "restriction" {
            return Err(self.err(
                r,
                format!(
                    "xs:{} inside xs:simpleType is outside the subset (only xs:restriction)",
                    r.local
                ),
            ));
        }
        if let Some(extra) = kids.next() {
            return Err(self.err(extra, "xs:simpleType takes exactly one xs:restriction"));
        }
        let base = match (
            r.attr("base"),
            r.content().find(|c| c.local == "simpleType"),
        ) {
            (Some(b), None) => self.simple_by_qname(r, b)?,
            (None, Some(inner)) => self.simple_type(inner, None)?,
            _ => return Err(self.err(r, "xs:restriction needs a base or one inner xs:simpleType")),
        };
        let mut t = self.schema.simple[base].clone();
        t.name = name;
        let facets = self.facets(r, t.builtin)?;
        t.steps.push(facets);
        self.schema.simple.push(t);
        Ok(self.schema.simple.len() - 1)
    }

    fn facets(&self, r: &XNode, builtin: Builtin) -> Result<Facets, LoadError> {
        let mut f = Facets::default();
        for c in r.content() {
            if c.local == "simpleType" {
                continue;
            }
            let v = c
                .attr("value")
                .ok_or_else(|| self.err(c, format!("xs:{} needs a value", c.local)))?;
            let size = || {
                v.parse::<usize>().map_err(|_| {
                    self.err(
                        c,
                        format!("xs:{} value `{v}` is not a whole number", c.local),
                    )
                })
            };
            let bound = || {
                let norm = builtin.normalize(v);
                builtin
                    .parse(&norm)
                    .map(|val| (norm.clone(), val))
                    .map_err(|e| self.err(c, format!("xs:{} value: {e}", c.local)))
            };
            match c.local.as_str() {
                "pattern" => {
                    let translated = translate_pattern(v)
                        .map_err(|e| self.err(c, format!("pattern `{v}`: {e}")))?;
                    let re = Regex::new(&translated)
                        .map_err(|e| self.err(c, format!("pattern `{v}` does not compile: {e}")))?;
                    f.patterns.push((v.to_owned(), re));
                }
                "enumeration" => f.enumeration.push(builtin.normalize(v)),
                "length" => f.length = Some(size()?),
                "minLength" => f.min_length = Some(size()?),
                "maxLength" => f.max_length = Some(size()?),
                "totalDigits" => f.total_digits = Some(size()?),
                "fractionDigits" => f.fraction_digits = Some(size()?),
                "minInclusive" => f.min_inclusive = Some(bound()?),
                "maxInclusive" => f.max_inclusive = Some(bound()?),
                "minExclusive" => f.min_exclusive = Some(bound()?),
                "maxExclusive" => f.max_exclusive = Some(bound()?),
                other => {
                    return Err(self.err(
                        c,
                        format!("xs:{other} inside xs:restriction is outside the supported facets"),
                    ));
                }
            }
        }
        Ok(f)
    }

    fn attribute(&mut self, a: &XNode) -> Result<AttributeDecl, LoadError> {
        let name = a.attr("name").ok_or_else(|| {
            self.err(
                a,
                "xs:attribute needs a name (attribute refs are outside the subset)",
            )
        })?;
        let inline = a.content().find(|c| c.local == "simpleType");
        let ty = match (a.attr("type"), inline) {
            (Some(t), None) => self.simple_by_qname(a, t)?,
            (None, Some(st)) => self.simple_type(st, None)?,
            (None, None) => self.simple_by_qname(a, "xs:string").or_else(|_| {
                let id = self.schema.simple.len();
                self.schema
                    .simple
                    .push(SimpleType::builtin(Builtin::String));
                Ok::<usize, LoadError>(id)
            })?,
            (Some(_), Some(_)) => {
                return Err(self.err(
                    a,
                    "xs:attribute has both a type and an inline xs:simpleType",
                ));
            }
        };
        let required = match a.attr("use") {
            None | Some("optional") => false,
            Some("required") => true,
            Some(other) => {
                return Err(self.err(
                    a,
                    format!("use=\"{other}\" is outside the subset (required | optional)"),
                ));
            }
        };
        if let Some(d) = a.attr("default") {
            if required {
                return Err(self.err(a, "a required attribute cannot have a default"));
            }
            self.schema.simple[ty].check(d).map_err(|e| {
                self.err(
                    a,
                    format!("default `{d}` breaks the attribute's type: {}", e.message),
                )
            })?;
        }
        Ok(AttributeDecl {
            name: name.to_owned(),
            ty,
            required,
        })
    }

    fn complex_by_name(&mut self, n: &XNode, v: &str) -> Result<Option<usize>, LoadError> {
        let (ns, local) = self.qname(n, v)?;
        if ns.as_deref() == Some(XS) {
            return Ok(None);
        }
        self.complex_named(&key(ns.as_deref(), &local))
    }

    /// The complex type named by `name` (a [`key`]), if there is one.
    fn complex_named(&mut self, name: &str) -> Result<Option<usize>, LoadError> {
        if let Some(id) = self.complex_done.get(name) {
            return Ok(Some(*id));
        }
        let Some(def) = self.top_complex.get(name).cloned() else {
            return Ok(None);
        };
        let local = local_of(name).to_owned();
        // Reserve the slot first so recursive types refer to it.
        self.schema.complex.push(ComplexType {
            name: Some(local.clone()),
            attributes: Vec::new(),
            content: Content::Empty,
        });
        let id = self.schema.complex.len() - 1;
        self.complex_done.insert(name.to_owned(), id);
        let ct = self.complex_type(&def, Some(local))?;
        self.schema.complex[id] = ct;
        Ok(Some(id))
    }

    fn complex_type(&mut self, n: &XNode, name: Option<String>) -> Result<ComplexType, LoadError> {
        if n.attr("mixed").is_some_and(|m| m == "true" || m == "1") {
            return Err(self.err(n, "mixed content is outside the supported subset"));
        }
        let mut attributes = Vec::new();
        let mut content = Content::Empty;
        for c in n.content() {
            match c.local.as_str() {
                "attribute" => attributes.push(self.attribute(c)?),
                "sequence" | "choice" => {
                    if !matches!(content, Content::Empty) {
                        return Err(self.err(c, "a complex type takes one content model"));
                    }
                    let p = self.particle(c)?;
                    content = Content::Model(Model::compile(&p).map_err(|e| self.err(c, e))?);
                }
                "all" => {
                    if !matches!(content, Content::Empty) {
                        return Err(self.err(c, "a complex type takes one content model"));
                    }
                    content = Content::All(self.all_group(c)?);
                }
                "simpleContent" => {
                    let ext = c
                        .content()
                        .next()
                        .ok_or_else(|| self.err(c, "xs:simpleContent needs an xs:extension"))?;
                    if ext.local != "extension" {
                        return Err(self.err(ext, format!("xs:{} in xs:simpleContent is outside the subset (only xs:extension)", ext.local)));
                    }
                    let base = ext
                        .attr("base")
                        .ok_or_else(|| self.err(ext, "xs:extension needs a base"))?;
                    let st = self.simple_by_qname(ext, base)?;
                    for a in ext.content() {
                        if a.local != "attribute" {
                            return Err(self.err(
                                a,
                                format!("xs:{} inside xs:extension is outside the subset", a.local),
                            ));
                        }
                        attributes.push(self.attribute(a)?);
                    }
                    content = Content::Simple(st);
                }
                other => {
                    return Err(self.err(
                        c,
                        format!("xs:{other} inside xs:complexType is outside the supported subset"),
                    ));
                }
            }
        }
        let mut names = HashSet::new();
        for a in &attributes {
            if !names.insert(a.name.clone()) {
                return Err(self.err(n, format!("attribute `{}` is declared twice", a.name)));
            }
        }
        Ok(ComplexType {
            name,
            attributes,
            content,
        })
    }

    fn all_group(&mut self, c: &XNode) -> Result<AllGroup, LoadError> {
        let (min, max) = self.occurs(c)?;
        if max != Some(1) || min > 1 {
            return Err(self.err(c, "xs:all must have maxOccurs=1 and minOccurs 0 or 1"));
        }
        let mut members = Vec::new();
        for e in c.content() {
            if e.local != "element" {
                return Err(self.err(
                    e,
                    format!(
                        "xs:{} inside xs:all is outside the subset (only xs:element)",
                        e.local
                    ),
                ));
            }
            let (emin, emax) = self.occurs(e)?;
            if emax != Some(1) || emin > 1 {
                return Err(self.err(
                    e,
                    "elements of xs:all must have maxOccurs=1 and minOccurs 0 or 1",
                ));
            }
            members.push((self.element(e, false)?, emin == 1));
        }
        Ok(AllGroup {
            members,
            optional: min == 0,
        })
    }

    fn particle(&mut self, c: &XNode) -> Result<Particle, LoadError> {
        let (min, max) = self.occurs(c)?;
        match c.local.as_str() {
            "element" => {
                let decl = self.element(c, false)?;
                if max.is_none_or(|m| m > 1) {
                    self.schema.elements[decl].repeatable = true;
                }
                Ok(Particle::Element { decl, min, max })
            }
            "sequence" | "choice" => {
                let mut items = Vec::new();
                for k in c.content() {
                    match k.local.as_str() {
                        "element" | "sequence" | "choice" => items.push(self.particle(k)?),
                        other => {
                            return Err(self.err(
                                k,
                                format!(
                                    "xs:{other} inside xs:{} is outside the supported subset",
                                    c.local
                                ),
                            ));
                        }
                    }
                }
                if c.local == "choice" && items.is_empty() {
                    return Err(self.err(c, "an empty xs:choice can never be satisfied"));
                }
                Ok(if c.local == "sequence" {
                    Particle::Sequence { items, min, max }
                } else {
                    Particle::Choice { items, min, max }
                })
            }
            other => Err(self.err(c, format!("xs:{other} is not a particle"))),
        }
    }

    /// An element declaration; `global` for top-level ones (always qualified with the target namespace).
    fn element(&mut self, e: &XNode, global: bool) -> Result<ElemId, LoadError> {
        if let Some(r) = e.attr("ref") {
            if e.attr("name").is_some() || e.attr("type").is_some() || e.attr("nillable").is_some()
            {
                return Err(self.err(e, "an element ref takes only minOccurs / maxOccurs"));
            }
            let (ns, local) = self.qname(e, r)?;
            if let Some(ns) = ns.as_deref()
                && self.namespace_id(Some(ns)).is_none()
            {
                return Err(self.unknown_namespace(e, "ref", r, ns));
            }
            return self.global(e, &key(ns.as_deref(), &local));
        }
        let name = e
            .attr("name")
            .ok_or_else(|| self.err(e, "xs:element needs a name or a ref"))?
            .to_owned();
        let nillable = match e.attr("nillable") {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(other) => {
                return Err(self.err(e, format!("nillable=\"{other}\" must be true or false")));
            }
        };
        let ns = if global || self.docs[e.doc].qualified {
            self.namespace_id(self.docs[e.doc].tns.as_deref())
        } else {
            None
        };
        // Reserve the declaration first: a type may contain this element again.
        self.schema.elements.push(ElementDecl {
            name,
            ns,
            ty: TypeRef::Complex(usize::MAX),
            nillable,
            repeatable: false,
            name_id: 0,
            shape: Shape::Empty,
            has_attributes: false,
        });
        let id = self.schema.elements.len() - 1;
        let inline: Vec<&XNode> = e.content().collect();
        let ty = match (e.attr("type"), inline.as_slice()) {
            (Some(t), []) => match self.complex_by_name(e, t)? {
                Some(ct) => TypeRef::Complex(ct),
                None => TypeRef::Simple(self.simple_by_qname(e, t)?),
            },
            (None, [k]) if k.local == "complexType" => {
                let ct = self.complex_type(k, None)?;
                self.schema.complex.push(ct);
                TypeRef::Complex(self.schema.complex.len() - 1)
            }
            (None, [k]) if k.local == "simpleType" => TypeRef::Simple(self.simple_type(k, None)?),
            (None, []) => {
                return Err(self.err(
                    e,
                    "an element without a type (xs:anyType) is outside the subset",
                ));
            }
            _ => {
                return Err(self.err(
                    e,
                    "an element takes either a type or one inline type definition",
                ));
            }
        };
        self.schema.elements[id].ty = ty;
        Ok(id)
    }

    /// The global element named by `name` (a [`key`]).
    fn global(&mut self, at: &XNode, name: &str) -> Result<ElemId, LoadError> {
        if let Some(id) = self.global_done.get(name) {
            return Ok(*id);
        }
        let def = self.top_elements.get(name).cloned().ok_or_else(|| {
            self.err(
                at,
                format!("global element `{}` is not defined", local_of(name)),
            )
        })?;
        if def.attr("minOccurs").is_some() || def.attr("maxOccurs").is_some() {
            return Err(self.err(
                &def,
                "a top-level element cannot have minOccurs / maxOccurs",
            ));
        }
        let id = self.element(&def, true)?;
        self.global_done.insert(name.to_owned(), id);
        // The packet roots: elements of the target namespace.
        if self.schema.elements[id].ns == self.namespace_id(self.target_ns.as_deref()) {
            self.schema.globals.insert(local_of(name).to_owned(), id);
        }
        Ok(id)
    }
}

fn clone_node(n: &XNode) -> XNode {
    XNode {
        local: n.local.clone(),
        attrs: n.attrs.clone(),
        children: n.children.iter().map(clone_node).collect(),
        line: n.line,
        scope: n.scope.clone(),
        doc: n.doc,
    }
}

impl Schema {
    /// Loads an XSD file and the local files it includes.
    pub fn load(path: &Path) -> Result<Schema, LoadError> {
        let dir = path.parent().map(Path::to_owned).unwrap_or_default();
        let name = path.file_name().map(PathBuf::from).unwrap_or_default();
        Schema::load_from(&DirFiles(dir), &name)
    }

    /// Loads the schema file `name` of `files` and what it includes.
    pub fn load_from(files: &dyn SchemaFiles, name: &Path) -> Result<Schema, LoadError> {
        let mut l = Loader {
            files,
            docs: Vec::new(),
            target_ns: None,
            seen_files: HashSet::new(),
            top_simple: HashMap::new(),
            top_complex: HashMap::new(),
            top_elements: HashMap::new(),
            schema: Schema {
                target_ns: None,
                elements: Vec::new(),
                globals: HashMap::new(),
                namespaces: Vec::new(),
                complex: Vec::new(),
                simple: Vec::new(),
                names: Vec::new(),
            },
            simple_done: HashMap::new(),
            simple_busy: HashSet::new(),
            complex_done: HashMap::new(),
            global_done: HashMap::new(),
        };
        l.load_doc(name, Origin::Root)?;
        l.schema.target_ns = l.target_ns.clone();
        // Compile every named component, so errors anywhere in the files surface at load time.
        let names: Vec<(String, Rc<XNode>)> = l
            .top_simple
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, node) in names {
            l.simple_named(&node, &name, &name)?;
        }
        let names: Vec<(String, Rc<XNode>)> = l
            .top_complex
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, _) in names {
            l.complex_named(&name)?;
        }
        let names: Vec<(String, Rc<XNode>)> = l
            .top_elements
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, node) in names {
            l.global(&node, &name)?;
        }
        let mut ids: HashMap<String, usize> = HashMap::new();
        let schema = &mut l.schema;
        for e in &mut schema.elements {
            e.name_id = *ids.entry(e.name.clone()).or_insert_with(|| {
                schema.names.push(e.name.clone());
                schema.names.len() - 1
            });
            (e.shape, e.has_attributes) = match e.ty {
                TypeRef::Simple(st) => (Shape::Simple(st), false),
                TypeRef::Complex(ct) => {
                    let c = &schema.complex[ct];
                    let shape = match &c.content {
                        Content::Empty => Shape::Empty,
                        Content::Simple(st) => Shape::Simple(*st),
                        Content::Model(_) => Shape::Model(ct),
                        Content::All(g) => Shape::All(ct, g.members.len()),
                    };
                    (shape, !c.attributes.is_empty())
                }
            };
        }
        Ok(l.schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns="urn:t" targetNamespace="urn:t" elementFormDefault="qualified">"#;

    fn load(files: &'static [(&'static str, &'static str)]) -> Result<Schema, LoadError> {
        Schema::load_from(&EmbeddedFiles(files), Path::new("main.xsd"))
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    fn refused(body: &str) -> LoadError {
        let text = leak(format!("{HEAD}\n{body}\n</xs:schema>"));
        let files: &'static [(&'static str, &'static str)] =
            Box::leak(vec![("main.xsd", text)].into_boxed_slice());
        load(files).unwrap_err()
    }

    #[test]
    fn constructs_outside_the_subset_are_refused_with_their_line() {
        let e = refused("<xs:group name=\"g\"><xs:sequence/></xs:group>");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("xs:group"), "{e}");
        let e = refused(
            "<xs:element name=\"a\">\n<xs:complexType>\n<xs:sequence><xs:any/></xs:sequence>\n</xs:complexType></xs:element>",
        );
        assert_eq!(e.line, 4);
        assert!(e.message.contains("xs:any"), "{e}");
        let e =
            refused("<xs:simpleType name=\"t\"><xs:union memberTypes=\"xs:int\"/></xs:simpleType>");
        assert!(e.message.contains("xs:union"), "{e}");
        let e = refused("<xs:element name=\"a\" type=\"xs:duration\"/>");
        assert!(e.message.contains("xs:duration"), "{e}");
        let e = refused("<xs:element name=\"a\" fixed=\"x\" type=\"xs:string\"/>");
        assert!(e.message.contains("`fixed`"), "{e}");
        let e =
            refused("<xs:complexType name=\"c\" mixed=\"true\"><xs:sequence/></xs:complexType>");
        assert!(e.message.contains("mixed"), "{e}");
        let e = refused(
            "<xs:simpleType name=\"t\"><xs:restriction base=\"xs:string\"><xs:pattern value=\"\\i\\c*\"/></xs:restriction></xs:simpleType>",
        );
        assert!(e.message.contains("\\i"), "{e}");
        let e = refused(
            "<xs:simpleType name=\"t\"><xs:restriction base=\"xs:string\"><xs:whiteSpace value=\"collapse\"/></xs:restriction></xs:simpleType>",
        );
        assert!(e.message.contains("xs:whiteSpace"), "{e}");
        let e = refused("<xs:element name=\"a\" type=\"Missing\"/>");
        assert!(e.message.contains("not defined"), "{e}");
        let e = refused("<xs:import namespace=\"urn:x\"/>");
        assert!(e.message.contains("xs:import"), "{e}");
    }

    #[test]
    fn includes_resolve_locally_and_refuse_urls() {
        static FILES: &[(&str, &str)] = &[
            (
                "main.xsd",
                r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns="urn:t" targetNamespace="urn:t" elementFormDefault="qualified"><xs:include schemaLocation="sub/types.xsd"/><xs:element name="Root" type="T"/></xs:schema>"#,
            ),
            (
                "sub/types.xsd",
                r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"><xs:simpleType name="T"><xs:restriction base="xs:token"><xs:maxLength value="3"/></xs:restriction></xs:simpleType></xs:schema>"#,
            ),
        ];
        let s = load(FILES).unwrap();
        assert!(s.globals.contains_key("Root"));
        let e = refused("<xs:include schemaLocation=\"https://example.org/x.xsd\"/>");
        assert!(e.message.contains("only local files"), "{e}");
        let e = refused("<xs:include schemaLocation=\"../../etc/x.xsd\"/>");
        assert!(e.message.contains("leaves the schema directory"), "{e}");
    }

    #[test]
    fn recursive_types_and_bad_defaults() {
        let text = format!(
            "{HEAD}<xs:complexType name=\"Node\"><xs:sequence><xs:element name=\"Node\" type=\"Node\" minOccurs=\"0\"/></xs:sequence></xs:complexType><xs:element name=\"Root\" type=\"Node\"/></xs:schema>"
        );
        let files: &'static [(&'static str, &'static str)] =
            Box::leak(vec![("main.xsd", leak(text))].into_boxed_slice());
        assert!(load(files).is_ok());
        let e = refused(
            "<xs:complexType name=\"c\"><xs:attribute name=\"a\" type=\"xs:int\" default=\"x\"/></xs:complexType>",
        );
        assert!(e.message.contains("default"), "{e}");
    }
}
