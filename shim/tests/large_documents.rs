//! Large documents through the real `vitrine-shim` binary and its sandboxed
//! render worker (with the worker's real rlimits): pages go out as they are
//! drawn, memory stays bounded whatever the length, and the task stops at its
//! page cap or pixel budget and says so.
//!
//! Peak memory is read from `getrusage(RUSAGE_CHILDREN)`: the largest
//! resident size of any reaped descendant (the shim, `exec-limited`, the
//! worker), kept for the whole test process, so each bound covers both tests.

mod support;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::resource::{getrusage, UsageWho};
use support::{limits, Guest};
use vitrine_shim::protocol::{GuestMessage, HostMessage, InputEvent, Limits, TaskKind, TaskStatus};
use vitrine_shim::render::font::MonoFont;
use vitrine_shim::render::TEXT_PX;

/// Most resident memory any process of a text task may reach. A page is
/// about 4 MB; before streaming, the worker held every page (2 GB for 500).
const PEAK_RSS_BOUND: u64 = 96 * 1024 * 1024;

static SERIAL: Mutex<()> = Mutex::new(());

/// `n` numbered lines of 60 characters.
fn numbered_lines(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("{i:06} the quick brown fox jumps over the lazy dog, again\n"))
        .collect::<String>()
        .into_bytes()
}

/// Text rows on one page of the agent's default 900x1100 text page.
fn rows_per_page() -> u32 {
    let font = MonoFont::new(TEXT_PX).unwrap();
    (1100 - 32) / font.cell_h()
}

/// What a task sent, without holding its pages (hundreds of 4 MB pages).
#[derive(Debug, Default)]
struct Seen {
    page_count: Option<u32>,
    pages: BTreeSet<u32>,
    first_frame: Option<Duration>,
    status: Option<TaskStatus>,
    logs: Vec<String>,
}

fn open_large(guest: &mut Guest, name: &str, data: &[u8], limits: Limits) -> Seen {
    let kind = TaskKind::OpenFile {
        name: name.into(),
        mime_hint: None,
        size: data.len() as u64,
    };
    let t0 = Instant::now();
    guest.submit(kind, data, limits);
    let mut seen = Seen::default();
    loop {
        match guest
            .reader
            .recv()
            .expect("recv")
            .expect("shim closed before Done")
        {
            GuestMessage::PageInfo { count, .. } => seen.page_count = Some(count),
            GuestMessage::Frame(f) => {
                seen.first_frame.get_or_insert(t0.elapsed());
                seen.pages.insert(f.page);
            }
            GuestMessage::Log { text, .. } => seen.logs.push(text),
            GuestMessage::Done { status, .. } => {
                seen.status = Some(status);
                return seen;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn peak_rss_of_reaped_children() -> u64 {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).unwrap();
    u64::try_from(usage.max_rss()).unwrap() * 1024
}

#[test]
fn hundred_thousand_lines_stream_until_the_pixel_budget_and_say_so() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Arrange: 100,000 lines, about 1,800 pages; the default budget of
    // 512 MiB holds 135 pages of 900x1100 RGBA.
    let text = numbered_lines(100_000);
    let total = 100_000u32.div_ceil(rows_per_page());
    let task_limits = limits(120_000);
    let fit = u32::try_from(task_limits.max_pixel_bytes / (900 * 1100 * 4)).unwrap();
    let mut guest = Guest::start();

    // Act
    let out = open_large(&mut guest, "big.txt", &text, task_limits);
    guest.shutdown();

    // Assert
    assert_eq!(out.status, Some(TaskStatus::Ok), "{:?}", out.logs);
    assert_eq!(out.page_count, Some(fit));
    assert_eq!(out.pages, (0..fit).collect());
    let said = format!("page cap: shown={fit} total={total} reason=pixel-budget");
    assert!(
        out.logs.iter().any(|l| l.ends_with(&said)),
        "no {said:?} in {:?}",
        out.logs
    );
    let first = out.first_frame.expect("a frame");
    assert!(
        first < Duration::from_secs(5),
        "first frame after {first:?}"
    );
    let peak = peak_rss_of_reaped_children();
    eprintln!("first frame after {first:?}; peak RSS {} MiB", peak >> 20);
    assert!(peak < PEAK_RSS_BOUND, "peak RSS {} MiB", peak >> 20);
}

#[test]
fn ten_megabytes_of_text_stop_at_the_page_cap_and_say_so() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Arrange: 10 MB of text, a cap of 40 pages.
    let text = numbered_lines(180_000);
    assert!(text.len() > 10_000_000);
    let total = 180_000u32.div_ceil(rows_per_page());
    let task_limits = Limits {
        max_pages: 40,
        ..limits(120_000)
    };
    let mut guest = Guest::start();

    // Act
    let out = open_large(&mut guest, "huge.log", &text, task_limits);
    guest.shutdown();

    // Assert
    assert_eq!(out.status, Some(TaskStatus::Ok), "{:?}", out.logs);
    assert_eq!(out.page_count, Some(40));
    assert_eq!(out.pages, (0..40).collect());
    let said = format!("page cap: shown=40 total={total} reason=page-cap");
    assert!(
        out.logs.iter().any(|l| l.ends_with(&said)),
        "no {said:?} in {:?}",
        out.logs
    );
    let first = out.first_frame.expect("a frame");
    assert!(
        first < Duration::from_secs(5),
        "first frame after {first:?}"
    );
    let peak = peak_rss_of_reaped_children();
    eprintln!("first frame after {first:?}; peak RSS {} MiB", peak >> 20);
    assert!(peak < PEAK_RSS_BOUND, "peak RSS {} MiB", peak >> 20);
}

#[test]
fn a_resize_after_the_budget_is_spent_is_refused_in_words_and_sends_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Arrange: a small budget that one layout of 3 pages fills.
    let task_limits = Limits {
        max_pixel_bytes: 3 * 900 * 1100 * 4,
        ..limits(60_000)
    };
    let mut guest = Guest::start();
    let first = open_large(&mut guest, "three.txt", &numbered_lines(150), task_limits);
    assert_eq!(first.page_count, Some(3), "{:?}", first.logs);

    // Act
    guest.send(HostMessage::Input(InputEvent::Resize {
        width: 600,
        height: 800,
    }));
    let answer = guest.reader.recv().expect("recv").expect("shim closed");
    guest.shutdown();

    // Assert
    match answer {
        GuestMessage::Log { text, .. } => assert_eq!(
            text,
            "input failed: the task's pixel budget is spent: not one more 600x800 page fits"
        ),
        other => panic!("expected a log line, got {other:?}"),
    }
}
