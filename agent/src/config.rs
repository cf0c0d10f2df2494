//! The agent's configuration: defined in `strata_common::agent_config`, which
//! `strata-publisher inspect --config` reads too.

pub use strata_common::agent_config::*;
