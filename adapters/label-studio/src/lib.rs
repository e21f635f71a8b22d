//! `alps-label-studio`: an HTTP server that speaks Label Studio's ML-backend protocol
//! (`shared/specs/label-studio-ml-backend.md`) and forwards to alps-server over gRPC. It keeps no
//! state that cannot be rebuilt from Label Studio and the core.

pub mod config;
pub mod core_link;
pub mod http;
