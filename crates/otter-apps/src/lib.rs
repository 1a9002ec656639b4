//! Container apps on Otter devices.
//!
//! * [`compose`]: the Compose subset (parse, validate; every key understood or rejected).
//! * [`app`]: apps and app sets (the portable form a release can carry), built-in apps.
//! * [`order`]: start order from `depends_on`, with cycle detection.
//! * [`unit`]: one systemd unit per service, running `podman run`.
//! * [`runtime`]: the operations updates need ([`runtime::Runtime`]), and the podman +
//!   systemctl implementation.
//! * [`update`]: applying an app set: pull, replace, watch, roll back, prune.
//! * [`lock`]: the update lock apps hold to defer restarts and OS reboots.

pub mod app;
pub mod compose;
pub mod lock;
pub mod order;
pub mod runtime;
pub mod unit;
pub mod update;

pub use app::{App, AppSet, AppSpec};
pub use compose::{ComposeError, ComposeFile};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Compose(#[from] ComposeError),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
