//! Which states a sandbox may share with others as images, and under which
//! key (the image cache itself is [`crate::vm::images`]).
//!
//! The rule: a state is shared only if every sandbox of the configuration
//! reaches it the same way. The host's requests are the same for all of
//! them; what can differ is the host's answers to the guest's out-calls.
//! So a state is shared only if, on the way to it, the guest asked nothing
//! whose answer can differ ([`makes_state_private`]).

use hyperlight_wasm_protocol::message::OutCall;
use hyperlight_wasm_protocol::wire;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::vm::Vm;
use crate::vm::images::ImageKey;
use crate::vm::snapshot::Snapshot;

/// Whether answering `call` can make the state the guest reaches differ
/// from what another sandbox reaches by the same requests: every out-call
/// but the copy of the module's own bytes (a host function's result, the
/// time, random bytes, even a print, whose function may fail).
pub(crate) fn makes_state_private(call: &OutCall) -> bool {
    match call {
        // Its answer is always the same: the time that passed is only seen
        // through the clock, which does make the state private.
        OutCall::ArtifactBuffer { .. } | OutCall::Sleep { .. } => false,
        OutCall::CallHost { .. }
        | OutCall::CallComponentHost { .. }
        | OutCall::Print { .. }
        | OutCall::Args
        | OutCall::Environ
        | OutCall::ReadStdin { .. }
        | OutCall::Fs(_)
        | OutCall::Clock { .. }
        | OutCall::Random { .. } => true,
    }
}

/// The image key of the state after loading the module (or component)
/// whose artifact hash is `hash`, linked as `link` says (a module: the host
/// functions' signatures and the exports its ABI names; a component: the
/// imports linked to the host), from the post-runtime image `runtime` of
/// `vm` (`None` when `vm`'s states are never shared).
pub(crate) fn module_key(
    vm: &Vm,
    runtime: &Snapshot,
    hash: &[u8; 32],
    link: &impl Serialize,
) -> Result<Option<ImageKey>> {
    let signatures = wire::encode_to_vec(link).map_err(|e| Error::RequestTooLarge {
        reason: e.to_string(),
    })?;
    let mut digest = Sha256::new();
    digest.update(runtime.id().to_le_bytes());
    digest.update(hash);
    digest.update(&signatures);
    Ok(vm.image_key(Some(digest.finalize().into())))
}

#[cfg(test)]
mod tests {
    use hyperlight_wasm_protocol::message::Value;

    use super::*;

    #[test]
    fn only_the_artifact_copy_keeps_a_state_shareable() {
        assert!(!makes_state_private(&OutCall::ArtifactBuffer {
            addr: 0,
            len: 0
        }));
        assert!(!makes_state_private(&OutCall::Sleep { ns: 1 }));
        for call in [
            OutCall::CallHost {
                module: String::from("env"),
                function: String::from("f"),
                args: vec![Value::I32(1)],
            },
            OutCall::Print {
                text: String::new(),
                stderr: false,
            },
            OutCall::Args,
            OutCall::Environ,
            OutCall::ReadStdin { max: 1 },
            OutCall::Clock { realtime: false },
            OutCall::Random { len: 1 },
        ] {
            assert!(makes_state_private(&call), "{call:?}");
        }
    }
}
