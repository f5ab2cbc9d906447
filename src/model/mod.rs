//! Model: the AST -> validated, compiled flows (`CompiledFlow`), with every error and warning.
//! Knows nothing of the engine, of time or of IO beyond reading the files it is given.

mod checks;
mod compile;
pub mod cond;
pub mod flow;
mod sample;
mod sources;

pub use compile::{
    compile_files, did_you_mean, Compilation, ALERT_SETTINGS, ANOMALY_SETTINGS, LEARN_SETTINGS,
};
pub use flow::*;
pub use sample::check_sample;
pub use sources::{collect_flow_files, load, LoadError};
