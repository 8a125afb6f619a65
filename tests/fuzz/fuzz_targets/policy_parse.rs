//! The policy parser and everything downstream of a load: a policy file
//! from arbitrary bytes loads or is refused with diagnostics, never panics,
//! and a loaded one evaluates and explains requests.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vitrine_tests::fuzz_harness::policy_parse(data);
});
