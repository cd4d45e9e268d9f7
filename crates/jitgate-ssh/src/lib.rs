//! jitgate's SSH front end: users connect with plain OpenSSH clients as `LOGIN@RESOURCE`; the
//! gateway authenticates them (identity keys, or certificates from its user CA), checks the grant,
//! logs in upstream with a credential the user never holds, relays every channel with
//! backpressure, records interactive sessions as asciicast v2 and closes everything when the grant
//! ends.

mod conn;
mod cut;
pub mod hosttrust;
pub mod keys;
pub mod record;
mod relay;
pub mod server;
pub mod sftp;
pub mod target;
pub mod upstream;

pub use keys::GatewayKeys;
pub use server::{SshConfig, SshFrontend};

/// Certificate extension carrying the holder's groups (comma-separated), signed with the rest.
pub const GROUPS_EXTENSION: &str = "groups@jitgate";
/// Certificate extension carrying the id of the login token it was issued for.
pub const TOKEN_EXTENSION: &str = "token-id@jitgate";
