//! The Downloads watcher on a real folder with real inotify: files created,
//! moved in, and downloaded as .part/.crdownload then renamed all end up
//! marked untrusted within a bounded wait; files that vanish at once cause
//! no error; files that were there before it started are left alone.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vitrine_daemon::downloads_watch::{
    is_marked_untrusted_in, DownloadsWatcher, MarkMethod, Marking, WatchConfig, UNTRUSTED_XATTR,
};

const WAIT: Duration = Duration::from_secs(5);

struct Setup {
    _root: tempfile::TempDir,
    downloads: PathBuf,
    elsewhere: PathBuf,
    record: PathBuf,
}

fn setup() -> Setup {
    let root = tempfile::tempdir().unwrap();
    let downloads = root.path().join("Downloads");
    let elsewhere = root.path().join("Documents");
    fs::create_dir(&downloads).unwrap();
    fs::create_dir(&elsewhere).unwrap();
    let record = root.path().join("state/vitrine/untrusted-files");
    Setup {
        downloads,
        elsewhere,
        record,
        _root: root,
    }
}

fn start(s: &Setup, marking: Marking) -> DownloadsWatcher {
    DownloadsWatcher::start(WatchConfig {
        dirs: vec![s.downloads.clone()],
        record: s.record.clone(),
        marking,
    })
    .unwrap()
}

fn eventually_marked(path: &Path, record: &Path) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < WAIT {
        if is_marked_untrusted_in(path, record) {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{} not marked within {WAIT:?}", path.display());
}

fn xattr(path: &Path) -> Option<Vec<u8>> {
    let mut buf = [0u8; 16];
    let n = rustix::fs::getxattr(path, UNTRUSTED_XATTR, &mut buf[..]).ok()?;
    Some(buf[..n].to_vec())
}

#[test]
fn file_created_in_downloads_gets_the_xattr_mark() {
    // Arrange
    let s = setup();
    let watcher = start(&s, Marking::XattrThenRecord);
    let file = s.downloads.join("invoice.pdf");

    // Act
    fs::write(&file, b"%PDF-1.7 ...").unwrap();

    // Assert
    let took = eventually_marked(&file, &s.record);
    eprintln!("create -> mark: {took:?}");
    assert_eq!(xattr(&file).as_deref(), Some(&b"1"[..]));
    std::thread::sleep(Duration::from_millis(100));
    assert!(watcher
        .poll_marked()
        .iter()
        .any(|m| m.path == file && m.how == MarkMethod::Xattr));
}

#[test]
fn file_moved_in_from_elsewhere_is_marked_and_keeps_the_mark_when_moved_out() {
    // Arrange
    let s = setup();
    let _watcher = start(&s, Marking::XattrThenRecord);
    let outside = s.elsewhere.join("photo.jpg");
    fs::write(&outside, b"\xff\xd8\xff").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!is_marked_untrusted_in(&outside, &s.record));

    // Act
    let inside = s.downloads.join("photo.jpg");
    fs::rename(&outside, &inside).unwrap();

    // Assert
    eventually_marked(&inside, &s.record);
    let back = s.elsewhere.join("photo-kept.jpg");
    fs::rename(&inside, &back).unwrap();
    assert!(
        is_marked_untrusted_in(&back, &s.record),
        "the mark travels with the file"
    );
}

#[test]
fn partial_download_renamed_at_the_end_is_marked() {
    for suffix in ["part", "crdownload"] {
        // Arrange
        let s = setup();
        let _watcher = start(&s, Marking::XattrThenRecord);
        let partial = s.downloads.join(format!("report.pdf.{suffix}"));
        let done = s.downloads.join("report.pdf");

        // Act: written in chunks over time, then renamed to its real name.
        let mut f = fs::File::create(&partial).unwrap();
        for chunk in 0..5u8 {
            f.write_all(&[chunk; 4096]).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(f);
        fs::rename(&partial, &done).unwrap();

        // Assert
        eventually_marked(&done, &s.record);
        assert_eq!(
            fs::metadata(&done).unwrap().len(),
            5 * 4096,
            "content untouched"
        );
    }
}

#[test]
fn folder_moved_in_has_its_files_marked() {
    // Arrange
    let s = setup();
    let _watcher = start(&s, Marking::XattrThenRecord);
    let tree = s.elsewhere.join("archive");
    fs::create_dir_all(tree.join("nested")).unwrap();
    fs::write(tree.join("a.txt"), b"a").unwrap();
    fs::write(tree.join("nested/b.txt"), b"b").unwrap();

    // Act
    fs::rename(&tree, s.downloads.join("archive")).unwrap();

    // Assert
    eventually_marked(&s.downloads.join("archive/a.txt"), &s.record);
    eventually_marked(&s.downloads.join("archive/nested/b.txt"), &s.record);
}

#[test]
fn files_deleted_at_once_cause_no_error_and_watching_goes_on() {
    // Arrange
    let s = setup();
    let watcher = start(&s, Marking::XattrThenRecord);

    // Act: many files that vanish before the watcher can mark them.
    for i in 0..200 {
        let p = s.downloads.join(format!("tmp-{i}"));
        fs::write(&p, b"x").unwrap();
        fs::remove_file(&p).unwrap();
    }
    let later = s.downloads.join("after.txt");
    fs::write(&later, b"still watching").unwrap();

    // Assert
    eventually_marked(&later, &s.record);
    assert!(!s.record.exists(), "no fallback record for vanished files");
    let _ = watcher.poll_marked();
}

#[test]
fn files_present_before_the_watcher_started_are_left_alone() {
    // Arrange
    let s = setup();
    let old = s.downloads.join("old.pdf");
    fs::write(&old, b"%PDF").unwrap();

    // Act
    let _watcher = start(&s, Marking::XattrThenRecord);
    let new = s.downloads.join("new.pdf");
    fs::write(&new, b"%PDF").unwrap();

    // Assert
    eventually_marked(&new, &s.record);
    assert!(!is_marked_untrusted_in(&old, &s.record));
}

#[test]
fn without_xattrs_the_mark_goes_to_the_record_file() {
    // Arrange
    let s = setup();
    let _watcher = start(&s, Marking::RecordOnly);
    let file = s.downloads.join("sheet.xlsx");

    // Act
    fs::write(&file, b"PK\x03\x04").unwrap();

    // Assert
    eventually_marked(&file, &s.record);
    assert_eq!(xattr(&file), None, "no extended attribute written");
    let record = fs::read_to_string(&s.record).unwrap();
    assert!(record.contains("sheet.xlsx"), "{record}");
}
