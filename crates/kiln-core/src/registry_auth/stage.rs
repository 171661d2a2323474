//! What the DISTRIBUTING stage asks of this module: the checks before anything is written,
//! and the copies for target accounts after every region has the image.

use kiln_dist::{Artifact, Output, Planned, RegistryAccess};

use super::targets::AccountCopy;
use crate::recipe::Distribution;
use crate::regions::RegionMap;
use crate::state::Store;

/// What a build distributes, as this module needs it.
pub struct Distributing<'a> {
    /// The image records (who owns which repository).
    pub store: &'a Store,
    /// The building account.
    pub account: String,
    /// The recipe's distributions.
    pub distributions: &'a [Distribution],
    /// The configured regions.
    pub regions: &'a RegionMap,
    /// How registries are reached.
    pub access: RegistryAccess,
}

impl Distributing<'_> {
    /// Refuses a distribution into another account's repository, or `targetAccountIds` in a
    /// region that is not a registry.
    pub async fn before(&self, planned: &[Planned]) -> Result<(), String> {
        super::guard::check(self.store, &self.account, planned).await?;
        super::targets::check(self.distributions, self.regions)
    }

    /// The outputs with the target accounts' copies added, and who owns each copy; a failure
    /// takes back what the regions got (`planned`), so that no region keeps half of the build.
    pub async fn after(
        &self,
        artifact: &Artifact,
        planned: &[Planned],
        mut outputs: Vec<Output>,
    ) -> Result<(Vec<Output>, Vec<AccountCopy>), String> {
        match super::targets::copy(
            self.distributions,
            self.regions,
            &self.access,
            &outputs,
            &artifact.pieces,
        )
        .await
        {
            Ok((copies, owners)) => {
                outputs.extend(copies);
                Ok((outputs, owners))
            }
            Err(e) => {
                let undone =
                    kiln_dist::take_back(planned, &artifact.build, artifact.previous, &self.access)
                        .await;
                Err(format!("{e}; taken back: {}", undone.join("; ")))
            }
        }
    }
}
