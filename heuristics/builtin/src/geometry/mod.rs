//! Geometry shared by the embedding-based batch heuristics (TypiClust, Core-Set, BADGE), one
//! concern per module: distance kernels and blocked products ([`distance`]), lazily refreshed
//! nearest-center distances with exact farthest-point and D² picks ([`lazy`]), argmax, uniform
//! draws and a sum tree ([`sampling`]), k-means++ and Lloyd's k-means ([`kmeans`]) and a seeded
//! random projection ([`projection`]). Embeddings are row-major `f32` matrices `[rows, d]`.

pub(crate) mod distance;
pub(crate) mod kmeans;
pub(crate) mod lazy;
pub(crate) mod projection;
pub(crate) mod sampling;
