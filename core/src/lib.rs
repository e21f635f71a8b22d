//! `alps-core`: the ALPS model server. Data flows one way: [`api`] (gRPC) → [`engine`]
//! (devices, MC-Dropout) → models → [`plugins`] (heuristics); [`store`] persists.

pub mod api;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod models;
pub mod plugins;
pub mod projects;
pub mod server;
pub mod store;
pub mod training;
