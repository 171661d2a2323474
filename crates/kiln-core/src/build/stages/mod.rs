//! The stages of a build, in order. Each is a function of the running build ([`BuildRun`]):
//! it reads what the stages before it made and adds its own part.
//!
//! ```text
//! parent -> components (sandbox builder | VM builder) -> disk -> test -> scan -> disk, after tests
//!        -> distribute
//! ```

pub(crate) mod disk;
pub(crate) mod distribute;
pub(crate) mod encrypt;
pub(crate) mod parent;
pub(crate) mod sandbox;
pub(crate) mod scan;
pub(crate) mod supply_chain;
pub(crate) mod test;
pub(crate) mod vm;

use kiln_instance::BuilderKind;

use super::failure::StageFailure;
use super::run::BuildRun;

/// Runs every stage; the first failure ends the build.
pub(crate) async fn run_all(run: &mut BuildRun<'_>) -> Result<(), StageFailure> {
    parent::resolve(run).await?;
    // The builder seam: what runs the components, and what they leave (layers, or a disk).
    match run.recipe.infrastructure.builder {
        BuilderKind::Sandbox => sandbox::build(run).await?,
        BuilderKind::Vm => vm::build(run).await?,
    }
    disk::assemble(run).await?;
    run.rec.layers = run.chain.iter().map(|l| l.info.diff_id.clone()).collect();
    disk::record_guest_agent(run);
    test::run(run).await?;
    scan::run(run).await?;
    disk::remove_guest_agent(run).await?;
    distribute::run(run).await
}
