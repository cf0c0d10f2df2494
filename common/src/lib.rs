//! Strata's shared core: the Layer 1 / Layer 2 model and its validation, prompt
//! rendering, the signed snapshot bundle format, signed pointers, keys and trust,
//! and access to the object store.
//!
//! The publisher and the agent are thin binaries over this crate; everything
//! that decides what a snapshot *is* and whether it may be trusted lives here,
//! so both sides agree byte for byte.

#![deny(missing_docs)]

pub mod agent_config;
pub mod bundle;
pub mod canonical;
pub mod channel;
pub mod chunk;
pub mod compile;
pub mod copy;
#[cfg(feature = "postgres")]
pub mod database;
pub mod diff;
pub mod gc;
pub mod generate;
pub mod history;
pub mod layout;
pub mod localfile;
pub mod matcher;
pub mod model;
pub mod normalize;
pub mod notify;
pub mod operator;
pub mod pointer;
pub mod render;
pub mod report;
pub mod rollforward;
pub mod secrets;
pub mod sign;
pub mod source;
pub mod store;
pub mod sweep;
pub mod tenant_rollback;
#[cfg(test)]
mod test_texts;
pub mod time;
pub mod validate;
pub mod verify;
pub mod versions;
