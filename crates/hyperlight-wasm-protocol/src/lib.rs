//! The ABI between the hyperlight-wasm host and its guest.
//!
//! Host and guest share nothing but guest memory and VM exits. This crate is
//! everything both sides must agree on, and nothing else:
//!
//! - [`component`]: component-model values and their flat wire form.
//! - [`boot`]: the [`boot::BootInfo`] block the host writes before the guest's
//!   first instruction, and the guest image's link address.
//! - [`port`]: the I/O ports the guest may `out` to, one per kind of exit.
//! - [`message`]: what travels through the shared buffers ([`message::Request`],
//!   [`message::Response`], [`message::OutCall`], ...), and the guest's
//!   [`message::ErrorCode`]s.
//! - [`wire`]: how a message is framed in a buffer, with the checks the host
//!   applies to everything the guest wrote.
//! - `engine` (feature `engine`): the wasmtime configuration that host-side
//!   compilation and the guest runtime must share exactly.
//!
//! The host treats every byte the guest wrote as hostile: it reads messages
//! only through [`wire::decode`], which checks lengths against the buffer and
//! rejects malformed encodings with a [`wire::WireError`].
// Every cast that can lose bits or change sign says why it cannot here.
#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]
#![cfg_attr(
    test,
    allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap
    )
)]
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod boot;
pub mod component;
#[cfg(feature = "engine")]
pub mod engine;
pub mod fs;
pub mod message;
pub mod port;
pub mod wire;

/// Version of this protocol. The guest reports it when it is ready and the
/// host refuses a guest that speaks another version. Bump it on any change to
/// this crate that changes bytes in guest memory.
pub const PROTOCOL_VERSION: u32 = 6;
