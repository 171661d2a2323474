//! kiln's core: what an image is made of and how a build goes.
#![deny(missing_docs)]

pub mod accounts;
pub mod attest;
pub mod build;
pub mod cache;
pub mod disk;
pub mod instances;
pub mod inventory;
pub mod kms;
pub mod lifecycle;
pub mod managed;
pub mod notify;
pub mod parent;
pub mod pipeline;
pub mod principal;
pub mod recipe;
pub mod record;
pub mod regions;
pub mod registry_auth;
pub mod remote_store;
pub mod request;
pub mod resources;
pub mod retire;
#[cfg(feature = "sample")]
pub mod sample;
pub mod scan;
pub mod scheduler;
pub mod shared_cache;
pub mod signing;
pub mod state;
pub mod store;
pub mod trust;
pub mod updates;
pub mod usage;
pub mod version;
pub mod workers;
