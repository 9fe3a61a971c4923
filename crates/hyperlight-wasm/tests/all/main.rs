//! Integration tests: every test drives real KVM micro-VMs through the public
//! API. They fail (never skip) when `/dev/kvm` is unusable.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod abis;
mod api;
mod common;
mod components;
mod errors;
mod execution;
mod files;
#[path = "../../fixtures/fixtures.rs"]
mod fixtures;
mod host_functions;
mod images;
mod lifecycle;
mod pool;
mod resources;
mod rust_component;
mod samples;
mod strings;
mod values;
mod wasi;
mod wasip2;
