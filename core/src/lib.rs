//! `alps-core`: the ALPS model server. Data flows one way: the protocol surfaces ([`api`] for
//! `alps.v1`, [`oip`] for the Open Inference Protocol) → [`infer`] (the inference facade) →
//! [`engine`] (devices, MC-Dropout) → models → [`plugins`] (heuristics); [`store`] persists;
//! [`replicas`] keeps a replica's in-memory projects in step with the others'; [`memory`] is
//! the models' memory budget that the engine's cache and [`training`] share.

pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod digest;
pub mod engine;
pub mod errors;
pub mod ids;
pub mod infer;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod observe;
pub mod oip;
pub mod plugins;
pub mod projects;
pub mod reload;
pub mod replicas;
pub mod server;
pub mod store;
pub mod tls;
pub mod training;
