//! One module per subcommand: its arguments, its handler, and what only it prints.

pub(crate) mod decap;
pub(crate) mod edit;
pub(crate) mod leftovers;
pub(crate) mod monitor;
pub(crate) mod owners;
pub(crate) mod peer;
pub(crate) mod places;
pub(crate) mod route;
pub(crate) mod service;
pub(crate) mod tunnel;
pub(crate) mod unload;
pub(crate) mod xdp;
