//! The streaming XSD subset: load (with includes) and compile a schema, then validate documents in one pass.

mod load;
mod model;
mod simple;
mod validate;

pub use load::{Content, ElementDecl, LoadError, Schema, TypeRef, XS};
pub use model::{AllGroup, Nfa, Particle};
pub use simple::{Builtin, Decimal, SimpleType};
pub use validate::{validate, XmlOutcome};
