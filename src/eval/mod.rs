//! Evaluation and learning from history: reading event logs, discovering flows from them,
//! simulating streams from flows, and measuring prediction quality by driving the engine.
//! Sits beside `service` on top of the engine; does file IO but no networking.

pub mod detect;
pub mod discover;
pub mod evaluate;
pub mod log;
pub mod simulate;
pub mod suite;
