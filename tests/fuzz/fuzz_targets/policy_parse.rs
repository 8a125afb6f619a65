//! Fuzz the policy parser and everything downstream of a load: a policy
//! file from arbitrary bytes must load or be refused with diagnostics,
//! never panic, and a loaded one must evaluate and explain any request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitrine_policy::{FileFacts, Origin, PolicySet, Request, SourceFile};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let file = SourceFile::new("50-fuzz.toml", text.as_ref());
    match PolicySet::from_sources(vec![file], None) {
        Ok(policy) => {
            let reqs = [
                Request::open_file(FileFacts {
                    mime: "application/pdf".into(),
                    name: Some("a.tar.gz".into()),
                    path: Some("/home/a/Downloads/x.pdf".into()),
                    origin: Origin { quarantined: true, downloads: false },
                }),
                Request::open_uri("https://a.b.example.org/x"),
            ];
            for req in reqs.into_iter().flatten() {
                let _ = policy.evaluate(&req);
                let _ = policy.explain(&req).to_string();
            }
        }
        Err(diags) => {
            assert!(diags.has_errors());
            let _ = diags.to_string();
        }
    }
});
