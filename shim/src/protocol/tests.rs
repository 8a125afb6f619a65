use std::io::Cursor;

use super::*;

use super::samples;

#[test]
fn every_message_round_trips_through_a_stream() {
    // Arrange
    let guest = samples::guest_messages();
    let host = samples::host_messages();
    let mut gw = FrameWriter::new(Vec::new());
    let mut hw = FrameWriter::new(Vec::new());

    // Act
    for m in &guest {
        gw.send(m).unwrap();
    }
    for m in &host {
        hw.send(m).unwrap();
    }
    let mut gr = FrameReader::<_, GuestMessage>::new(Cursor::new(gw.into_inner()));
    let mut hr = FrameReader::<_, HostMessage>::new(Cursor::new(hw.into_inner()));
    let guest_back: Vec<_> = std::iter::from_fn(|| gr.recv().unwrap()).collect();
    let host_back: Vec<_> = std::iter::from_fn(|| hr.recv().unwrap()).collect();

    // Assert
    assert_eq!(guest_back, guest);
    assert_eq!(host_back, host);
}

#[test]
fn frame_prefix_is_little_endian_payload_length_and_payload_starts_with_version() {
    let frame = encode_frame(&HostMessage::Shutdown).unwrap();

    let len = u32::from_le_bytes(frame[..4].try_into().unwrap());

    assert_eq!(usize::try_from(len).unwrap(), frame.len() - 4);
    assert_eq!(&frame[4..6], &PROTOCOL_VERSION.to_le_bytes());
}

#[test]
fn other_protocol_version_is_refused_before_decoding() {
    let mut payload = encode_payload(&HostMessage::Shutdown).unwrap();
    payload[0] = 99;

    let err = decode_payload::<HostMessage>(&payload).unwrap_err();

    assert!(matches!(err, CodecError::UnsupportedVersion { got: 99 }));
}

#[test]
fn oversized_length_prefix_is_refused_without_reading_the_body() {
    let mut bytes = (MAX_FRAME_BYTES + 1).to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0; 16]);
    let mut reader = FrameReader::<_, HostMessage>::new(Cursor::new(bytes));

    let err = reader.recv().unwrap_err();

    assert!(matches!(err, FramingError::FrameTooLarge(n) if n == MAX_FRAME_BYTES + 1));
    assert_eq!(reader.buffer_capacity(), 0);
}

#[test]
fn announced_large_frame_that_ends_early_allocates_only_what_arrived() {
    // A peer that claims the maximum and sends 10 bytes must not make us
    // reserve 32 MiB.
    let mut bytes = MAX_FRAME_BYTES.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[1; 10]);
    let mut reader = FrameReader::<_, HostMessage>::new(Cursor::new(bytes));

    let err = reader.recv().unwrap_err();

    assert!(matches!(
        err,
        FramingError::Truncated { got: 10, expected } if expected == max_len()
    ));
    assert!(
        reader.buffer_capacity() < 64 * 1024,
        "{}",
        reader.buffer_capacity()
    );
}

fn max_len() -> usize {
    usize::try_from(MAX_FRAME_BYTES).unwrap()
}

#[test]
fn clean_close_between_frames_is_none_and_inside_prefix_is_truncated() {
    let mut empty = FrameReader::<_, HostMessage>::new(Cursor::new(Vec::new()));
    let mut half = FrameReader::<_, HostMessage>::new(Cursor::new(vec![5, 0]));

    assert!(empty.recv().unwrap().is_none());
    assert!(matches!(
        half.recv().unwrap_err(),
        FramingError::Truncated {
            got: 2,
            expected: 4
        }
    ));
}

#[test]
fn frame_whose_rect_leaves_the_page_is_refused_on_both_sides() {
    let mut frame = samples::frame();
    frame.rect.x = 9; // 9 + 2 > width 10
    let msg = GuestMessage::Frame(frame);

    let send_err = encode_frame(&msg).unwrap_err();
    // Bypass the sender's check to see that the receiver checks too.
    let mut payload = PROTOCOL_VERSION.to_le_bytes().to_vec();
    payload.extend(postcard::to_allocvec(&msg).unwrap());
    let recv_err = decode_payload::<GuestMessage>(&payload).unwrap_err();

    assert!(matches!(
        send_err,
        CodecError::Invalid(MessageError::RectOutsidePage { .. })
    ));
    assert!(matches!(
        recv_err,
        CodecError::Invalid(MessageError::RectOutsidePage { .. })
    ));
}

#[test]
fn frame_with_wrong_pixel_count_is_refused() {
    let mut frame = samples::frame();
    frame.pixels.pop();

    let err = frame.validate().unwrap_err();

    assert_eq!(
        err,
        MessageError::PixelLength {
            expected: 24,
            got: 23
        }
    );
}

#[test]
fn rect_overflowing_u32_is_outside_not_a_panic() {
    let mut frame = samples::frame();
    frame.rect.x = u32::MAX;

    assert!(matches!(
        frame.validate(),
        Err(MessageError::RectOutsidePage { .. })
    ));
}

#[test]
fn dimensions_above_max_dim_are_refused() {
    let mut frame = samples::frame();
    frame.width = MAX_DIM + 1;

    assert!(matches!(
        frame.validate(),
        Err(MessageError::OutOfRange { field: "width", .. })
    ));
}

#[test]
fn path_like_names_are_refused() {
    for bad in ["", ".", "..", "a/b", "../etc/passwd", "x\0y"] {
        let mut task = samples::task();
        task.kind = TaskKind::OpenFile {
            name: bad.into(),
            mime_hint: None,
            size: 1,
        };

        let err = HostMessage::Task(task).validate().unwrap_err();

        assert!(matches!(err, MessageError::BadName(_)), "{bad:?}");
    }
}

#[test]
fn task_input_above_cap_is_refused() {
    let mut task = samples::task();
    task.kind = TaskKind::OpenFile {
        name: "a".into(),
        mime_hint: None,
        size: MAX_TASK_INPUT + 1,
    };

    assert!(HostMessage::Task(task).validate().is_err());
}

#[test]
fn chunk_reaching_past_task_input_cap_is_refused() {
    let msg = HostMessage::TaskData {
        offset: MAX_TASK_INPUT,
        data: vec![0],
    };

    assert!(matches!(
        msg.validate(),
        Err(MessageError::OutOfRange {
            field: "chunk end",
            ..
        })
    ));
}

#[test]
fn trailing_bytes_after_message_are_refused() {
    let mut payload = encode_payload(&HostMessage::Shutdown).unwrap();
    payload.push(0);

    assert!(matches!(
        decode_payload::<HostMessage>(&payload),
        Err(CodecError::TrailingBytes(1))
    ));
}

#[test]
fn pixel_budget_refuses_the_frame_that_would_overspend() {
    let mut budget = PixelBudget::new(50);

    budget.charge_frame(&samples::frame()).unwrap(); // 24
    budget.charge_frame(&samples::frame()).unwrap(); // 48
    let err = budget.charge_frame(&samples::frame()).unwrap_err();

    assert_eq!(budget.used(), 48);
    assert!(matches!(err, BudgetError::Exhausted { wanted: 24, .. }));
}

#[test]
fn largest_allowed_frame_fits_the_frame_cap() {
    // 2048 x 2048 x 4 = 16 MiB, the pixel cap: must still encode.
    let frame = Frame {
        page: 0,
        width: 2048,
        height: 2048,
        rect: Rect {
            x: 0,
            y: 0,
            w: 2048,
            h: 2048,
        },
        format: PixelFormat::Rgba8,
        pixels: vec![0; MAX_FRAME_PIXEL_BYTES],
    };

    let bytes = encode_frame(&GuestMessage::Frame(frame)).unwrap();

    assert!(bytes.len() <= max_len() + 4);
}

#[test]
fn page_print_past_its_caps_is_refused() {
    let mut many = samples::page_print();
    let word = many.words[0].clone();
    many.words = vec![word; MAX_WORDS_PER_PAGE + 1];
    let mut long = samples::page_print();
    long.words[0].text = "w".repeat(MAX_WORD_BYTES + 1);
    let mut spaced = samples::page_print();
    spaced.words[0].text = "two words".into();
    let mut off_page = samples::page_print();
    off_page.words[0].x = MAX_DIM;
    let mut low_dpi = samples::page_print();
    low_dpi.dpi = MIN_PRINT_DPI - 1;

    for bad in [many, long, spaced, off_page, low_dpi] {
        let msg = GuestMessage::PagePrint(bad);
        assert!(msg.validate().is_err(), "{msg:?} passed");
        assert!(encode_payload(&msg).is_err());
    }
    assert!(GuestMessage::PagePrint(samples::page_print())
        .validate()
        .is_ok());
}

#[test]
fn ocr_language_that_could_name_a_path_is_refused() {
    let with_lang = |lang: &str| {
        HostMessage::Task(Task {
            safe_copy: Some(SafeCopy {
                ocr: Some(lang.into()),
            }),
            ..samples::task()
        })
    };

    for bad in ["../eng", "eng+", "", "en g", "eng/x"] {
        assert!(with_lang(bad).validate().is_err(), "{bad:?} passed");
    }
    assert!(with_lang("eng+chi_sim").validate().is_ok());
}
