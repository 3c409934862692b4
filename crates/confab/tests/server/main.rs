//! Integration tests over real sockets: one binary, one file per area.

mod common;
mod http_client;

mod api;
mod history;
mod lifecycle;
mod limits;
mod native;
mod operations;
mod tutorial;
