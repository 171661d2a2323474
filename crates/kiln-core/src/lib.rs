//! kiln's core: what an image is made of and how a build goes.
#![deny(missing_docs)]

pub mod recipe;
pub mod version;
