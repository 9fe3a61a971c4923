//! How a message sits in a shared buffer.
//!
//! A buffer holds one message at a time: an 8-byte header (the payload length
//! as a little-endian `u32`, then [`HEADER_MAGIC`]) followed by the payload,
//! the message encoded with `postcard`.
//!
//! The host copies a guest-written message out of guest memory before it
//! decodes it, in two steps: it reads the header and checks the length with
//! [`payload_len`], then copies exactly that many bytes and decodes them with
//! [`decode`], which rejects malformed payloads and trailing bytes.

use alloc::vec;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

/// Size of the header in front of every message.
pub const HEADER_LEN: usize = 8;

/// Second word of every header ("HLW1" in little-endian byte order).
pub const HEADER_MAGIC: u32 = u32::from_le_bytes(*b"HLW1");

/// A message that cannot be encoded into, or decoded from, a buffer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer cannot even hold the header.
    #[error("a {capacity}-byte buffer cannot hold the {HEADER_LEN}-byte message header")]
    BufferTooSmall {
        /// The buffer's size.
        capacity: usize,
    },
    /// The header does not carry [`HEADER_MAGIC`]: nothing, or garbage, was
    /// written there.
    #[error("the message header has magic {found:#010x}, expected {HEADER_MAGIC:#010x}")]
    BadMagic {
        /// What the header held instead.
        found: u32,
    },
    /// The message is longer than the buffer can hold.
    #[error("a message of {len} bytes does not fit in a {capacity}-byte buffer")]
    TooLarge {
        /// The claimed or needed payload length.
        len: u64,
        /// The buffer's size.
        capacity: usize,
    },
    /// The payload is not a valid encoding of the expected message.
    #[error("malformed message payload: {0}")]
    Malformed(postcard::Error),
    /// The payload has bytes after the message.
    #[error("{0} unexpected bytes after the message payload")]
    TrailingBytes(usize),
}

/// Encodes `msg` with its header at the start of `buf`; returns the number of
/// bytes written.
pub fn encode<T: Serialize + ?Sized>(msg: &T, buf: &mut [u8]) -> Result<usize, WireError> {
    let capacity = buf.len();
    let (header, body) = buf
        .split_first_chunk_mut::<HEADER_LEN>()
        .ok_or(WireError::BufferTooSmall { capacity })?;
    let len = match postcard::to_slice(msg, body) {
        Ok(payload) => payload.len(),
        Err(postcard::Error::SerializeBufferFull) => {
            let needed =
                postcard::experimental::serialized_size(msg).map_err(WireError::Malformed)?;
            return Err(WireError::TooLarge {
                len: needed as u64,
                capacity,
            });
        }
        Err(e) => return Err(WireError::Malformed(e)),
    };
    let len32 = u32::try_from(len).map_err(|_| WireError::TooLarge {
        len: len as u64,
        capacity,
    })?;
    header[..4].copy_from_slice(&len32.to_le_bytes());
    header[4..].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
    Ok(HEADER_LEN + len)
}

/// Encodes `msg` with its header into a new vector (the host builds its
/// messages this way, then copies them into guest memory).
pub fn encode_to_vec<T: Serialize + ?Sized>(msg: &T) -> Result<Vec<u8>, WireError> {
    let mut out = postcard::to_extend(msg, vec![0u8; HEADER_LEN]).map_err(WireError::Malformed)?;
    let len = out.len() - HEADER_LEN;
    let len32 = u32::try_from(len).map_err(|_| WireError::TooLarge {
        len: len as u64,
        capacity: u32::MAX as usize,
    })?;
    out[..4].copy_from_slice(&len32.to_le_bytes());
    out[4..HEADER_LEN].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
    Ok(out)
}

/// Checks a header read from a buffer of `capacity` bytes and returns the
/// length of the payload that follows it, which is guaranteed to fit.
pub fn payload_len(header: &[u8; HEADER_LEN], capacity: usize) -> Result<usize, WireError> {
    let room = capacity
        .checked_sub(HEADER_LEN)
        .ok_or(WireError::BufferTooSmall { capacity })?;
    let [l0, l1, l2, l3, m0, m1, m2, m3] = *header;
    let magic = u32::from_le_bytes([m0, m1, m2, m3]);
    if magic != HEADER_MAGIC {
        return Err(WireError::BadMagic { found: magic });
    }
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    match usize::try_from(len) {
        Ok(len) if len <= room => Ok(len),
        _ => Err(WireError::TooLarge {
            len: u64::from(len),
            capacity,
        }),
    }
}

/// Decodes a payload that must hold exactly one `T`.
pub fn decode<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, WireError> {
    let (msg, rest) = postcard::take_from_bytes(payload).map_err(WireError::Malformed)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// Decodes the message at the start of a whole buffer (header and payload).
pub fn decode_buffer<'a, T: Deserialize<'a>>(buf: &'a [u8]) -> Result<T, WireError> {
    let (header, body) =
        buf.split_first_chunk::<HEADER_LEN>()
            .ok_or(WireError::BufferTooSmall {
                capacity: buf.len(),
            })?;
    let len = payload_len(header, buf.len())?;
    decode(&body[..len])
}

/// The index of [`OutCall::CallHost`] among `OutCall`'s variants (postcard
/// encodes an enum as its variant index, a varint, then the variant's
/// fields in order).
///
/// [`OutCall::CallHost`]: crate::message::OutCall::CallHost
const CALL_HOST_VARIANT: u32 = 1;

/// An [`OutCall::CallHost`] payload with its arguments still encoded: what
/// the host needs to check the call (the function's name and arity) before
/// it decodes, and allocates, any argument.
///
/// [`OutCall::CallHost`]: crate::message::OutCall::CallHost
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallHostHead<'a> {
    /// The module the host function was imported from.
    pub module: &'a str,
    /// The host function's name.
    pub function: &'a str,
    /// How many arguments the guest claims follow.
    pub arg_count: usize,
    /// The encoded arguments (decode them one by one with [`take_value`]).
    pub args: &'a [u8],
}

/// Reads the head of an out-call payload if it is an
/// [`OutCall::CallHost`]; `Ok(None)` for any other out-call (decode those
/// with [`decode`]). Allocates nothing.
///
/// [`OutCall::CallHost`]: crate::message::OutCall::CallHost
pub fn decode_call_host_head(payload: &[u8]) -> Result<Option<CallHostHead<'_>>, WireError> {
    let (variant, rest): (u32, &[u8]) =
        postcard::take_from_bytes(payload).map_err(WireError::Malformed)?;
    if variant != CALL_HOST_VARIANT {
        return Ok(None);
    }
    let (module, rest): (&str, &[u8]) =
        postcard::take_from_bytes(rest).map_err(WireError::Malformed)?;
    let (function, rest): (&str, &[u8]) =
        postcard::take_from_bytes(rest).map_err(WireError::Malformed)?;
    let (arg_count, args): (usize, &[u8]) =
        postcard::take_from_bytes(rest).map_err(WireError::Malformed)?;
    Ok(Some(CallHostHead {
        module,
        function,
        arg_count,
        args,
    }))
}

/// Decodes one [`Value`] from the front of `bytes`; returns it and the
/// bytes after it. A value allocates at most as many bytes as it occupies.
///
/// [`Value`]: crate::message::Value
pub fn take_value(bytes: &[u8]) -> Result<(crate::message::Value, &[u8]), WireError> {
    postcard::take_from_bytes(bytes).map_err(WireError::Malformed)
}

#[cfg(test)]
mod tests {
    use alloc::string::String;

    use super::*;
    use crate::message::{Abort, ErrorCode, Request, Response, Value, ValueType};

    #[test]
    fn round_trip_every_value() {
        let values = vec![
            Value::Void,
            Value::I32(i32::MIN),
            Value::U32(u32::MAX),
            Value::I64(i64::MIN),
            Value::U64(u64::MAX),
            Value::F32(f32::from_bits(0x7fc0_1234)),
            Value::F64(f64::from_bits(0x7ff8_0000_dead_beef)),
            Value::Bool(true),
            Value::String(String::from("héllo")),
            Value::Bytes(vec![0, 1, 255]),
        ];
        let req = Request::Call {
            function: String::from("f"),
            args: values.clone(),
            returns: ValueType::Bytes,
        };
        let mut buf = [0u8; 256];
        let n = encode(&req, &mut buf).unwrap();
        assert!(n > HEADER_LEN);
        let back: Request = decode_buffer(&buf).unwrap();
        // NaN != NaN: compare the rest structurally, the floats by bits.
        assert_eq!(alloc::format!("{back:?}"), alloc::format!("{req:?}"));
        // NaN payloads survive bit for bit.
        if let Request::Call { args, .. } = back {
            let Value::F32(f) = args[5] else { panic!() };
            assert_eq!(f.to_bits(), 0x7fc0_1234);
            let Value::F64(d) = args[6] else { panic!() };
            assert_eq!(d.to_bits(), 0x7ff8_0000_dead_beef);
        }
    }

    #[test]
    fn encode_to_vec_matches_encode() {
        let msg = Response::Returned(Value::String(String::from("hi")));
        let mut buf = [0u8; 64];
        let n = encode(&msg, &mut buf).unwrap();
        assert_eq!(encode_to_vec(&msg).unwrap(), buf[..n].to_vec());
    }

    #[test]
    fn encode_reports_a_message_that_does_not_fit() {
        let msg = Response::Returned(Value::Bytes(vec![7; 100]));
        let mut buf = [0u8; 64];
        assert!(matches!(
            encode(&msg, &mut buf),
            Err(WireError::TooLarge { capacity: 64, .. })
        ));
        assert_eq!(
            encode(&msg, &mut [0u8; 4]),
            Err(WireError::BufferTooSmall { capacity: 4 })
        );
    }

    #[test]
    fn hostile_headers_are_rejected() {
        let mut header = [0u8; HEADER_LEN];
        assert!(matches!(
            payload_len(&header, 64),
            Err(WireError::BadMagic { found: 0 })
        ));
        header[4..].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
        header[..4].copy_from_slice(&57u32.to_le_bytes());
        assert!(matches!(
            payload_len(&header, 64),
            Err(WireError::TooLarge { len: 57, .. })
        ));
        header[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            payload_len(&header, 64),
            Err(WireError::TooLarge { .. })
        ));
        header[..4].copy_from_slice(&56u32.to_le_bytes());
        assert_eq!(payload_len(&header, 64), Ok(56));
        assert_eq!(
            payload_len(&header, 7),
            Err(WireError::BufferTooSmall { capacity: 7 })
        );
    }

    #[test]
    fn hostile_payloads_are_rejected() {
        // An enum discriminant that does not exist.
        assert!(matches!(
            decode::<Response>(&[0x7f]),
            Err(WireError::Malformed(_))
        ));
        // A string that claims more bytes than there are.
        assert!(matches!(
            decode::<Response>(&[2, 8, 0xff, 0xff, 0xff, 0x0f]),
            Err(WireError::Malformed(_))
        ));
        // Invalid UTF-8 in a string.
        assert!(matches!(
            decode::<Abort<'_>>(&[0, 2, 0xc3, 0x28]),
            Err(WireError::Malformed(_))
        ));
        // A valid message followed by junk.
        let mut buf = [0u8; 32];
        let n = encode(&Response::ModuleLoaded, &mut buf).unwrap();
        assert_eq!(
            decode::<Response>(&buf[HEADER_LEN..n + 3]),
            Err(WireError::TrailingBytes(3))
        );
        // Empty payload.
        assert!(matches!(
            decode::<ErrorCode>(&[]),
            Err(WireError::Malformed(_))
        ));
    }
}

#[cfg(test)]
mod proptests {
    use alloc::vec::Vec;

    use proptest::prelude::*;

    use super::*;
    use crate::message::{Abort, OutCall, Response, Value};

    fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Void),
            any::<i32>().prop_map(Value::I32),
            any::<u64>().prop_map(Value::U64),
            any::<u32>().prop_map(|b| Value::F32(f32::from_bits(b))),
            any::<bool>().prop_map(Value::Bool),
            ".{0,8}".prop_map(Value::String),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
        ]
    }

    proptest! {
        /// The two-phase decoding of a host call reads exactly what the
        /// message holds (so it tracks `OutCall`'s layout).
        #[test]
        fn call_host_heads_and_values_decode_what_was_encoded(
            module in ".{0,8}",
            function in ".{0,16}",
            args in proptest::collection::vec(any_value(), 0..6),
        ) {
            let call = OutCall::CallHost {
                module: module.clone(),
                function: function.clone(),
                args: args.clone(),
            };
            let framed = encode_to_vec(&call).unwrap();
            let head = decode_call_host_head(&framed[HEADER_LEN..]).unwrap().unwrap();
            prop_assert_eq!(head.module, module.as_str());
            prop_assert_eq!(head.function, function.as_str());
            prop_assert_eq!(head.arg_count, args.len());
            let mut rest = head.args;
            for arg in &args {
                let (value, after) = take_value(rest).unwrap();
                prop_assert_eq!(format!("{value:?}"), format!("{arg:?}"));
                rest = after;
            }
            prop_assert!(rest.is_empty());
        }

        /// Other out-calls are not mistaken for host calls.
        #[test]
        fn other_out_calls_have_no_call_host_head(len in any::<u32>(), text in ".{0,8}") {
            for call in [OutCall::Random { len }, OutCall::Print { text: text.clone(), stderr: false }] {
                let framed = encode_to_vec(&call).unwrap();
                prop_assert_eq!(decode_call_host_head(&framed[HEADER_LEN..]).unwrap(), None);
            }
        }

        /// Whatever the guest writes, decoding returns a value or an error;
        /// it never panics.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Response>(&bytes);
            let _ = decode::<OutCall>(&bytes);
            let _ = decode::<Abort<'_>>(&bytes);
            let _ = decode_buffer::<Response>(&bytes);
        }

        /// Any header either yields a length that fits the buffer or an error.
        #[test]
        fn payload_len_never_exceeds_the_buffer(header in any::<[u8; 8]>(), capacity in 0usize..1 << 20) {
            if let Ok(len) = payload_len(&header, capacity) {
                prop_assert!(len + HEADER_LEN <= capacity);
            }
        }

        /// Strings, including any Unicode, round-trip exactly.
        #[test]
        fn strings_round_trip(s in ".*", bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let msg = Response::Returned(crate::message::Value::String(s));
            let framed: Vec<u8> = encode_to_vec(&msg).unwrap();
            prop_assert_eq!(decode_buffer::<Response>(&framed).unwrap(), msg);
            let msg = Response::Returned(crate::message::Value::Bytes(bytes));
            let framed: Vec<u8> = encode_to_vec(&msg).unwrap();
            prop_assert_eq!(decode_buffer::<Response>(&framed).unwrap(), msg);
        }
    }
}
