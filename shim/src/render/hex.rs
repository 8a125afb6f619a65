//! Binary data, shown as what it is: offsets, bytes in hexadecimal and the
//! printable ones beside them, under a line that says so. Decoding it as
//! text would fill pages with replacement characters and say nothing.

use std::fmt::Write;

/// Bytes per line.
const PER_LINE: usize = 16;
/// Most bytes shown: past this, pages would say nothing new, and the view
/// (about five bytes of text per byte) must stay small in a small guest.
pub const MAX_SHOWN: usize = 1024 * 1024;
/// Bytes looked at to tell binary data from text.
pub const PROBE: usize = 8 * 1024;

/// Whether `head` (the first [`PROBE`] bytes or fewer) is binary data: a
/// NUL, as git and `file` decide, or more than one byte in ten a control
/// character no text uses.
pub fn looks_binary(head: &[u8]) -> bool {
    if head.starts_with(b"\xff\xfe") || head.starts_with(b"\xfe\xff") {
        // UTF-16 text, which is half NULs when it is mostly ASCII.
        return false;
    }
    let head = &head[..head.len().min(PROBE)];
    if head.contains(&0) {
        return true;
    }
    let odd = head
        .iter()
        .filter(|&&b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0c | 0x1b)) || b == 0x7f)
        .count();
    odd * 10 > head.len()
}

/// The hex view of `bytes`, headed by what it is.
pub fn view(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(MAX_SHOWN)];
    let lines = shown.len().div_ceil(PER_LINE);
    let mut out = String::with_capacity(200 + lines * 80);
    let _ = writeln!(
        out,
        "Binary data, not text: {} bytes, shown in hexadecimal.",
        bytes.len()
    );
    let _ = writeln!(
        out,
        "Nothing in it was run or interpreted; no viewer for this type is in the VM.\n"
    );
    for (i, chunk) in shown.chunks(PER_LINE).enumerate() {
        let _ = write!(out, "{:08x} ", i * PER_LINE);
        for j in 0..PER_LINE {
            if j % 8 == 0 {
                out.push(' ');
            }
            match chunk.get(j) {
                Some(b) => {
                    let _ = write!(out, "{b:02x} ");
                }
                None => out.push_str("   "),
            }
        }
        out.push_str(" |");
        out.extend(chunk.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        }));
        out.push_str("|\n");
    }
    if bytes.len() > shown.len() {
        let _ = writeln!(
            out,
            "... the other {} bytes are not shown.",
            bytes.len() - shown.len()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nuls_and_control_bytes_are_binary_and_text_is_not() {
        let random: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
            .collect();
        let latin1 = b"Caf\xe9 cr\xe8me, na\xefve fa\xe7ade\r\n\tend\x0c".repeat(50);

        assert!(looks_binary(b"GIF89a\x01\x00\x00"));
        assert!(looks_binary(&random));
        assert!(!looks_binary("Grüße, ½ € — naïve\n".as_bytes()));
        assert!(!looks_binary(&latin1), "Latin-1 text has no NUL");
        assert!(!looks_binary(b"\x1b[31mred\x1b[0m\n"));
        assert!(!looks_binary(b"\xff\xfeh\0i\0\r\0\n\0"), "UTF-16 text");
    }

    #[test]
    fn the_view_lines_up_offsets_bytes_and_printables() {
        let data: Vec<u8> = (0u8..=20).collect();

        let v = view(&data);
        let lines: Vec<&str> = v.lines().collect();

        assert_eq!(
            lines[0],
            "Binary data, not text: 21 bytes, shown in hexadecimal."
        );
        assert_eq!(
            lines[3],
            "00000000  00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f  |................|"
        );
        assert_eq!(
            lines[4],
            "00000010  10 11 12 13 14                                    |.....|"
        );
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn a_large_file_shows_its_first_mebibyte_and_says_so() {
        let data = vec![b'A'; MAX_SHOWN + 5];

        let v = view(&data);

        assert!(v.ends_with("... the other 5 bytes are not shown.\n"));
        assert_eq!(v.lines().count(), 3 + MAX_SHOWN / 16 + 1);
    }
}
