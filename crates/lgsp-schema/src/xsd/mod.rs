//! The streaming XSD subset: load (with includes) and compile a schema, then validate documents in one pass.

mod load;
mod model;
mod simple;
mod validate;

pub use load::{
    Content, DirFiles, ElementDecl, EmbeddedFiles, LoadError, Schema, SchemaFiles, Shape, TypeRef,
    XS,
};
pub use model::{AllGroup, Dfa, Model, Nfa, Particle};
pub(crate) use simple::days_in_month;
pub use simple::{Builtin, Decimal, SimpleType, clip as clip_text};
pub use validate::{Extras, XmlOutcome, validate};
