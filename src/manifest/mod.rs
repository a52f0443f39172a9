//! Manifest layer: KDL text -> validated, typed [`Manifest`] with source spans.

pub mod diag;
pub mod model;
pub mod parse;
pub mod schema;
pub mod source;
pub mod validate;
pub mod value;

pub use diag::{ManifestError, ManifestErrors};
pub use model::{Block, Child, Entity, Field, Manifest, Origin};
pub use schema::Schema;
pub use source::{Loc, Sources};
pub use validate::load;
pub use value::Value;
