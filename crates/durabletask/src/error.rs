//! Errors returned by the client and the worker.

use crate::auth::AuthError;
use crate::connection::ConfigError;

/// Everything that can go wrong talking to the scheduler. The gRPC status is kept where there is one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("not found: {}", .0.message())]
    NotFound(tonic::Status),
    #[error("already exists: {}", .0.message())]
    AlreadyExists(tonic::Status),
    #[error("failed precondition: {}", .0.message())]
    FailedPrecondition(tonic::Status),
    #[error("invalid argument: {}", .0.message())]
    InvalidArgument(tonic::Status),
    #[error("scheduler unavailable: {}", .0.message())]
    Unavailable(tonic::Status),
    #[error("deadline exceeded: {}", .0.message())]
    DeadlineExceeded(tonic::Status),
    #[error("unauthenticated or not permitted: {}", .0.message())]
    Unauthorized(tonic::Status),
    #[error("gRPC error {:?}: {}", .0.code(), .0.message())]
    Rpc(tonic::Status),
    #[error("could not serialize or deserialize a payload: {0}")]
    Serialization(#[from] serde_json::Error),
    #[error("the scheduler returned an invalid response: {0}")]
    Protocol(String),
    /// A large payload could not be stored or read back (the claim check).
    #[error(transparent)]
    Payload(#[from] crate::payload::PayloadError),
}

impl Error {
    /// The gRPC status behind this error, if it came from a call.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Self::NotFound(s)
            | Self::AlreadyExists(s)
            | Self::FailedPrecondition(s)
            | Self::InvalidArgument(s)
            | Self::Unavailable(s)
            | Self::DeadlineExceeded(s)
            | Self::Unauthorized(s)
            | Self::Rpc(s) => Some(s),
            _ => None,
        }
    }

    /// Worth retrying later, by [`is_transient_status`]. A client-side deadline is transient too.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::DeadlineExceeded(_))
            || matches!(self, Self::Payload(p) if p.is_transient())
            || self.status().is_some_and(is_transient_status)
    }
}

/// The SDK's one rule of what is worth retrying, used by the worker's completion retries and
/// by the gateway's mapping to `503` (anything else it answers `502`):
/// - the codes a server uses for "try again": `UNAVAILABLE`, `DEADLINE_EXCEEDED`,
///   `RESOURCE_EXHAUSTED` (overload, or a limit such as a full backlog), `ABORTED`;
/// - `UNKNOWN`, `INTERNAL` and `CANCELLED` only when made on this side by the transport (a
///   broken connection, an HTTP/2 protocol error, or a call still queued on a connection that
///   closed, which hyper reports as canceled: tonic then keeps the cause as the status's
///   source), never when the server answered them, since retrying a server's internal error
///   or a cancellation it chose would repeat it.
pub fn is_transient_status(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted => {
            true
        }
        Code::Unknown | Code::Internal | Code::Cancelled => {
            std::error::Error::source(status).is_some()
        }
        _ => false,
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        match s.code() {
            Code::NotFound => Self::NotFound(s),
            Code::AlreadyExists => Self::AlreadyExists(s),
            Code::FailedPrecondition => Self::FailedPrecondition(s),
            Code::InvalidArgument | Code::OutOfRange => Self::InvalidArgument(s),
            Code::Unavailable => Self::Unavailable(s),
            Code::DeadlineExceeded => Self::DeadlineExceeded(s),
            // tonic reports a client-side timeout as Cancelled with this message.
            Code::Cancelled if s.message().contains("Timeout expired") => Self::DeadlineExceeded(s),
            // A connection that closed under a call: the scheduler went away, not the caller.
            Code::Cancelled if std::error::Error::source(&s).is_some() => Self::Unavailable(s),
            Code::Unauthenticated | Code::PermissionDenied => Self::Unauthorized(s),
            _ => Self::Rpc(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What tonic makes of a call whose connection closed before it was answered: the status is
    /// found in the error's chain and the error is kept as its source.
    fn cancelled_by_transport() -> tonic::Status {
        #[derive(Debug)]
        struct ConnectionClosed(tonic::Status);
        impl std::fmt::Display for ConnectionClosed {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("operation was canceled: connection closed")
            }
        }
        impl std::error::Error for ConnectionClosed {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let status = tonic::Status::from_error(Box::new(ConnectionClosed(
            tonic::Status::cancelled("connection closed"),
        )));
        assert_eq!(status.code(), tonic::Code::Cancelled);
        status
    }

    #[test]
    fn a_call_cut_by_a_closed_connection_is_the_scheduler_being_unavailable() {
        assert!(matches!(
            Error::from(cancelled_by_transport()),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            Error::from(tonic::Status::cancelled("the server chose to cancel")),
            Error::Rpc(_)
        ));
    }

    #[test]
    fn one_rule_for_what_is_transient() {
        for s in [
            tonic::Status::unavailable("down"),
            tonic::Status::deadline_exceeded("slow"),
            tonic::Status::resource_exhausted("backlog full"),
            tonic::Status::aborted("conflict"),
            // Made by the transport on this side: the cause is kept as the source.
            tonic::Status::from_error(Box::new(std::io::Error::other("connection reset"))),
            // A call cut by a connection that closed (hyper: "operation was canceled").
            cancelled_by_transport(),
        ] {
            assert!(is_transient_status(&s), "{s:?}");
            assert!(Error::from(s).is_transient());
        }
        for s in [
            // Answered by the server: retrying would repeat them.
            tonic::Status::internal("bug"),
            tonic::Status::unknown("?"),
            tonic::Status::unimplemented("no"),
            tonic::Status::invalid_argument("bad"),
            tonic::Status::not_found("gone"),
            tonic::Status::permission_denied("no"),
            tonic::Status::cancelled("the server chose to cancel"),
        ] {
            assert!(!is_transient_status(&s), "{s:?}");
            assert!(!Error::from(s).is_transient());
        }
    }
}
