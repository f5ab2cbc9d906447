//! Service: everything that surrounds the engine with IO. The state directory, and the live
//! service (`flowcast run`): sources (file, core NATS, JetStream, AMQP), sinks (stdout, NATS, webhook,
//! Alertmanager), the HTTP API and metrics, hot reload of the flow files, and snapshots.

pub mod amqp;
pub mod api;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod feed;
pub mod graph;
pub mod http;
pub mod layout;
pub mod learned;
pub mod metrics;
pub mod route;
pub mod run;
pub mod sink;
pub mod source;
pub mod state_dir;
pub mod watch;
