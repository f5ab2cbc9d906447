//! flowcast: predictive monitoring of cloud processes from their notifications.
//!
//! Data flows one way, and imports only toward the start of this line:
//! `syntax` (text -> AST) -> `model` (AST -> validated flows) -> `engine` (pure, synchronous:
//! object states, Markov model, predictions, alerts) -> `cli` (commands). See ARCHITECTURE.md.

pub mod cli;
pub mod diagnostic;
pub mod engine;
pub mod eval;
pub mod model;
pub mod service;
pub mod syntax;
