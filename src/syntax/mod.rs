//! Syntax: the text of a `.flow` file -> an owned AST with spans. Knows nothing of the model,
//! the engine or any IO; all its errors are `Diagnostic`s.

pub mod ast;
mod format;
pub mod index;
mod parser;

pub use format::format;
pub use parser::{
    format_duration_ms, parse, parse_duration_ms, parse_path, MAX_FILE_BYTES, MAX_NESTING,
};
