//! The Blueprint jobs' ABI-encoded arguments (the types `faas-blueprint-lib`
//! extracts), decoded both ways the SDK may encode them; a deploy's
//! definition is then parsed and checked as the job does.
#![no_main]

use alloy_primitives::Bytes;
use alloy_sol_types::SolValue;
use faas_common::FunctionDefinition;
use libfuzzer_sys::fuzz_target;

type ExecuteArgs = (String, Vec<String>, Vec<String>, Bytes);
type DeployArgs = (Bytes,);
type InvokeArgs = (String, Bytes);

fuzz_target!(|data: &[u8]| {
    let _ = <ExecuteArgs as SolValue>::abi_decode(data);
    let _ = <ExecuteArgs as SolValue>::abi_decode_params(data);
    let _ = <InvokeArgs as SolValue>::abi_decode(data);
    let _ = <InvokeArgs as SolValue>::abi_decode_params(data);
    for decoded in [
        <DeployArgs as SolValue>::abi_decode(data),
        <DeployArgs as SolValue>::abi_decode_params(data),
    ] {
        if let Ok((definition,)) = decoded {
            if let Ok(def) = serde_json::from_slice::<FunctionDefinition>(&definition) {
                let _ = faas_common::validate::definition(&def);
            }
        }
    }
});
