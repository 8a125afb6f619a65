//! Links and the small CLI verbs, over a private bus with the shipped
//! policy. There is no egress tunnel yet, so a link the policy sandboxes
//! must end at once with a verdict that says so (never hang); a dangerous
//! scheme is denied by its rule; `vitrine ps` lists both, and `vitrine
//! cancel` on a finished task is harmless. No guest image is needed.

mod dbus_support;

use std::time::{Duration, Instant};

use dbus_support::{example_policy, loud, text, tool_or_skip, PrivateBus};

#[test]
fn sandboxed_link_ends_with_a_clear_verdict_and_a_dangerous_one_is_denied() {
    let test = "sandboxed_link_ends_with_a_clear_verdict_and_a_dangerous_one_is_denied";
    if !tool_or_skip(test, "dbus-daemon", "dbus") {
        return;
    }
    // Arrange
    let bus = PrivateBus::start(
        &[
            "--policy-dir".as_ref(),
            example_policy().as_os_str(),
            "--no-windows".as_ref(),
        ],
        &[],
    );

    // Act
    let started = Instant::now();
    let web = bus.vitrine(&["url".as_ref(), "https://example.org/report".as_ref()]);
    let web_took = started.elapsed();
    let file = bus.vitrine(&["url".as_ref(), "javascript:alert(1)".as_ref()]);
    let ps = bus.vitrine(&["ps".as_ref()]);
    let cancel = bus.vitrine(&["cancel".as_ref(), "1".as_ref()]);

    // Assert
    loud(&format!("{test}: the web link ended in {web_took:?}"));
    let web_out = String::from_utf8_lossy(&web.stdout);
    assert_eq!(web.status.code(), Some(1), "{}", text(&web));
    assert!(
        web_out.contains("decision  sandbox(web), by rule `web`"),
        "{}",
        text(&web)
    );
    assert!(
        web_out.contains("verdict   failed: links need the host's egress tunnel"),
        "{}",
        text(&web)
    );
    assert!(web_took < Duration::from_secs(30), "{web_took:?}");
    assert_eq!(file.status.code(), Some(1), "{}", text(&file));
    assert!(
        String::from_utf8_lossy(&file.stderr).contains("rule `dangerous-schemes`"),
        "{}",
        text(&file)
    );
    let listed = String::from_utf8_lossy(&ps.stdout);
    assert!(ps.status.success(), "{}", text(&ps));
    assert!(
        listed.contains("open-uri") && listed.contains("failed: links need"),
        "{}",
        text(&ps)
    );
    assert!(
        listed.contains("denied: by rule `dangerous-schemes`"),
        "{}",
        text(&ps)
    );
    assert!(cancel.status.success(), "{}", text(&cancel));
}
