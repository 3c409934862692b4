//! Integration tests over real sockets: one binary, one file per area.

mod common;

mod history;
mod lifecycle;
mod limits;
mod native;
mod tutorial;
