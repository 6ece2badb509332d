//! Readiness, for the admin listener's `/readyz` (`service_kit::admin` serves it, `/healthz`
//! and `/metrics`).

use crate::AppState;
use crate::scheduler::dts_call;

/// Ready when not shutting down and the scheduler answered just now, within the configured
/// scheduler deadline.
pub(crate) async fn readiness(state: AppState) -> Result<(), String> {
    if state.draining.is_cancelled() {
        return Err("shutting down".into());
    }
    let deadline = state.config.dts_timeout();
    match dts_call(&state, "Hello", deadline, state.client.hello(deadline)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err("scheduler unreachable".into()),
    }
}
