//! One module per subcommand: its arguments and its `run`.

pub mod build;
pub mod generate;
pub mod inspect;
pub mod keygen;
pub mod list;
pub mod publish;
pub mod validate;
