//! One module per subcommand: its arguments and its `run`.

pub mod build;
pub mod diff;
pub mod follow;
pub mod gc;
pub mod generate;
pub mod history;
pub mod import;
pub mod inspect;
pub mod keygen;
pub mod list;
pub mod pin;
pub mod publish;
pub mod refresh;
pub mod rollback;
pub mod status;
pub mod validate;
