//! Function definitions as the API receives them: JSON, then every check
//! that needs only the definition. No panic; an accepted definition has a
//! clean name, a well-formed handler and bounded environment.
#![no_main]

use faas_common::validate;
use faas_common::FunctionDefinition;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(def) = serde_json::from_slice::<FunctionDefinition>(data) else {
        return;
    };
    if validate::definition(&def).is_ok() {
        assert!(!def.name.is_empty() && def.name.len() <= 64);
        assert!(!def.name.contains('/'));
        assert!(def.env.len() <= validate::MAX_ENV_VARS);
        assert!(!def.handler.trim().is_empty());
    }
});
