//! The I/O ports through which the guest exits to the host.
//!
//! The guest runs at CPL3; the host's TSS I/O permission bitmap lets it `out`
//! to exactly the ports [`Port::guest_ports`] lists. Every other port, and
//! every `in`, faults inside the guest and ends in a guest exception.

/// A port the guest writes to with `out` to hand control to the host.
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Port {
    /// The guest finished the current request (or finished booting): a
    /// [`crate::message::Response`] is in the output buffer. The guest waits
    /// for the next [`crate::message::Request`] in the input buffer.
    Done = 0x10,
    /// The guest needs the host in the middle of a request: an
    /// [`crate::message::OutCall`] is in the output buffer. The host writes an
    /// [`crate::message::OutCallReply`] into the input buffer and resumes it.
    OutCall = 0x11,
    /// The guest cannot go on (a panic, an allocation failure): an
    /// [`crate::message::Abort`] is in the output buffer. The host never
    /// resumes the guest after this.
    Abort = 0x12,
    /// A CPU exception in the guest. Written by the host's CPL0 exception
    /// stubs (never by guest code: CPL3 may not use this port) with the
    /// exception vector as the data byte, the CPU's exception frame on the
    /// exception stack.
    Exception = 0x13,
}

/// An `out` to a port this protocol does not define.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the guest wrote to I/O port {0:#x}, which the protocol does not define")]
pub struct UnknownPort(pub u16);

impl Port {
    /// The ports guest code (CPL3) may use.
    pub const fn guest_ports() -> [Port; 3] {
        [Port::Done, Port::OutCall, Port::Abort]
    }
}

impl TryFrom<u16> for Port {
    type Error = UnknownPort;

    fn try_from(value: u16) -> Result<Self, Self::Error> {
        match value {
            0x10 => Ok(Port::Done),
            0x11 => Ok(Port::OutCall),
            0x12 => Ok(Port::Abort),
            0x13 => Ok(Port::Exception),
            other => Err(UnknownPort(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_round_trip_and_unknown_is_an_error() {
        for port in [Port::Done, Port::OutCall, Port::Abort, Port::Exception] {
            assert_eq!(Port::try_from(port as u16), Ok(port));
        }
        assert_eq!(Port::try_from(0x80), Err(UnknownPort(0x80)));
        assert!(Port::guest_ports().iter().all(|p| (*p as u16) < 0x100));
    }
}
