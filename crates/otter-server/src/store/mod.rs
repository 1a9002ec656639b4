//! The store layer: the database (every SQL statement of the server is in this module) and the
//! artifact store. It knows rows and objects, not HTTP; the domain modules above decide.

pub mod artifacts;
pub mod audit_log;
pub mod db;
pub mod devices;
pub mod files;
pub mod keys;
pub mod logs;
pub mod releases;
pub mod rollouts;
pub mod tokens;

pub use db::{Db, audit, now_ms};
