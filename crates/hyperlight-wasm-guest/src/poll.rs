//! WASI `poll_oneoff`: waiting for clocks and for stdio.
//!
//! Stdio is always ready (stdin at its end, stdout and stderr take
//! writes), and so are the host's files; a poll with a ready descriptor
//! answers at once. Otherwise
//! the guest asks the host to sleep until the earliest clock subscription
//! is due: the host sleeps on its side, within the call's time limit and
//! woken by `kill()`, so a sleeping module costs no CPU and is never beyond
//! the host's reach.

use alloc::vec::Vec;

use hyperlight_wasm_protocol::message::{ErrorCode, OutCall, OutCallReply};
use wasmtime::Caller;

use crate::abi::Fault;
use crate::imports::{ask_host, write_at};
use crate::runtime::Limits;
use crate::ungranted::{EBADF, EFAULT, EINVAL, ESUCCESS};

/// Subscription and event tags.
const CLOCK: u8 = 0;
const FD_READ: u8 = 1;
const FD_WRITE: u8 = 2;
/// `subclockflags::subscription_clock_abstime`.
const ABSTIME: u16 = 1;
/// `eventrwflags::fd_readwrite_hangup`: stdin is at its end.
const HANGUP: u16 = 1;

const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;

/// One decoded subscription.
enum Subscription {
    /// Due `timeout` ns from now (already made relative).
    Clock {
        userdata: u64,
        timeout: u64,
    },
    Fd {
        userdata: u64,
        tag: u8,
        fd: u32,
    },
}

/// `poll_oneoff(in, out, nsubscriptions, nevents) -> errno`.
pub fn poll_oneoff(
    caller: &mut Caller<'_, Limits>,
    subscriptions: i32,
    events: i32,
    count: i32,
    nevents: i32,
) -> wasmtime::Result<i32> {
    let count = count.cast_unsigned() as usize;
    if count == 0 {
        return Ok(EINVAL);
    }
    let Some(bytes) = read(
        caller,
        subscriptions,
        count.saturating_mul(SUBSCRIPTION_SIZE),
    ) else {
        return Ok(EFAULT);
    };
    let mut subs = Vec::with_capacity(count);
    for sub in bytes.chunks_exact(SUBSCRIPTION_SIZE) {
        let userdata = u64_at(sub, 0);
        match sub[8] {
            CLOCK => {
                let id = u32_at(sub, 16);
                let timeout = u64_at(sub, 24);
                let flags = u16::from_le_bytes([sub[40], sub[41]]);
                let timeout = if flags & ABSTIME != 0 {
                    let Some(now) = now(id)? else {
                        return Ok(EINVAL);
                    };
                    timeout.saturating_sub(now)
                } else {
                    if id > 3 {
                        return Ok(EINVAL);
                    }
                    timeout
                };
                subs.push(Subscription::Clock { userdata, timeout });
            }
            tag @ (FD_READ | FD_WRITE) => subs.push(Subscription::Fd {
                userdata,
                tag,
                fd: u32_at(sub, 16),
            }),
            _ => return Ok(EINVAL),
        }
    }

    // Descriptors answer at once; only without any does the poll wait.
    let mut out = Vec::new();
    for sub in &subs {
        if let Subscription::Fd { userdata, tag, fd } = *sub {
            // Stdio in its direction, and the host's files and directories
            // (regular files are always ready, as POSIX says), are ready.
            let ready = matches!((tag, fd), (FD_READ, 0) | (FD_WRITE, 1 | 2))
                || (fd > 2 && crate::fs::exists(fd.cast_signed())?);
            // A descriptor that does not exist, or stdio asked for what it
            // cannot do (stdin written, stdout or stderr read): EBADF, as
            // WASI says for a descriptor without the right.
            let error = if ready { ESUCCESS } else { EBADF };
            let flags = if tag == FD_READ && fd == 0 && error == ESUCCESS {
                HANGUP
            } else {
                0
            };
            out.push(event(userdata, error, tag, 0, flags));
        }
    }
    if out.is_empty() {
        let due = subs
            .iter()
            .filter_map(|sub| match sub {
                Subscription::Clock { timeout, .. } => Some(*timeout),
                Subscription::Fd { .. } => None,
            })
            .min()
            .unwrap_or(0);
        if due > 0 {
            match ask_host(&OutCall::Sleep { ns: due })? {
                OutCallReply::Done => {}
                other => {
                    return Err(Fault::new(
                        ErrorCode::BadRequest,
                        format_args!("sleep answer {other:?}"),
                    )
                    .into());
                }
            }
        }
        for sub in &subs {
            if let Subscription::Clock { userdata, timeout } = *sub
                && timeout <= due
            {
                out.push(event(userdata, ESUCCESS, CLOCK, 0, 0));
            }
        }
    }
    let written = u32::try_from(out.len()).unwrap_or(u32::MAX);
    let bytes: Vec<u8> = out.concat();
    if let Err(e) = write_at(caller, events, &bytes) {
        return Ok(e);
    }
    Ok(match write_at(caller, nevents, &written.to_le_bytes()) {
        Ok(()) => ESUCCESS,
        Err(e) => e,
    })
}

/// The time on clock `id` (0: realtime; 1-3: monotonic), `None` for another
/// clock.
fn now(id: u32) -> wasmtime::Result<Option<u64>> {
    let realtime = match id {
        0 => true,
        1..=3 => false,
        _ => return Ok(None),
    };
    match ask_host(&OutCall::Clock { realtime })? {
        OutCallReply::Time(ns) => Ok(Some(ns)),
        other => Err(Fault::new(
            ErrorCode::BadRequest,
            format_args!("clock answer {other:?}"),
        )
        .into()),
    }
}

fn event(userdata: u64, error: i32, tag: u8, nbytes: u64, flags: u16) -> [u8; EVENT_SIZE] {
    let mut e = [0u8; EVENT_SIZE];
    e[0..8].copy_from_slice(&userdata.to_le_bytes());
    // Errno values are below 80: they fit the event's u16.
    let error = u16::try_from(error).unwrap_or(u16::MAX);
    e[8..10].copy_from_slice(&error.to_le_bytes());
    e[10] = tag;
    e[16..24].copy_from_slice(&nbytes.to_le_bytes());
    e[24..26].copy_from_slice(&flags.to_le_bytes());
    e
}

/// `len` bytes of the module's memory at `at`, if they are inside it.
fn read(caller: &mut Caller<'_, Limits>, at: i32, len: usize) -> Option<Vec<u8>> {
    let memory = crate::imports::memory_of(caller)?;
    let start = at.cast_unsigned() as usize;
    memory
        .data(&*caller)
        .get(start..)
        .and_then(|tail| tail.get(..len))
        .map(<[u8]>::to_vec)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}
