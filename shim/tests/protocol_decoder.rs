//! Property tests: no byte sequence makes the decoder panic or over-allocate.

use std::io::Cursor;

use proptest::prelude::*;
use vitrine_shim::protocol::{
    decode_payload, encode_frame, FrameReader, GuestMessage, HostMessage, InputEvent,
    PROTOCOL_VERSION,
};

fn drain<M: vitrine_shim::protocol::WireMessage>(bytes: Vec<u8>) {
    let mut reader = FrameReader::<_, M>::new(Cursor::new(bytes));
    // Every call ends in Ok(Some), Ok(None) or a typed error; stop at the first non-message.
    while let Ok(Some(_)) = reader.recv() {}
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_stream_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        drain::<HostMessage>(bytes.clone());
        drain::<GuestMessage>(bytes);
    }

    #[test]
    fn arbitrary_payload_after_valid_version_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut payload = PROTOCOL_VERSION.to_le_bytes().to_vec();
        payload.extend(body);
        let _ = decode_payload::<HostMessage>(&payload);
        let _ = decode_payload::<GuestMessage>(&payload);
    }

    #[test]
    fn framed_arbitrary_payload_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        // A well-formed prefix and version around random bytes reaches the postcard decoder.
        let mut bytes = u32::try_from(body.len() + 2).unwrap().to_le_bytes().to_vec();
        bytes.extend(PROTOCOL_VERSION.to_le_bytes());
        bytes.extend(body);
        drain::<HostMessage>(bytes.clone());
        drain::<GuestMessage>(bytes);
    }

    #[test]
    fn mutated_valid_frames_decode_or_fail_cleanly(idx in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode_frame(&HostMessage::Input(InputEvent::Text("hello world".into()))).unwrap();
        let i = idx.index(bytes.len());
        bytes[i] = byte;
        drain::<HostMessage>(bytes);
    }

    #[test]
    fn text_input_round_trips(text in "\\PC{0,200}") {
        let msg = HostMessage::Input(InputEvent::Text(text));
        let bytes = encode_frame(&msg).unwrap();
        let mut reader = FrameReader::<_, HostMessage>::new(Cursor::new(bytes));
        prop_assert_eq!(reader.recv().unwrap(), Some(msg));
    }
}
