//! The console's verbs, one module per group: each takes the connection
//! and the verb's arguments, prints what it got and returns the exit code.

pub mod audit;
pub mod firewall;
pub mod jobs;
pub mod repository;
pub mod status;
pub mod system;
