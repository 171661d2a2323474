//! Images: the layers and image layouts kiln builds and boots from.
//!
//! A container build captures each component's changes as an overlayfs upper directory;
//! [`layer::write_layer`] turns one into an OCI layer whose bytes depend only on the tree (so
//! the step cache and image digests are reproducible), [`layer::layer_from_tar`] does the same
//! for parent-image tarballs, and [`layer::extract_layer`] turns a layer back into a directory
//! that an overlay mount can stack as a lower layer. [`oci::write_image`] puts layers, a config
//! and a manifest into an OCI image layout under a tag, safely against concurrent writers and
//! readers; [`oci::read_image`] reads one back (a parent image, say).
//!
//! [`registry::pull`] and [`registry::push`] move images between a layout and a registry;
//! [`registry::manifest_digest`], [`registry::retag`] and [`registry::delete_manifest`] look
//! up, move and delete tags there; [`registry::Repository`] moves single blobs (present,
//! mounted or uploaded in resumable pieces) and manifests, for images and OCI artifacts.
//!
//! Everything here except [`registry`] is synchronous and blocking: callers in async code run
//! it on a blocking thread. [`registry`] is async (tokio) and does its own file work on
//! blocking threads.
#![deny(missing_docs)]

pub mod digest;
pub mod disk;
pub mod layer;
pub mod oci;
pub mod registry;

pub use layer::{
    align_times, extract_layer, layer_from_tar, write_layer, Compression, ExtractStats, LayerBlob,
    LayerError,
};
pub use oci::{
    list_tags, read_image, write_image, HistoryEntry, ImageSettings, OciError, ReadImage,
    WrittenImage,
};
/// The OCI image-spec types [`oci::ReadImage`] hands out.
pub use oci_spec;
pub use registry::{
    delete_manifest, manifest_digest, parse_reference, pull, push, push_with, retag, Deleted,
    PushReport, RegistryAuth, RegistryError, RegistryOptions, Repository, RepositoryStats,
    RetryPolicy, Sent,
};
