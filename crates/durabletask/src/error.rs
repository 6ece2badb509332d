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

    /// Worth retrying later: the scheduler was down, slow or briefly refused the call.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::DeadlineExceeded(_))
            || matches!(
                self.status().map(tonic::Status::code),
                Some(tonic::Code::ResourceExhausted | tonic::Code::Aborted)
            )
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
            Code::Unauthenticated | Code::PermissionDenied => Self::Unauthorized(s),
            _ => Self::Rpc(s),
        }
    }
}
