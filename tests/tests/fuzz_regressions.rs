//! Replays every seed in `tests/fuzz/corpus/<target>/` and every saved
//! crash in `tests/fuzz/regressions/<target>/` through the harness the fuzz
//! target runs, so a crash once found stays fixed in `cargo test`.
//! `tests/fuzz.sh` copies a new crash into `regressions/` with its target.

#[path = "../../microvm/tests/virtio_driver/mod.rs"]
mod virtio_driver;

use std::path::{Path, PathBuf};

use vitrine_tests::fuzz_harness::{self, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The harness of the target named like its corpus directory.
fn harness(target: &str) -> fn(&[u8]) {
    match target {
        "protocol_decode" => fuzz_harness::protocol_decode,
        "policy_parse" => fuzz_harness::policy_parse,
        "snapshot_load" => fuzz_harness::snapshot_load,
        "vsock_packet" => virtio_driver::fuzz_case::run_vsock_case,
        "blk_request" => virtio_driver::fuzz_case::run_blk_case,
        "viewer_decode" => fuzz_harness::viewer_decode,
        other => panic!("no harness for fuzz target {other}"),
    }
}

/// Files under `kind/<target>/`, sorted; a missing directory is empty.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.expect("read a corpus entry").path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let mut replayed = 0;
    for target in TARGETS {
        let run = harness(target);
        for file in inputs(kind, target) {
            let data = std::fs::read(&file).expect("read a fuzz input");
            eprintln!("replaying {}", file.display());
            run(&data);
            replayed += 1;
        }
    }
    replayed
}

#[test]
fn every_corpus_seed_passes_its_harness() {
    let replayed = replay("corpus");

    // Each target has seeds: an empty corpus would fuzz from nothing.
    for target in TARGETS {
        assert!(
            !inputs("corpus", target).is_empty(),
            "tests/fuzz/corpus/{target} has no seeds"
        );
    }
    assert!(replayed >= TARGETS.len());
}

#[test]
fn real_snapshot_seed_reaches_every_device_restore() {
    let seed = fuzz_dir().join("corpus/snapshot_load/counter-2mib-rng-blk-vsock.bin");
    let data = std::fs::read(seed).unwrap();
    let mut case = fuzz_harness::SnapshotCase::parse(&data);

    let reach = fuzz_harness::snapshot_load_reach(&data);
    // One flipped body byte: refused by the CRC, unless the case fixes it.
    case.state[100] ^= 0x40;
    let corrupt = fuzz_harness::snapshot_load_reach(&case.to_bytes());
    case.flags = fuzz_harness::snapshot_flags::FIX_CRC;
    let fixed = fuzz_harness::snapshot_load_reach(&case.to_bytes());

    assert!(reach.state_decoded && reach.memory_mapped, "{reach:?}");
    assert_eq!((reach.devices_saved, reach.devices_restored), (3, 3));
    assert!(!corrupt.state_decoded);
    assert_ne!(
        fixed, corrupt,
        "the CRC fix-up lets a mutated state through"
    );
}

#[test]
fn every_saved_crash_stays_fixed() {
    let replayed = replay("regressions");

    eprintln!("replayed {replayed} saved crash input(s)");
}

#[test]
fn every_corpus_directory_names_a_target() {
    let dirs = std::fs::read_dir(fuzz_dir().join("corpus")).expect("tests/fuzz/corpus");

    for entry in dirs {
        let name = entry.expect("corpus entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            TARGETS.contains(&name.as_ref()),
            "tests/fuzz/corpus/{name} is not a fuzz target"
        );
    }
}

/// Writes the generated seeds of `tests/fuzz/corpus/`: one encoded frame per
/// protocol message kind (and one stream of several), and the snapshot
/// case of a real snapshot directory when `VITRINE_SNAPSHOT_SEED` names
/// one (`vitrine-vmm snapshot --test-guest counter --mem-mib 2
/// --pause-after 0.2 [--rng --disk IMG --vsock-uds SOCK] --out DIR`; the
/// seed is named after DIR). Run it after a wire format changes:
/// `cargo test -p vitrine-tests --test fuzz_regressions -- --ignored`.
#[test]
#[ignore = "rewrites the seed corpus in the source tree"]
fn write_seed_corpus() {
    use vitrine_shim::protocol::*;

    let corpus = fuzz_dir().join("corpus");
    let guest_frame = samples::frame;
    let guest = samples::guest_messages();
    let host = samples::host_messages();
    let dir = corpus.join("protocol_decode");
    std::fs::create_dir_all(&dir).unwrap();
    let mut stream = Vec::new();
    for (i, m) in guest.iter().enumerate() {
        let bytes = encode_frame(m).unwrap();
        stream.extend_from_slice(&bytes);
        std::fs::write(dir.join(format!("guest-{i:02}.bin")), bytes).unwrap();
    }
    for (i, m) in host.iter().enumerate() {
        std::fs::write(
            dir.join(format!("host-{i:02}.bin")),
            encode_frame(m).unwrap(),
        )
        .unwrap();
    }
    std::fs::write(dir.join("guest-stream.bin"), stream).unwrap();

    use vitrine_daemon::viewer::wire::{self, Message};
    let viewer = [
        Message::Frame(guest_frame()),
        Message::Status("rendering…".into()),
        Message::Input(InputEvent::Key(KeyEvent {
            key: Key::Enter,
            modifiers: Modifiers {
                ctrl: false,
                alt: true,
                shift: true,
            },
        })),
        Message::Input(InputEvent::Text("ünï".into())),
        Message::Input(InputEvent::Scroll { dx: 5, dy: -5 }),
        Message::Input(InputEvent::PageChange { page: 1 }),
        Message::Input(InputEvent::Resize {
            width: 640,
            height: 480,
        }),
        Message::Closed,
    ];
    let dir = corpus.join("viewer_decode");
    std::fs::create_dir_all(&dir).unwrap();
    let mut stream = Vec::new();
    for (i, m) in viewer.iter().enumerate() {
        let bytes = wire::encode(m).unwrap();
        stream.extend_from_slice(&bytes);
        std::fs::write(dir.join(format!("message-{i:02}.bin")), bytes).unwrap();
    }
    std::fs::write(dir.join("stream.bin"), stream).unwrap();

    if let Some(snap) = std::env::var_os("VITRINE_SNAPSHOT_SEED") {
        let snap = PathBuf::from(snap);
        let state = std::fs::read(snap.join("state")).unwrap();
        let mem = std::fs::read(snap.join("mem")).unwrap();
        let dir = corpus.join("snapshot_load");
        std::fs::create_dir_all(&dir).unwrap();
        let case = fuzz_harness::SnapshotCase {
            flags: 0,
            state,
            mem_len: u64::try_from(mem.len()).unwrap(),
            working_set: b"0x0 1\n0x1000 2\n".to_vec(),
            // The first pages: the test guest's code and its identity page.
            mem_head: mem[..mem.len().min(8192)].to_vec(),
        };
        let name = snap.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::write(dir.join(format!("{name}.bin")), case.to_bytes()).unwrap();
        let fixed = fuzz_harness::SnapshotCase {
            flags: fuzz_harness::snapshot_flags::FIX_CRC | fuzz_harness::snapshot_flags::FIX_LEN,
            ..case
        };
        std::fs::write(dir.join(format!("{name}-fixcrc.bin")), fixed.to_bytes()).unwrap();
    }
}
