//! The inference engine: devices, model workers, batching and MC-Dropout. The only layer that
//! touches libtorch (tch).

pub mod device;
