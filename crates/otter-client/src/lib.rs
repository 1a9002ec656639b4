//! The typed client of the Otter fleet server (`docs/api.md`), for everyone who calls it: the
//! `otter` CLI, the device agent and the fleet simulator.
//!
//! Two layers:
//! - [`Call`]: one API call as data (method, path from [`otter_proto::paths`], JSON body,
//!   `If-None-Match`) and how its answer is decoded into the `otter-proto` type. No I/O, so
//!   any HTTP stack can carry it (the simulator uses async `reqwest`). Built by the functions
//!   of [`admin`] and [`device`].
//! - [`blocking::Client`]: carries calls over `ureq`, with a method per endpoint.
//!
//! This crate depends on `otter-proto` only, never on the server.

pub mod admin;
pub mod blocking;
mod call;
pub mod device;

pub use call::{Answer, Body, Call, Method};

/// Why a call failed; every message names the call and says what the server said.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused with its JSON error body.
    #[error("{what}: {} ({status} {})", .error.message, .error.error)]
    Api {
        what: String,
        status: u16,
        error: otter_proto::ApiError,
    },
    /// The server answered an error status without a JSON error body.
    #[error("{what}: HTTP {status}: {body}")]
    Http {
        what: String,
        status: u16,
        body: String,
    },
    /// The server could not be reached (DNS, connect, TLS, timeout).
    #[error("{what}: cannot reach {url}: {message}")]
    Unreachable {
        what: String,
        url: String,
        message: String,
    },
    /// The answer is not what the API promises.
    #[error("{what}: unexpected answer from {url}: {message}")]
    Decode {
        what: String,
        url: String,
        message: String,
    },
    /// Reading a file to send.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl Error {
    /// The HTTP status the server answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
