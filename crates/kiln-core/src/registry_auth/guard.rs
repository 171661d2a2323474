//! Registry repositories are `BASE/NAME` for every account: a build may not write into one
//! that holds another account's images (it would move their tags, and the token service
//! would then hand the repository's pulls to the wrong account). The distribution is refused
//! before anything is written, saying whose the repository is and what to do.

use crate::state::Store;

/// The first registry or bucket repository of `planned` that holds images of an account
/// other than `account`, as the error the build fails with.
pub async fn check(
    store: &Store,
    account: &str,
    planned: &[kiln_dist::Planned],
) -> Result<(), String> {
    let remote: Vec<&kiln_dist::Planned> = planned
        .iter()
        .filter(|p| p.location.contains("://"))
        .collect();
    if remote.is_empty() {
        return Ok(());
    }
    let records = super::grants::records_with_outputs(store, &[])
        .await
        .map_err(|e| e.to_string())?;
    for rec in records {
        for o in &rec.outputs {
            // Copies placed for another account (`targetAccountIds`) are that account's.
            let owner = rec
                .account_copies
                .iter()
                .find(|c| c.location == o.location)
                .map_or(rec.account.as_str(), |c| c.account.as_str());
            if owner == account {
                continue;
            }
            if let Some(p) = remote.iter().find(|p| p.location == o.location) {
                return Err(format!(
                    "region `{}`: repository {} holds images of account {owner} ({}); account \
                     {account} cannot distribute into it. Give the image another name, or \
                     another repository \
                     (`containerDistributionConfiguration.targetRepository.repositoryName`)",
                    p.region, p.location, rec.arn
                ));
            }
        }
    }
    Ok(())
}
