//! Every profile field, its default, and cross-file profile checks.

mod fixture;

use fixture::*;
use std::time::Duration;
use vitrine_policy::pattern::{Endpoint, MimePattern};
use vitrine_policy::{Clipboard, DisplayLimits, Egress, ExportMode, Preload, Profile};

fn profile_from(body: &str) -> Profile {
    let text = format!("{body}\n[[rule]]\naction = \"open-file\"\nsandbox = \"p\"\n");
    let policy = load(&[("10-p.toml", &text)]);
    (**policy.profile("p").expect("profile p")).clone()
}

#[test]
fn every_profile_field_is_parsed_into_its_typed_value() {
    let p = profile_from(
        r#"
[profile.p]
description = "all fields"
memory_mib = 2048
vcpus = 4
time_limit = "9m30s"
display = { max_width = 2560, max_height = 1440, max_fps = 60 }
egress = ["*.wikipedia.org:443", "example.org:8443", "[2001:db8::1]:443"]
clipboard = "both"

[profile.p.export]
mode = "allow"
types = ["image/*", "application/pdf"]
max_size = "20MiB"
flatten = false
"#,
    );
    assert_eq!(p.description.as_deref(), Some("all fields"));
    assert_eq!((p.memory_mib, p.vcpus), (2048, 4));
    assert_eq!(p.time_limit, Duration::from_secs(570));
    assert_eq!(
        p.display,
        DisplayLimits {
            max_width: 2560,
            max_height: 1440,
            max_fps: 60
        }
    );
    let Egress::Allow(list) = &p.egress else {
        panic!("egress should be an allowlist");
    };
    assert_eq!(list.len(), 3);
    assert!(p.egress.allows("en.wikipedia.org", 443));
    assert!(!p.egress.allows("wikipedia.org", 443));
    assert!(p.egress.allows("example.org", 8443));
    assert!(!p.egress.allows("example.org", 443));
    assert!(p.egress.allows("[2001:db8::1]", 443));
    assert_eq!(list[1], Endpoint::parse("example.org:8443").unwrap());
    assert_eq!(p.clipboard, Clipboard::Both);
    assert_eq!(p.export.mode, ExportMode::Allow);
    assert_eq!(
        p.export.types,
        vec![
            MimePattern::parse("image/*").unwrap(),
            MimePattern::parse("application/pdf").unwrap()
        ]
    );
    assert_eq!(p.export.max_bytes, 20 << 20);
    assert!(!p.export.flatten);
}

#[test]
fn omitted_fields_take_the_strict_values() {
    let p = profile_from("[profile.p]\nmemory_mib = 1024\n");
    let strict = Profile::strict();
    assert_eq!(p.memory_mib, 1024);
    assert_eq!(p.vcpus, strict.vcpus);
    assert_eq!(p.time_limit, strict.time_limit);
    assert_eq!(p.display, strict.display);
    assert_eq!(p.egress, Egress::None);
    assert_eq!(p.clipboard, Clipboard::None);
    assert_eq!(p.export, strict.export);
    assert_eq!(p.preload, Preload::None);
}

#[test]
fn clipboard_and_export_modes_take_each_value() {
    for (text, want) in [
        ("none", Clipboard::None),
        ("to-guest", Clipboard::ToGuest),
        ("both", Clipboard::Both),
    ] {
        assert_eq!(
            profile_from(&format!("[profile.p]\nclipboard = \"{text}\"")).clipboard,
            want
        );
    }
    let deny = profile_from("[profile.p]\nexport = { mode = \"deny\" }");
    assert_eq!(deny.export.mode, ExportMode::Deny);
    let ask = profile_from(
        "[profile.p]\nexport = { mode = \"ask\", types = [\"*/*\"], max_size = \"1GiB\" }",
    );
    assert_eq!(
        (ask.export.mode, ask.export.max_bytes),
        (ExportMode::Ask, 1 << 30)
    );
    assert!(ask.export.flatten, "flatten defaults to true");
}

#[test]
fn egress_none_and_empty_list_both_mean_no_network() {
    assert_eq!(
        profile_from("[profile.p]\negress = \"none\"").egress,
        Egress::None
    );
    assert_eq!(
        profile_from("[profile.p]\negress = []").egress,
        Egress::None
    );
}

#[test]
fn dotted_inline_and_table_forms_are_equivalent() {
    let table = profile_from("[profile.p]\n[profile.p.display]\nmax_width = 800\nmax_fps = 5\n");
    let inline = profile_from("[profile.p]\ndisplay = { max_width = 800, max_fps = 5 }\n");
    let dotted = profile_from("[profile.p]\ndisplay.max_width = 800\ndisplay.max_fps = 5\n");
    assert_eq!(table, inline);
    assert_eq!(inline, dotted);
}

#[test]
fn profile_defined_in_two_files_is_an_error_at_the_second() {
    let d = load_err(&[
        ("10-a.toml", "[profile.doc]\nvcpus = 1\n"),
        (
            "20-b.toml",
            "\n[profile.doc]\nvcpus = 2\n[[rule]]\naction = \"open-file\"\nsandbox = \"doc\"\n",
        ),
    ]);
    let text = d.to_string();
    assert!(
        text.contains("20-b.toml:2:10: error: profile `doc` is already defined"),
        "{text}"
    );
    assert!(text.contains("10-a.toml:1"), "{text}");
}

#[test]
fn rule_names_must_be_unique_across_files() {
    let d = load_err(&[
        (
            "10-a.toml",
            "[[rule]]\nname = \"x\"\naction = \"open-uri\"\ndecision = \"deny\"\n",
        ),
        (
            "20-b.toml",
            "[[rule]]\nname = \"x\"\naction = \"open-file\"\ndecision = \"deny\"\n",
        ),
    ]);
    assert!(
        d.to_string()
            .contains("20-b.toml:2:8: error: rule name `x` is already used"),
        "{d}"
    );
}

#[test]
fn unused_profile_is_a_warning_not_an_error() {
    let policy = load(&[(
        "10-a.toml",
        "[profile.spare]\n[[rule]]\naction = \"open-file\"\ndecision = \"deny\"\n",
    )]);
    let w = policy.warnings().to_string();
    assert!(
        w.contains("10-a.toml:1:10: warning: profile `spare` is not used by any rule"),
        "{w}"
    );
}

#[test]
fn profiles_are_visible_from_rules_in_earlier_files() {
    // Profiles form one namespace; order only matters for rules.
    let policy = load(&[
        (
            "10-rules.toml",
            "[[rule]]\naction = \"open-file\"\nsandbox = \"late\"\n",
        ),
        ("90-profiles.toml", "[profile.late]\nvcpus = 3\n"),
    ]);
    let d = policy.evaluate(&open_file("text/plain", "/a", LOCAL));
    assert_eq!(d.verdict.profile().map(|p| p.vcpus), Some(3));
}

#[test]
fn the_safe_copy_ocr_language_is_a_tesseract_list_or_nothing() {
    let lang = |value: &str| {
        profile_from(&format!(
            "[profile.p.export]\nmode = \"ask\"\ntypes = [\"application/pdf\"]\nmax_size = \"1MiB\"\nocr = {value}\n"
        ))
            .export
            .ocr
    };

    assert_eq!(lang("\"eng+deu\"").as_deref(), Some("eng+deu"));
    assert_eq!(lang("false"), None);
    assert_eq!(
        profile_from("[profile.p]\nvcpus = 1\n").export.ocr,
        None,
        "no text layer unless asked"
    );
    for bad in ["\"../eng\"", "\"eng+\"", "true"] {
        let d = load_err(&[(
            "10-p.toml",
            &format!(
                "[profile.p.export]\nmode = \"ask\"\ntypes = [\"application/pdf\"]\nmax_size = \"1MiB\"\nocr = {bad}\n[[rule]]\naction = \"open-file\"\nsandbox = \"p\"\n"
            ),
        )]);
        let text = d.to_string();
        assert!(text.contains("10-p.toml:5:"), "{bad}: {text}");
        assert!(text.contains("export.ocr"), "{bad}: {text}");
        assert!(
            text.contains("eng"),
            "{bad}: the fix names a language: {text}"
        );
    }
}

#[test]
fn preload_names_the_application_the_template_starts() {
    let office = profile_from("[profile.p]\npreload = \"office\"\n");
    let web = profile_from("[profile.p]\npreload = \"web\"\n");
    let none = profile_from("[profile.p]\npreload = \"none\"\n");
    let unset = profile_from("[profile.p]\nvcpus = 1\n");

    assert_eq!(office.preload, Preload::Office);
    assert_eq!(web.preload, Preload::Web);
    assert!(web.fields().contains(&("preload", "web".to_owned())));
    assert!(office.fields().contains(&("preload", "office".to_owned())));
    assert_eq!(none.preload, Preload::None);
    assert_eq!(
        unset.preload,
        Preload::None,
        "nothing preloads unless asked"
    );
    assert_eq!(Profile::strict().preload, Preload::None);
}

#[test]
fn a_preload_that_is_not_office_web_or_none_names_its_line_and_the_fix() {
    for bad in ["\"libreoffice\"", "\"\"", "true"] {
        let d = load_err(&[(
            "10-p.toml",
            &format!(
                "[profile.p]\nvcpus = 1\npreload = {bad}\n[[rule]]\naction = \"open-file\"\nsandbox = \"p\"\n"
            ),
        )]);

        let text = d.to_string();
        assert!(text.contains("10-p.toml:3:11: error:"), "{bad}: {text}");
        assert!(text.contains("`preload`"), "{bad}: {text}");
        assert!(
            text.contains("preload = \"office\""),
            "{bad}: the fix names the values: {text}"
        );
    }
}
