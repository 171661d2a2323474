//! One holder at a time of a role (the scheduler, the notification deliverer) among the servers
//! sharing a store: a hold that lapses unless renewed, measured by the store's clock, so that
//! when the holder stops (or is cut off) another server takes over within one hold.

use std::time::Duration;

use crate::StoreError;

/// Roles held by one server at a time.
#[async_trait::async_trait]
pub trait Leadership: Send + Sync + std::fmt::Debug {
    /// Takes `role` for `holder`, or renews it, until `hold` from now: true when `holder`
    /// holds it now, false while another holder's hold has not lapsed. Atomic: two callers at
    /// once never both get true.
    async fn lead(&self, role: &str, holder: &str, hold: Duration) -> Result<bool, StoreError>;

    /// Gives `role` up when `holder` has it (a server stopping), so that another takes it
    /// without waiting for the hold to lapse.
    async fn step_down(&self, role: &str, holder: &str) -> Result<(), StoreError>;
}
