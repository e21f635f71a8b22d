//! Training: labelled examples (and, with the training work, jobs and model versions).

pub mod examples;
