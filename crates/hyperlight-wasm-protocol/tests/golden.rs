//! Golden bytes: one encoded instance of every variant of every message
//! enum, byte for byte. Host and guest are built from the same crate, but
//! an artifact's header, a cached image and a guest of another build all
//! outlive one build: a reordered or renumbered variant must fail here, not
//! in a sandbox.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use hyperlight_wasm_protocol::message::{
    Abort, ComponentImport, ErrorCode, GuestError, HostFunctionSignature, ModuleAbi, Node, OutCall,
    OutCallReply, Request, Response, Value, ValueType,
};
use hyperlight_wasm_protocol::port::Port;
use hyperlight_wasm_protocol::wire::{self, HEADER_LEN};

/// The payload (without the frame header) `msg` encodes to.
fn payload<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    wire::encode_to_vec(msg).unwrap()[HEADER_LEN..].to_vec()
}

fn check<T: serde::Serialize + std::fmt::Debug>(cases: &[(T, &[u8])]) {
    for (msg, bytes) in cases {
        assert_eq!(payload(msg), *bytes, "{msg:?}");
    }
}

#[test]
fn requests() {
    check(&[
        (
            Request::LoadModule {
                artifact_len: 5,
                host_functions: vec![HostFunctionSignature {
                    module: String::from("env"),
                    name: String::from("f"),
                    params: vec![ValueType::I32],
                    returns: ValueType::Void,
                }],
                abi: ModuleAbi {
                    memory: String::from("m"),
                    malloc: String::from("a"),
                    free: String::from("f"),
                },
            },
            &[
                0, 5, 1, 3, b'e', b'n', b'v', 1, b'f', 1, 1, 0, 1, b'm', 1, b'a', 1, b'f',
            ],
        ),
        (
            Request::Call {
                function: String::from("g"),
                args: vec![Value::I64(-1)],
                returns: ValueType::I64,
            },
            &[1, 1, b'g', 1, 3, 1, 3],
        ),
        (Request::ReadMemory { offset: 1, len: 2 }, &[2, 1, 2]),
        (
            Request::WriteMemory {
                offset: 3,
                bytes: vec![4],
            },
            &[3, 3, 1, 4],
        ),
        (
            Request::LoadComponent {
                artifact_len: 5,
                imports: vec![ComponentImport {
                    interface: String::from("i"),
                    name: String::from("f"),
                }],
            },
            &[4, 5, 1, 1, b'i', 1, b'f'],
        ),
        (
            Request::CallComponent {
                function: String::from("g"),
                args: vec![Node::U32(3)],
            },
            &[5, 1, b'g', 1, 6, 3],
        ),
        (
            Request::CallComponent {
                function: String::from("g"),
                args: vec![Node::Resource(9)],
            },
            &[5, 1, b'g', 1, 21, 9],
        ),
        (Request::DropResource { id: 9 }, &[6, 9]),
    ]);
}

#[test]
fn responses() {
    check(&[
        (
            Response::Ready {
                protocol_version: 7,
            },
            &[0, 7][..],
        ),
        (Response::ModuleLoaded, &[1]),
        (Response::Returned(Value::Bool(true)), &[2, 7, 1]),
        (
            Response::Failed(GuestError {
                code: ErrorCode::Panic,
                message: String::from("x"),
            }),
            &[3, 27, 1, b'x'],
        ),
        (Response::Exited { code: -2 }, &[4, 3]),
        (
            Response::ComponentReturned(vec![Node::Option(true), Node::String(String::from("s"))]),
            &[5, 2, 18, 1, 12, 1, b's'],
        ),
    ]);
}

#[test]
fn out_calls() {
    check(&[
        (
            OutCall::ArtifactBuffer { addr: 0x80, len: 2 },
            &[0, 0x80, 0x01, 2][..],
        ),
        (
            OutCall::CallHost {
                module: String::from("m"),
                function: String::from("h"),
                args: Vec::new(),
            },
            &[1, 1, b'm', 1, b'h', 0],
        ),
        (
            OutCall::Print {
                text: String::from("p"),
                stderr: true,
            },
            &[2, 1, b'p', 1],
        ),
        (OutCall::Clock { realtime: true }, &[3, 1]),
        (OutCall::Random { len: 4 }, &[4, 4]),
        (OutCall::Sleep { ns: 5 }, &[5, 5]),
        (OutCall::Args, &[6]),
        (OutCall::Environ, &[7]),
        (OutCall::ReadStdin { max: 8 }, &[8, 8]),
        (
            OutCall::CallComponentHost {
                interface: String::new(),
                function: String::from("h"),
                args: vec![Node::Flags(vec![String::from("x")])],
            },
            &[10, 0, 1, b'h', 1, 20, 1, 1, b'x'],
        ),
    ]);
}

#[test]
fn out_call_replies() {
    check(&[
        (OutCallReply::Done, &[0][..]),
        (OutCallReply::Returned(Value::Void), &[1, 0]),
        (OutCallReply::Failed(String::from("e")), &[2, 1, b'e']),
        (OutCallReply::Time(300), &[3, 0xac, 0x02]),
        (OutCallReply::Random(vec![9]), &[4, 1, 9]),
        (
            OutCallReply::Strings(vec![String::from("s")]),
            &[5, 1, 1, b's'],
        ),
        (OutCallReply::Bytes(vec![7]), &[6, 1, 7]),
        (
            OutCallReply::ComponentReturned(vec![Node::Result {
                ok: false,
                payload: false,
            }]),
            &[8, 1, 19, 0, 0],
        ),
    ]);
}

#[test]
fn values_and_their_types() {
    check(&[
        (Value::Void, &[0][..]),
        (Value::I32(-1), &[1, 1]),
        (Value::U32(1), &[2, 1]),
        (Value::I64(1), &[3, 2]),
        (Value::U64(1), &[4, 1]),
        (Value::F32(1.0), &[5, 0, 0, 0x80, 0x3f]),
        (Value::F64(1.0), &[6, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f]),
        (Value::Bool(false), &[7, 0]),
        (Value::String(String::from("s")), &[8, 1, b's']),
        (Value::Bytes(vec![1]), &[9, 1, 1]),
        // A varint, like every integer.
        (Value::V128(300), &[10, 0xac, 0x02]),
    ]);
    let names: Vec<&str> = ValueType::ALL.iter().map(|t| t.name()).collect();
    assert_eq!(
        names,
        [
            "()", "i32", "u32", "i64", "u64", "f32", "f64", "bool", "String", "Vec<u8>", "u128"
        ]
    );
    for (index, ty) in ValueType::ALL.iter().enumerate() {
        assert_eq!(payload(ty), [u8::try_from(index).unwrap()], "{ty:?}");
    }
}

#[test]
fn error_codes_and_aborts() {
    let codes = [
        ErrorCode::BadRequest,
        ErrorCode::NoModuleLoaded,
        ErrorCode::ModuleAlreadyLoaded,
        ErrorCode::IncompatibleArtifact,
        ErrorCode::UnknownImport,
        ErrorCode::InstantiationFailed,
        ErrorCode::FunctionNotFound,
        ErrorCode::ParameterCountMismatch,
        ErrorCode::ParameterTypeMismatch,
        ErrorCode::ReturnTypeMismatch,
        ErrorCode::TrapUnreachable,
        ErrorCode::TrapIntegerDivisionByZero,
        ErrorCode::TrapIntegerOverflow,
        ErrorCode::TrapBadConversionToInteger,
        ErrorCode::TrapMemoryOutOfBounds,
        ErrorCode::TrapTableOutOfBounds,
        ErrorCode::TrapIndirectCallToNull,
        ErrorCode::TrapBadSignature,
        ErrorCode::TrapStackOverflow,
        ErrorCode::TrapHeapMisaligned,
        ErrorCode::TrapOther,
        ErrorCode::OutOfMemory,
        ErrorCode::HostFunctionFailed,
        ErrorCode::ImportTypeMismatch,
        ErrorCode::MissingExport,
        ErrorCode::BadGuestPointer,
        ErrorCode::InvalidUtf8,
        ErrorCode::Panic,
        ErrorCode::Other,
    ];
    for (index, code) in codes.iter().enumerate() {
        assert_eq!(payload(code), [u8::try_from(index).unwrap()], "{code:?}");
    }
    // Postcard reads past the last variant as an error, so a code added
    // at the end decodes nowhere else.
    assert!(wire::decode::<ErrorCode>(&[u8::try_from(codes.len()).unwrap()]).is_err());
    check(&[(
        Abort {
            code: ErrorCode::OutOfMemory,
            message: "m",
        },
        &[21, 1, b'm'][..],
    )]);
}

#[test]
fn ports() {
    let ports = [
        (Port::Done, 0x10),
        (Port::OutCall, 0x11),
        (Port::Abort, 0x12),
        (Port::Exception, 0x13),
    ];
    for (port, number) in ports {
        assert_eq!(port as u16, number);
        assert_eq!(Port::try_from(number).ok(), Some(port));
    }
}

#[test]
fn file_system_calls_and_replies() {
    use hyperlight_wasm_protocol::message::{Dirent, Filestat, FsCall, FsReply};
    let s = || String::from("p");
    let calls = [
        FsCall::PrestatGet { fd: 3 },
        FsCall::PrestatDirName { fd: 3 },
        FsCall::FdstatGet { fd: 3 },
        FsCall::FilestatGet { fd: 3 },
        FsCall::PathFilestatGet {
            fd: 3,
            follow: true,
            path: s(),
        },
        FsCall::Open {
            fd: 3,
            follow: true,
            path: s(),
            oflags: 1,
            rights: 2,
            fdflags: 0,
        },
        FsCall::Close { fd: 3 },
        FsCall::Read {
            fd: 3,
            max: 1,
            offset: None,
        },
        FsCall::Write {
            fd: 3,
            bytes: vec![1],
            offset: Some(2),
        },
        FsCall::Seek {
            fd: 3,
            offset: -1,
            whence: 2,
        },
        FsCall::Readdir {
            fd: 3,
            cookie: 0,
            max: 64,
        },
        FsCall::CreateDirectory { fd: 3, path: s() },
        FsCall::RemoveDirectory { fd: 3, path: s() },
        FsCall::UnlinkFile { fd: 3, path: s() },
        FsCall::Rename {
            fd: 3,
            old: s(),
            new_fd: 4,
            new: s(),
        },
        FsCall::Readlink { fd: 3, path: s() },
        FsCall::Symlink {
            old: s(),
            fd: 3,
            new: s(),
        },
        FsCall::SetSize { fd: 3, size: 9 },
        FsCall::Sync { fd: 3 },
    ];
    for (index, call) in calls.iter().enumerate() {
        assert_eq!(payload(call)[0], u8::try_from(index).unwrap(), "{call:?}");
    }
    // One whole, and the out-call around it.
    check(&[(
        OutCall::Fs(FsCall::Read {
            fd: 3,
            max: 1,
            offset: Some(2),
        }),
        &[9, 7, 3, 1, 1, 2][..],
    )]);
    let replies = [
        FsReply::Done,
        FsReply::Prestat { name_len: 1 },
        FsReply::Name(s()),
        FsReply::Fdstat {
            filetype: 4,
            flags: 0,
            rights_base: 1,
            rights_inheriting: 1,
        },
        FsReply::Filestat(Filestat::default()),
        FsReply::Fd(3),
        FsReply::Bytes(vec![1]),
        FsReply::Count(1),
        FsReply::Offset(1),
        FsReply::Dirents(Vec::new()),
        FsReply::Errno(8),
    ];
    for (index, reply) in replies.iter().enumerate() {
        assert_eq!(payload(reply)[0], u8::try_from(index).unwrap(), "{reply:?}");
    }
    check(&[(OutCallReply::Fs(FsReply::Errno(76)), &[7, 10, 76][..])]);
    // WASI's dirent layout: next, ino, name length, type, padding, name.
    let dirent = Dirent {
        next: 2,
        ino: 5,
        filetype: 4,
        name: String::from("ab"),
    };
    assert_eq!(
        dirent.to_wasi(),
        [
            &[2, 0, 0, 0, 0, 0, 0, 0][..],
            &[5, 0, 0, 0, 0, 0, 0, 0],
            &[2, 0, 0, 0],
            &[4, 0, 0, 0],
            b"ab"
        ]
        .concat()
    );
}
