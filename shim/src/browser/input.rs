//! The viewer's input as DevTools calls into the tab: mouse buttons and
//! motion at page pixels (the viewport is drawn 1:1), the wheel at the
//! pointer, text as typed text, and named keys as key events.

use serde_json::{json, Value};

use crate::protocol::{InputEvent, Key, Modifiers, MouseButton};

/// A wheel line, in CSS pixels.
pub const WHEEL_LINE: i32 = 40;

/// The calls (method, params) for `event`; `pointer` is where the mouse
/// last was, which the wheel uses and buttons and motion move. A resize
/// or page change is the tab's own business: no calls.
pub fn calls(event: &InputEvent, pointer: &mut (u32, u32)) -> Vec<(&'static str, Value)> {
    const MOUSE: &str = "Input.dispatchMouseEvent";
    match event {
        InputEvent::Button {
            x, y, button, down, ..
        } => {
            *pointer = (*x, *y);
            let button = match button {
                MouseButton::Left => "left",
                MouseButton::Middle => "middle",
                MouseButton::Right => "right",
            };
            let kind = if *down {
                "mousePressed"
            } else {
                "mouseReleased"
            };
            vec![(
                MOUSE,
                json!({ "type": kind, "x": x, "y": y, "button": button, "clickCount": 1 }),
            )]
        }
        InputEvent::Motion { x, y, .. } => {
            *pointer = (*x, *y);
            vec![(MOUSE, json!({ "type": "mouseMoved", "x": x, "y": y }))]
        }
        InputEvent::Scroll { dx, dy } => {
            let (x, y) = *pointer;
            vec![(
                MOUSE,
                json!({ "type": "mouseWheel", "x": x, "y": y,
                        "deltaX": dx.saturating_mul(WHEEL_LINE),
                        "deltaY": dy.saturating_mul(WHEEL_LINE) }),
            )]
        }
        InputEvent::Text(text) => vec![("Input.insertText", json!({ "text": text }))],
        InputEvent::Key(key) => match key.key {
            Key::Char(c) if !key.modifiers.ctrl && !key.modifiers.alt => {
                vec![("Input.insertText", json!({ "text": c.to_string() }))]
            }
            other => key_events(other, key.modifiers)
                .into_iter()
                .map(|p| ("Input.dispatchKeyEvent", p))
                .collect(),
        },
        InputEvent::Resize { .. } | InputEvent::PageChange { .. } => Vec::new(),
    }
}

/// The DevTools key events for a key that is not text: a down and an up.
/// Enter's down carries its character ("\r"), as a real keyboard's does:
/// without it the page sees no keypress, and Enter in a form's field does
/// not submit it.
fn key_events(key: Key, held: Modifiers) -> Vec<Value> {
    let Some((name, code)) = key_name(key) else {
        return Vec::new();
    };
    let modifiers = u8::from(held.alt) | (u8::from(held.ctrl) << 1) | (u8::from(held.shift) << 3);
    let down = if key == Key::Enter && !held.ctrl && !held.alt {
        json!({ "type": "keyDown", "key": name, "code": name, "windowsVirtualKeyCode": code,
                "modifiers": modifiers, "text": "\r", "unmodifiedText": "\r" })
    } else {
        json!({ "type": "rawKeyDown", "key": name, "code": name,
                "windowsVirtualKeyCode": code, "modifiers": modifiers })
    };
    let up = json!({ "type": "keyUp", "key": name, "code": name,
                     "windowsVirtualKeyCode": code, "modifiers": modifiers });
    vec![down, up]
}

fn key_name(key: Key) -> Option<(&'static str, u32)> {
    Some(match key {
        Key::Enter => ("Enter", 13),
        Key::Tab => ("Tab", 9),
        Key::Backspace => ("Backspace", 8),
        Key::Escape => ("Escape", 27),
        Key::Up => ("ArrowUp", 38),
        Key::Down => ("ArrowDown", 40),
        Key::Left => ("ArrowLeft", 37),
        Key::Right => ("ArrowRight", 39),
        Key::Home => ("Home", 36),
        Key::End => ("End", 35),
        Key::PageUp => ("PageUp", 33),
        Key::PageDown => ("PageDown", 34),
        Key::Insert => ("Insert", 45),
        Key::Delete => ("Delete", 46),
        Key::F(_) | Key::Char(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buttons_and_motion_move_the_pointer_the_wheel_uses() {
        let mut pointer = (0, 0);
        let press = calls(
            &InputEvent::Button {
                page: 0,
                x: 120,
                y: 48,
                button: MouseButton::Left,
                down: true,
            },
            &mut pointer,
        );
        assert_eq!(press[0].1["type"], "mousePressed");
        assert_eq!(
            (press[0].1["x"].clone(), press[0].1["y"].clone()),
            (json!(120), json!(48))
        );
        let wheel = calls(&InputEvent::Scroll { dx: 0, dy: 3 }, &mut pointer);
        assert_eq!(wheel[0].1["x"], 120);
        assert_eq!(wheel[0].1["deltaY"], 3 * WHEEL_LINE);
        assert!(calls(
            &InputEvent::Resize {
                width: 1,
                height: 1
            },
            &mut pointer
        )
        .is_empty());
    }

    #[test]
    fn enter_is_sent_with_its_character_and_other_keys_without() {
        let plain = Modifiers::default();
        let enter = key_events(Key::Enter, plain);
        assert_eq!(enter.len(), 2);
        assert_eq!(enter[0]["type"], "keyDown");
        assert_eq!(enter[0]["text"], "\r");
        assert_eq!(enter[1]["type"], "keyUp");
        let ctrl_enter = key_events(
            Key::Enter,
            Modifiers {
                ctrl: true,
                ..plain
            },
        );
        assert_eq!(ctrl_enter[0]["type"], "rawKeyDown");
        assert_eq!(ctrl_enter[0]["modifiers"], 2);
        assert!(ctrl_enter[0].get("text").is_none());
        let tab = key_events(Key::Tab, plain);
        assert_eq!(tab[0]["type"], "rawKeyDown");
        assert_eq!(tab[0]["windowsVirtualKeyCode"], 9);
        assert!(tab[0].get("text").is_none());
        assert!(key_events(Key::Char('a'), plain).is_empty());
    }
}
