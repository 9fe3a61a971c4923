//! Request and response framing over guest memory: the host writes one
//! framed message into the input buffer, and reads the guest's one framed
//! message out of the output buffer, its length checked against the buffer
//! before anything is allocated for it. Works on [`GuestMemory`] and the
//! two regions only, so its tests need no VM.

use hyperlight_wasm_protocol::boot::Region;
use hyperlight_wasm_protocol::wire::{self, HEADER_LEN};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ProtocolError, Result};
use crate::vm::memory::GuestMemory;

/// Writes `msg`, framed, at the start of the input buffer `input`.
///
/// # Errors
///
/// [`Error::RequestTooLarge`] when it does not fit.
pub(crate) fn send<T: Serialize>(memory: &mut GuestMemory, input: Region, msg: &T) -> Result<()> {
    let bytes = wire::encode_to_vec(msg).map_err(|e| Error::RequestTooLarge {
        reason: e.to_string(),
    })?;
    if bytes.len() as u64 > input.size {
        return Err(Error::RequestTooLarge {
            reason: format!(
                "it takes {} bytes and the guest's input buffer holds {}; raise that with \
                 SandboxBuilder::with_guest_input_buffer_size",
                bytes.len(),
                input.size
            ),
        });
    }
    memory.write(input.addr, &bytes)?;
    Ok(())
}

/// Copies the payload of the message in the output buffer `output` out of
/// guest memory; `what` names the message expected, for errors.
///
/// # Errors
///
/// [`Error::Protocol`] when the header is not ours or claims more than the
/// buffer holds.
pub(crate) fn read_payload(
    memory: &GuestMemory,
    output: Region,
    what: &'static str,
) -> Result<Vec<u8>> {
    let mut header = [0u8; HEADER_LEN];
    memory.read(output.addr, &mut header)?;
    let capacity = usize::try_from(output.size).unwrap_or(usize::MAX);
    let len = wire::payload_len(&header, capacity)
        .map_err(|source| ProtocolError::Malformed { what, source })?;
    Ok(memory.read_vec(output.addr + HEADER_LEN as u64, len)?)
}

/// Reads and decodes the message in the output buffer.
pub(crate) fn read<T: DeserializeOwned>(
    memory: &GuestMemory,
    output: Region,
    what: &'static str,
) -> Result<T> {
    let payload = read_payload(memory, output, what)?;
    wire::decode(&payload).map_err(|source| ProtocolError::Malformed { what, source }.into())
}

#[cfg(test)]
mod tests {
    use hyperlight_wasm_protocol::message::{Response, Value};
    use hyperlight_wasm_protocol::wire::HEADER_MAGIC;

    use super::*;

    const INPUT: Region = Region {
        addr: 0x1000,
        size: 0x100,
    };
    const OUTPUT: Region = Region {
        addr: 0x2000,
        size: 0x100,
    };

    #[test]
    fn messages_round_trip_through_memory() {
        let mut memory = GuestMemory::new(0x4000).unwrap();
        let msg = Response::Returned(Value::I32(7));
        send(&mut memory, OUTPUT, &msg).unwrap();
        let back: Response = read(&memory, OUTPUT, "a response").unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn what_does_not_fit_is_refused_before_it_is_written() {
        let mut memory = GuestMemory::new(0x4000).unwrap();
        let big = Response::Returned(Value::String("x".repeat(0x100)));
        assert!(matches!(
            send(&mut memory, INPUT, &big),
            Err(Error::RequestTooLarge { .. })
        ));
        assert_eq!(memory.read_u64(INPUT.addr).unwrap(), 0);
    }

    #[test]
    fn a_header_claiming_more_than_the_buffer_is_malformed() {
        let mut memory = GuestMemory::new(0x4000).unwrap();
        let mut header = (OUTPUT.size as u32).to_le_bytes().to_vec();
        header.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        memory.write(OUTPUT.addr, &header).unwrap();
        assert!(matches!(
            read_payload(&memory, OUTPUT, "a response"),
            Err(Error::Protocol(ProtocolError::Malformed {
                source: wire::WireError::TooLarge { .. },
                ..
            }))
        ));
        // Zeros are no header at all.
        assert!(matches!(
            read_payload(&memory, INPUT, "a response"),
            Err(Error::Protocol(ProtocolError::Malformed {
                source: wire::WireError::BadMagic { .. },
                ..
            }))
        ));
    }
}
