//! Service: everything that surrounds the engine with IO. For now the state directory
//! (learned counts that survive restarts); the live NATS service builds on it.

pub mod state_dir;
