//! The real `vitrine-shim` binary as a local process over a Unix socket:
//! documents, images, text, HTML and programs in; frames and a status out.
//! Hostile inputs must end as a clean Failed or TimedOut.

mod support;

use std::io::Cursor;
use std::time::{Duration, Instant};

use support::{blue_pixels, compile_static_c, have_poppler, limits, processes_of_uid, Guest};
use vitrine_shim::export::sha256;
use vitrine_shim::protocol::{
    Capability, GuestMessage, HostMessage, InputEvent, Limits, Task, TaskKind, TaskStatus,
};
use vitrine_shim::render::font::MonoFont;
use vitrine_shim::render::terminal::{Screen, DEFAULT_COLS, DEFAULT_ROWS};
use vitrine_shim::render::{text, TEXT_PX};

const PDF_FIXTURE: &[u8] = include_bytes!("../fixtures/three-pages.pdf");

#[test]
fn pdf_fixture_renders_three_distinct_nonblank_pages() {
    if !have_poppler("pdf_fixture_renders_three_distinct_nonblank_pages") {
        return;
    }
    // Arrange
    let mut guest = Guest::start();
    assert!(guest.capabilities.contains(&Capability::Pdf));

    // Act
    let out = guest.open_file("three-pages.pdf", PDF_FIXTURE, limits(30_000));

    // Assert
    assert_eq!(out.status, Some(TaskStatus::Ok), "{:?}", out.logs);
    assert_eq!(out.page_count, Some(3));
    assert_eq!(out.pages.len(), 3);
    for page in out.pages.values() {
        assert!(page.dark_pixels() > 500, "page has little ink: {page:?}");
        // A4 portrait, long side scaled to 1200.
        assert_eq!(page.height(), 1200);
    }
    // The boxes are 100, 250 and 400 pt wide: blue area grows page by page.
    let blue: Vec<usize> = out.pages.values().map(blue_pixels).collect();
    assert!(
        blue[0] > 1000 && blue[0] < blue[1] && blue[1] < blue[2],
        "{blue:?}"
    );
    guest.shutdown();
}

#[test]
fn page_change_resends_that_page() {
    if !have_poppler("page_change_resends_that_page") {
        return;
    }
    let mut guest = Guest::start();
    let first = guest.open_file("three-pages.pdf", PDF_FIXTURE, limits(30_000));

    guest.page_change(1);
    let mut again = support::Outcome::default();
    let t0 = Instant::now();
    while again
        .pages
        .get(&1)
        .is_none_or(|p| p.rgba().chunks_exact(4).any(|px| px == [255, 0, 255, 255]))
    {
        let msg = guest.reader.recv().unwrap().unwrap();
        guest.apply(&mut again, msg, t0);
    }

    assert_eq!(again.pages.get(&1), first.pages.get(&1));
    guest.shutdown();
}

#[test]
fn malformed_pdf_fails_the_task_cleanly() {
    if !have_poppler("malformed_pdf_fails_the_task_cleanly") {
        return;
    }
    let mut guest = Guest::start();
    let mut junk = b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >>\n".to_vec();
    junk.extend((0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));

    let out = guest.open_file("broken.pdf", &junk, limits(20_000));

    assert!(
        matches!(out.status, Some(TaskStatus::Failed(_))),
        "{:?}",
        out.status
    );
    assert!(out.pages.is_empty());
    guest.shutdown();
}

fn test_picture() -> image::RgbImage {
    // White 64x48 with a black 16x16 square at (8, 8).
    let mut img = image::RgbImage::from_pixel(64, 48, image::Rgb([255, 255, 255]));
    for y in 8..24 {
        for x in 8..24 {
            img.put_pixel(x, y, image::Rgb([0, 0, 0]));
        }
    }
    img
}

#[test]
fn png_jpeg_gif_and_webp_render_to_their_pixels() {
    let img = test_picture();
    let mut outcomes = Vec::new();
    for (name, format) in [
        ("a.png", image::ImageFormat::Png),
        ("a.jpg", image::ImageFormat::Jpeg),
        ("a.gif", image::ImageFormat::Gif),
        ("a.webp", image::ImageFormat::WebP),
    ] {
        let mut bytes = Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img.clone())
            .write_to(&mut bytes, format)
            .unwrap();
        // One shim serves one task; start a fresh one per format.
        let mut g = Guest::start();
        let out = g.open_file(name, bytes.get_ref(), limits(20_000));
        g.shutdown();
        outcomes.push((name, out));
    }

    for (name, out) in outcomes {
        assert_eq!(out.status, Some(TaskStatus::Ok), "{name}: {:?}", out.logs);
        assert_eq!(out.page_count, Some(1), "{name}");
        let page = &out.pages[&0];
        assert_eq!((page.width(), page.height()), (64, 48), "{name}");
        // The square is dark, the rest is not (JPEG blurs edges a little).
        assert!(page.crop_dark_pixels(10, 10, 12, 12) == 144, "{name}");
        assert_eq!(page.crop_dark_pixels(30, 0, 34, 48), 0, "{name}");
    }
}

fn png_with_header(width: u32, height: u32) -> Vec<u8> {
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::new(1, 1))
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn image_decompression_bomb_fails_the_task() {
    // 16000 x 16000 RGB is 768 MB decoded: above the decoder's allocation cap.
    let mut guest = Guest::start();

    let out = guest.open_file("bomb.png", &png_with_header(16_000, 16_000), limits(20_000));

    assert!(
        matches!(out.status, Some(TaskStatus::Failed(_))),
        "{:?}",
        out.status
    );
    assert!(out.pages.is_empty());
    guest.shutdown();
}

#[test]
fn text_lines_put_ink_where_the_text_is() {
    // Arrange: rows 0 and 2 hold text, row 1 is empty.
    let mut guest = Guest::start();
    let font = MonoFont::new(TEXT_PX).unwrap();

    // Act
    let out = guest.open_file(
        "notes.txt",
        b"Hello, Vitrine\n\nsecond line\xff\n",
        limits(20_000),
    );

    // Assert
    assert_eq!(out.status, Some(TaskStatus::Ok), "{:?}", out.logs);
    let page = &out.pages[&0];
    let band =
        |row| page.crop_dark_pixels(0, text::row_top(&font, row), page.width(), font.cell_h());
    assert!(band(0) > 50, "row 0: {}", band(0));
    assert_eq!(band(1), 0);
    assert!(band(2) > 50, "row 2: {}", band(2));
    assert_eq!(band(3), 0);
    guest.shutdown();
}

const HELLO_C: &str = r#"
#include <stdio.h>
int main(void) {
    FILE *f = fopen("result.txt", "w");
    if (f) { fputs("exported by the program\n", f); fclose(f); }
    printf("VITRINE-HELLO\n");
    return 3;
}
"#;

#[test]
fn program_output_appears_in_the_terminal_frame() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = compile_static_c("hello", HELLO_C, dir.path()) else {
        return;
    };
    let mut guest = Guest::start();
    let empty = Screen::new(DEFAULT_COLS, DEFAULT_ROWS).unwrap();
    let mut expected = Screen::new(DEFAULT_COLS, DEFAULT_ROWS).unwrap();
    expected.feed(b"VITRINE-HELLO\r\n");
    expected.paint();

    let out = guest.run_program(&exe, limits(20_000));

    assert_eq!(out.status, Some(TaskStatus::Ok), "{:?}", out.logs);
    assert_eq!(out.exit, Some((Some(3), None)));
    let frame = &out.pages[&0];
    assert_ne!(frame, empty.raster());
    // Same font, same grid: the frame is exactly the expected screen.
    assert_eq!(frame, expected.raster());
    guest.shutdown();
}

#[test]
fn program_file_is_offered_and_fetched_with_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = compile_static_c("exporter", HELLO_C, dir.path()) else {
        return;
    };
    let mut guest = Guest::start();
    let out = guest.run_program(&exe, limits(20_000));
    let content = b"exported by the program\n";
    assert_eq!(out.exports.len(), 1, "{:?}", out.logs);
    let offer = &out.exports[0];
    assert_eq!(
        (offer.name.as_str(), offer.size),
        ("result.txt", content.len() as u64)
    );
    assert_eq!(offer.sha256, sha256(content));

    guest.send(HostMessage::FetchExport { id: offer.id });
    let mut data = Vec::new();
    loop {
        match guest.reader.recv().unwrap().unwrap() {
            GuestMessage::ExportChunk {
                offset, data: d, ..
            } => {
                assert_eq!(offset, data.len() as u64);
                data.extend(d);
            }
            GuestMessage::ExportEnd { .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }

    assert_eq!(data, content);
    guest.shutdown();
}

#[test]
fn typed_text_reaches_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let src = r#"
#include <stdio.h>
int main(void) { char b[64]; if (fgets(b, sizeof b, stdin)) printf("GOT:%s", b); return 0; }
"#;
    let Some(exe) = compile_static_c("echoer", src, dir.path()) else {
        return;
    };
    let mut guest = Guest::start();
    let kind = vitrine_shim::protocol::TaskKind::RunProgram {
        size: exe.len() as u64,
        args: vec![],
    };
    guest.submit(kind, &exe, limits(20_000));
    guest.send(HostMessage::Input(InputEvent::Text("ping\r".into())));

    let out = guest.collect_until_done(Instant::now());

    assert_eq!(out.status, Some(TaskStatus::Ok), "{:?}", out.logs);
    let mut expected = Screen::new(DEFAULT_COLS, DEFAULT_ROWS).unwrap();
    // The pty echoes the input line, then the program prints it.
    expected.feed(b"ping\r\nGOT:ping\r\n");
    expected.paint();
    assert_eq!(&out.pages[&0], expected.raster());
    guest.shutdown();
}

#[test]
fn fork_bomb_ends_within_its_limit_and_leaves_no_processes() {
    let dir = tempfile::tempdir().unwrap();
    let src = "#include <unistd.h>\nint main(void) { for (;;) fork(); }\n";
    let Some(exe) = compile_static_c("forkbomb", src, dir.path()) else {
        return;
    };
    let mut guest = Guest::start();
    let t0 = Instant::now();

    let out = guest.run_program(&exe, limits(3_000));

    let took = t0.elapsed();
    assert!(
        matches!(
            out.status,
            Some(TaskStatus::TimedOut | TaskStatus::Failed(_))
        ),
        "{:?}",
        out.status
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    if nix_is_root() {
        // Killed processes may linger briefly as zombies until reaped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while processes_of_uid(guest.uid) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(processes_of_uid(guest.uid), 0, "fork bomb survived");
    }
    guest.shutdown();
}

#[test]
fn stdout_flood_is_bounded_and_ends_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let src = r#"
#include <string.h>
#include <unistd.h>
int main(void) { char b[65536]; memset(b, 'A', sizeof b); for (;;) write(1, b, sizeof b); }
"#;
    let Some(exe) = compile_static_c("flood", src, dir.path()) else {
        return;
    };
    let mut guest = Guest::start();
    let t0 = Instant::now();

    let out = guest.run_program(&exe, limits(10_000));

    assert!(
        matches!(
            out.status,
            Some(TaskStatus::TimedOut | TaskStatus::Failed(_))
        ),
        "{:?}",
        out.status
    );
    assert!(t0.elapsed() < Duration::from_secs(30));
    // Frames are paced, so a flood cannot flood the host either.
    assert!(out.frames < 2000, "{} frames", out.frames);
    guest.shutdown();
}

#[test]
fn garbage_from_the_host_ends_the_session_without_hanging() {
    use std::io::Write;
    let mut guest = Guest::start();

    guest
        .writer
        .get_ref()
        .try_clone()
        .unwrap()
        .write_all(&[0xff; 64])
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    while guest.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "shim kept running after garbage");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|v| v.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn a_task_before_the_vms_fresh_identity_is_refused() {
    let mut guest = Guest::start_without_identity();

    guest
        .writer
        .send(&HostMessage::Task(Task {
            id: 4,
            kind: TaskKind::OpenFile {
                name: "notes.txt".into(),
                mime_hint: None,
                size: 3,
            },
            limits: Limits::default(),
            safe_copy: None,
            live: false,
        }))
        .unwrap();
    let answer = guest.reader.recv().unwrap();

    assert_eq!(
        answer,
        Some(GuestMessage::Done {
            task: 4,
            status: TaskStatus::Failed(
                "refused: the task came before the VM's fresh identity".into()
            ),
        })
    );
}
