//! The wire's tests: every message round-trips, caps and bad values are
//! refused both ways, and decode never panics on arbitrary bytes.

use super::*;
use proptest::prelude::*;

fn frame(w: u32, h: u32) -> Frame {
    Frame {
        page: 2,
        width: 100,
        height: 50,
        rect: Rect { x: 10, y: 5, w, h },
        format: PixelFormat::Rgba8,
        pixels: (0..w * h * 4).map(|i| (i % 251) as u8).collect(),
    }
}

fn all_inputs() -> Vec<InputEvent> {
    let k = |key| {
        InputEvent::Key(KeyEvent {
            key,
            modifiers: Modifiers {
                ctrl: true,
                alt: false,
                shift: true,
            },
        })
    };
    vec![
        k(Key::Char('é')),
        k(Key::Enter),
        k(Key::Tab),
        k(Key::Backspace),
        k(Key::Escape),
        k(Key::Up),
        k(Key::Down),
        k(Key::Left),
        k(Key::Right),
        k(Key::Home),
        k(Key::End),
        k(Key::PageUp),
        k(Key::PageDown),
        k(Key::Insert),
        k(Key::Delete),
        k(Key::F(12)),
        InputEvent::Text("ls -l\n".into()),
        InputEvent::Scroll { dx: -3, dy: 7 },
        InputEvent::PageChange { page: 9 },
        InputEvent::Resize {
            width: 800,
            height: 600,
        },
        InputEvent::Button {
            page: 0,
            x: 0,
            y: MAX_DIM - 1,
            button: MouseButton::Left,
            down: true,
        },
        InputEvent::Button {
            page: 3,
            x: 17,
            y: 4,
            button: MouseButton::Middle,
            down: false,
        },
        InputEvent::Button {
            page: 0,
            x: 640,
            y: 480,
            button: MouseButton::Right,
            down: true,
        },
        InputEvent::Motion {
            page: 0,
            x: 12,
            y: 34,
        },
    ]
}

#[test]
fn every_message_round_trips_and_reports_its_length() {
    let mut msgs = vec![
        Message::Frame(frame(3, 2)),
        Message::Status("finished: clean".into()),
        Message::Pages(3),
        Message::Title("https://example.org/ — Example".into()),
        Message::Closed,
        Message::Presented { frames: 7 },
    ];
    msgs.extend(all_inputs().into_iter().map(Message::Input));
    for msg in msgs {
        let mut bytes = encode(&msg).unwrap();
        let len = bytes.len();
        bytes.extend_from_slice(&[0xAA; 3]); // the next message's bytes
        let (back, used) = decode(&bytes).unwrap();
        assert_eq!(back, msg);
        assert_eq!(used, len);
    }
}

#[test]
fn stream_reader_reads_consecutive_messages_then_eof() {
    let mut bytes = encode(&Message::Status("a".into())).unwrap();
    bytes.extend(encode(&Message::Frame(frame(1, 1))).unwrap());
    let mut cursor = std::io::Cursor::new(bytes);
    assert_eq!(
        read_message(&mut cursor).unwrap(),
        Some(Message::Status("a".into()))
    );
    assert_eq!(
        read_message(&mut cursor).unwrap(),
        Some(Message::Frame(frame(1, 1)))
    );
    assert!(read_message(&mut cursor).unwrap().is_none());
}

#[test]
fn short_buffer_is_incomplete_not_an_error_of_content() {
    let bytes = encode(&Message::Frame(frame(4, 4))).unwrap();
    for cut in 0..bytes.len() {
        assert!(matches!(
            decode(&bytes[..cut]),
            Err(WireError::Incomplete { .. })
        ));
    }
}

#[test]
fn oversized_length_prefix_is_refused_before_reading_the_body() {
    let len = u32::try_from(MAX_BODY_BYTES + 1).unwrap();
    let bytes = len.to_le_bytes();
    assert!(matches!(decode(&bytes), Err(WireError::BadLength { .. })));
    let mut reader = std::io::Cursor::new(bytes.to_vec());
    assert!(matches!(
        read_message(&mut reader),
        Err(WireError::BadLength { .. })
    ));
}

#[test]
fn frame_outside_its_page_is_refused_both_ways() {
    let mut f = frame(95, 2); // x 10 + 95 > width 100
    assert!(matches!(
        encode_frame(&f),
        Err(WireError::RectOutsidePage { .. })
    ));
    f.rect.w = 90;
    f.pixels.truncate(90 * 2 * 4);
    let mut bytes = encode_frame(&f).unwrap();
    bytes[4 + 1 + 12..4 + 1 + 16].copy_from_slice(&11u32.to_le_bytes()); // x = 11
    assert!(matches!(
        decode(&bytes),
        Err(WireError::RectOutsidePage { .. })
    ));
}

#[test]
fn frame_with_wrong_pixel_count_or_huge_page_is_refused() {
    let mut f = frame(2, 2);
    f.pixels.pop();
    assert!(matches!(
        encode_frame(&f),
        Err(WireError::PixelCount { .. })
    ));
    let mut f = frame(2, 2);
    f.width = MAX_DIM + 1;
    assert!(matches!(
        encode_frame(&f),
        Err(WireError::OutOfRange { field: "width", .. })
    ));
}

#[test]
fn overlong_status_and_text_are_refused() {
    let long = "x".repeat(MAX_STATUS_BYTES + 1);
    assert!(matches!(
        encode(&Message::Status(long)),
        Err(WireError::TooLong { .. })
    ));
    let long = "x".repeat(MAX_TEXT_BYTES + 1);
    let bytes = finish(TAG_TEXT, long.as_bytes());
    assert!(matches!(decode(&bytes), Err(WireError::TooLong { .. })));
}

#[test]
fn control_characters_and_unknown_keys_are_refused() {
    let mut body = vec![0u8];
    body.extend_from_slice(&0x1bu32.to_le_bytes());
    body.push(0);
    assert!(matches!(
        decode(&finish(TAG_KEY, &body)),
        Err(WireError::BadKey { .. })
    ));
    let mut body = vec![16u8];
    body.extend_from_slice(&13u32.to_le_bytes());
    body.push(0);
    assert!(matches!(
        decode(&finish(TAG_KEY, &body)),
        Err(WireError::BadKey { .. })
    ));
    assert!(matches!(
        decode(&finish(99, &[])),
        Err(WireError::UnknownTag(99))
    ));
}

#[test]
fn unknown_buttons_and_button_states_and_overlong_titles_are_refused() {
    let press = |button: u8, down: u8| {
        let mut body = Vec::new();
        for v in [0u32, 10, 20] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(&[button, down]);
        finish(TAG_BUTTON, &body)
    };
    assert!(decode(&press(2, 1)).is_ok());
    assert!(matches!(
        decode(&press(3, 1)),
        Err(WireError::OutOfRange {
            field: "button",
            ..
        })
    ));
    assert!(matches!(
        decode(&press(0, 2)),
        Err(WireError::OutOfRange {
            field: "button state",
            ..
        })
    ));
    let long = "x".repeat(MAX_STATUS_BYTES + 1);
    assert!(matches!(
        decode(&finish(TAG_TITLE, long.as_bytes())),
        Err(WireError::TooLong { field: "title", .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes);
        let _ = read_message(&mut std::io::Cursor::new(&bytes));
    }

    #[test]
    fn decode_never_panics_on_plausible_headers(
        tag in prop_oneof![Just(TAG_FRAME), Just(TAG_STATUS), Just(TAG_PAGES), Just(TAG_KEY), Just(TAG_TEXT),
                           Just(TAG_SCROLL), Just(TAG_PAGE_CHANGE), Just(TAG_RESIZE), Just(TAG_CLOSED), Just(TAG_PRESENTED),
                           Just(TAG_TITLE), Just(TAG_BUTTON), Just(TAG_MOTION), any::<u8>()],
        fields in proptest::collection::vec(any::<u32>(), 0..8),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
        len_delta in -4i64..4,
    ) {
        let mut body = vec![tag];
        for f in &fields {
            body.extend_from_slice(&f.to_le_bytes());
        }
        body.extend_from_slice(&tail);
        let len = i64::try_from(body.len()).unwrap() + len_delta;
        let mut bytes = u32::try_from(len.max(0)).unwrap().to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        if let Ok((msg, used)) = decode(&bytes) {
            prop_assert!(used <= bytes.len());
            // What decodes must encode back to the same bytes.
            prop_assert_eq!(encode(&msg).unwrap(), bytes[..used].to_vec());
        }
    }

    #[test]
    fn valid_frames_round_trip(x in 0u32..50, y in 0u32..20, w in 1u32..50, h in 1u32..30) {
        let f = Frame {
            page: 0, width: 100, height: 50,
            rect: Rect { x, y, w, h },
            format: PixelFormat::Rgba8,
            pixels: vec![7; usize::try_from(w * h * 4).unwrap()],
        };
        let bytes = encode_frame(&f).unwrap();
        let (back, used) = decode(&bytes).unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(back, Message::Frame(f));
    }
}
