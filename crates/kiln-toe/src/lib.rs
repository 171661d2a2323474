//! Component documents, as AWS Task Orchestrator and Executor (AWSTOE) defines them.
//!
//! - [`load`] parses and validates a document, reporting every broken rule with its file, line
//!   and column ([`load::load_file`], [`load::parse`]).
//! - [`template`] finds and expands `{{ ... }}` references.
//! - [`Engine`] runs documents on a [`kiln_instance::Instance`]: phases in document order,
//!   `if` conditions, loops, retries, timeouts, reboots (exit code 194), chaining between steps
//!   and nested documents, and reports what happened as an [`report::ExecutionReport`] (the
//!   `detailedoutput.json` of AWSTOE).
//!
//! Where the user guide is silent or contradicts itself, the choices are written down in
//! `docs/awstoe-compatibility.md` of the repository.
#![deny(missing_docs)]

pub mod action;
pub mod condition;
pub mod document;
mod engine;
pub mod events;
pub mod load;
pub mod loader;
mod modules;
pub mod report;
pub mod template;

pub use action::Action;
pub use document::Document;
pub use engine::{DocumentRun, Engine, Failure, RunSpec, MAX_NESTING, MAX_REBOOTS_PER_STEP};
pub use modules::update_os_script;
