//! # jitgate-pg
//!
//! The Postgres front end. Clients (psql, pgbench, any driver) connect with their identity as
//! the user, the resource as the database and their jitgate token as the password; the gateway
//! checks the live grant, logs in to the real database with credentials the user never sees,
//! relays the protocol frame by frame ([`relay`]), classifies and audits every statement
//! ([`classify`]), refuses writes under read-only grants, and kills the session the moment its
//! grant ends.

pub mod classify;
pub mod fastpath;
pub mod frontend;
pub mod io;
pub mod protocol;
pub mod relay;
pub mod scram;
pub mod tls;
pub mod upstream;

pub use frontend::{PgConfig, PgFrontend};
