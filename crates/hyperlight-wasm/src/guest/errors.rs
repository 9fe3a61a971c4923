//! Turning what the guest reported into the public [`Error`]: its failure
//! codes, its abort message, and messages the protocol does not allow here
//! (quoted, bounded). Pure functions of the decoded messages: tested without
//! a VM.

use hyperlight_wasm_protocol::message::{Abort, ErrorCode, GuestError};
use hyperlight_wasm_protocol::wire;

use crate::error::{self, Error, ProtocolError, TrapKind};
use crate::vm::memory::OutOfBounds;

/// A host-side access outside guest memory is a bug of ours (every address
/// the guest names is checked against its region before it is used), never
/// the guest's doing.
impl From<OutOfBounds> for Error {
    fn from(e: OutOfBounds) -> Error {
        Error::Internal {
            reason: format!("host-side access outside guest memory: {e}"),
        }
    }
}

/// How much of a guest's message an error quotes.
pub(crate) const QUOTE_LIMIT: usize = 200;

/// The error for a message the protocol does not allow here, quoting at
/// most [`QUOTE_LIMIT`] bytes of it: the message is formatted into a
/// bounded buffer, never whole (a hostile guest's message can be as large
/// as the output buffer, and its `Debug` form several times larger).
pub(crate) fn unexpected(expected: &'static str, got: &dyn std::fmt::Debug) -> Error {
    use std::fmt::Write;
    let mut quote = Bounded {
        text: String::new(),
        limit: QUOTE_LIMIT,
    };
    // An error from the writer only means the quote is full.
    if write!(quote, "{got:?}").is_err() {
        quote.text.push_str("...");
    }
    Error::Protocol(ProtocolError::UnexpectedMessage {
        expected,
        got: quote.text,
    })
}

/// A `fmt::Write` that keeps at most `limit` bytes and then fails, which
/// stops the formatting.
struct Bounded {
    text: String,
    limit: usize,
}

impl std::fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.limit - self.text.len();
        if s.len() <= room {
            self.text.push_str(s);
            return Ok(());
        }
        let cut = (0..=room)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        self.text.push_str(&s[..cut]);
        Err(std::fmt::Error)
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        String::from("<non-string panic payload>")
    }
}

/// The error for a guest that exited on the abort port, from the abort
/// message it left (or the error reading it).
pub(crate) fn abort_error(payload: Result<Vec<u8>, Error>) -> Error {
    let payload = match payload {
        Ok(payload) => payload,
        Err(e) => return unreadable_abort(&e),
    };
    match wire::decode::<Abort<'_>>(&payload) {
        Ok(abort) if abort.code == ErrorCode::OutOfMemory => Error::GuestOutOfMemory {
            message: abort.message.to_owned(),
        },
        Ok(abort) => Error::GuestAborted {
            code: abort.code,
            message: abort.message.to_owned(),
        },
        Err(source) => unreadable_abort(&Error::Protocol(ProtocolError::Malformed {
            what: "an abort message",
            source,
        })),
    }
}

fn unreadable_abort(e: &Error) -> Error {
    Error::GuestAborted {
        code: ErrorCode::Other,
        message: format!(
            "the guest aborted without a readable reason: {}",
            error::chain(e)
        ),
    }
}

/// Maps a failure the guest reported to the public error; `function` is
/// the export being called (`None`: the module's start function).
pub(crate) fn guest_error(e: GuestError, function: Option<&str>) -> Error {
    let GuestError { code, message } = e;
    let function = || function.unwrap_or("the start function").to_owned();
    if let Some(kind) = TrapKind::from_code(code) {
        return Error::GuestTrap {
            function: function(),
            kind,
            message,
        };
    }
    match code {
        ErrorCode::FunctionNotFound => Error::GuestFunctionNotFound {
            function: function(),
        },
        ErrorCode::ParameterCountMismatch => Error::GuestFunctionParameterCountMismatch {
            function: function(),
            message,
        },
        ErrorCode::ParameterTypeMismatch => Error::GuestFunctionParameterTypeMismatch {
            function: function(),
            message,
        },
        ErrorCode::ReturnTypeMismatch => Error::GuestFunctionReturnTypeMismatch {
            function: function(),
            message,
        },
        ErrorCode::IncompatibleArtifact => Error::IncompatibleModule { message },
        ErrorCode::UnknownImport => Error::UnknownImport { message },
        ErrorCode::InstantiationFailed => Error::Instantiation { message },
        ErrorCode::OutOfMemory => Error::GuestOutOfMemory { message },
        ErrorCode::ImportTypeMismatch => Error::ImportTypeMismatch { message },
        ErrorCode::MissingExport => Error::MissingExport { message },
        ErrorCode::BadGuestPointer => Error::BadGuestPointer { message },
        ErrorCode::InvalidUtf8 => Error::InvalidUtf8 { message },
        code => Error::GuestFailed { code, message },
    }
}

#[cfg(test)]
mod tests {
    use hyperlight_wasm_protocol::wire::encode_to_vec;

    use super::*;

    fn payload(abort: &Abort<'_>) -> Vec<u8> {
        let framed = encode_to_vec(abort).unwrap();
        framed[wire::HEADER_LEN..].to_vec()
    }

    #[test]
    fn aborts_decode_to_their_reason() {
        let e = abort_error(Ok(payload(&Abort {
            code: ErrorCode::Panic,
            message: "boom",
        })));
        assert!(
            matches!(&e, Error::GuestAborted { code: ErrorCode::Panic, message } if message == "boom"),
            "{e:?}"
        );
        let e = abort_error(Ok(payload(&Abort {
            code: ErrorCode::OutOfMemory,
            message: "no heap",
        })));
        assert!(matches!(e, Error::GuestOutOfMemory { .. }), "{e:?}");
        for garbage in [vec![0xff; 8], Vec::new()] {
            match abort_error(Ok(garbage)) {
                Error::GuestAborted { code, message } => {
                    assert_eq!(code, ErrorCode::Other);
                    assert!(message.contains("without a readable reason"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn reported_failures_map_to_their_errors() {
        let failed = |code| GuestError {
            code,
            message: String::from("why"),
        };
        assert!(matches!(
            guest_error(failed(ErrorCode::FunctionNotFound), Some("f")),
            Error::GuestFunctionNotFound { function } if function == "f"
        ));
        assert!(matches!(
            guest_error(failed(ErrorCode::UnknownImport), None),
            Error::UnknownImport { .. }
        ));
        assert!(matches!(
            guest_error(failed(ErrorCode::Panic), None),
            Error::GuestFailed {
                code: ErrorCode::Panic,
                ..
            }
        ));
        assert!(matches!(
            guest_error(failed(ErrorCode::TrapUnreachable), None),
            Error::GuestTrap { function, .. } if function == "the start function"
        ));
    }

    #[test]
    fn quotes_are_bounded_and_cut_on_char_boundaries() {
        let long = "é".repeat(1000);
        match unexpected("x", &long) {
            Error::Protocol(ProtocolError::UnexpectedMessage { got, .. }) => {
                assert!(got.len() <= QUOTE_LIMIT + 3);
                assert!(got.ends_with("..."));
            }
            other => panic!("{other:?}"),
        }
    }
}
