//! The API's routes, one file per resource, and what their documentation shares.

pub(crate) mod cancel;
pub(crate) mod events;
pub(crate) mod health;
pub(crate) mod history;
pub(crate) mod list;
pub(crate) mod process;
pub(crate) mod purge;
pub(crate) mod recurring;
pub(crate) mod result;
pub(crate) mod sample;
pub(crate) mod status;

use crate::ProblemDetails;

/// The answers every route that calls the scheduler may give, documented once.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only documents responses; the problems themselves are built in `scheduler`.
pub(crate) enum SchedulerProblems {
    /// The scheduler refused the call (not a transient error): the problem names the call and
    /// the gRPC code.
    #[response(status = 502, content_type = "application/problem+json")]
    Refused(ProblemDetails),
    /// The scheduler is unreachable, overloaded or slow; retry after `Retry-After`.
    #[response(status = 503, content_type = "application/problem+json", headers(("Retry-After" = u64)))]
    Unavailable(ProblemDetails),
}

/// `404` for an operation id that names nothing.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum OperationNotFound {
    /// No such operation.
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(ProblemDetails),
}
