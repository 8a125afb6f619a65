//! What each fuzz target does with its bytes, shared by the libFuzzer
//! targets in `tests/fuzz` and the replay test `tests/tests/fuzz_regressions.rs`,
//! so a crash the fuzzer finds replays in `cargo test` through the same code.
//!
//! Every function takes arbitrary bytes, drives one parser the way the
//! product does, and panics only when a promise breaks (a decoded message
//! that does not re-encode to itself, a refused policy without an error).
//! A parser's own panic is a bug it found. The virtio targets (vsock packet
//! path, virtio-blk requests) keep microvm's harness
//! (`microvm/tests/virtio_driver/fuzz_case.rs`).

use std::cell::RefCell;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vitrine_daemon::viewer::canvas::Canvas;
use vitrine_daemon::viewer::wire::{self, Message};
use vitrine_microvm::devices::virtio::block::{BlockConstructorArgs, BlockDevice};
use vitrine_microvm::devices::virtio::mmio::MmioConstructorArgs;
use vitrine_microvm::devices::virtio::rng::{RngConstructorArgs, RngDevice};
use vitrine_microvm::devices::virtio::vsock::{VsockConstructorArgs, VsockDevice};
use vitrine_microvm::devices::virtio::{MmioTransport, VirtioDevice, VirtioDeviceState};
use vitrine_microvm::snapshot::identity::CloneIdentity;
use vitrine_microvm::snapshot::{file as snapshot_file, memory as snapshot_memory, Persist};
use vitrine_policy::{FileFacts, Origin, PolicySet, Request, SourceFile};
use vitrine_shim::protocol::{
    decode_payload, encode_payload, FrameReader, GuestMessage, HostMessage, WireMessage,
};

/// The targets, by the name of their corpus directory under `tests/fuzz/corpus/`.
pub const TARGETS: [&str; 6] = [
    "protocol_decode",
    "policy_parse",
    "snapshot_load",
    "vsock_packet",
    "blk_request",
    "viewer_decode",
];

/// The host/guest protocol: `data` as a byte stream of frames, read as the
/// host reads a guest and as the guest reads the host. Every message that
/// decodes must encode again to a payload that decodes to the same message.
pub fn protocol_decode(data: &[u8]) {
    read_stream::<GuestMessage>(data);
    read_stream::<HostMessage>(data);
}

fn read_stream<M: WireMessage + PartialEq>(data: &[u8]) {
    let mut reader = FrameReader::<_, M>::new(data);
    // A stream of n bytes holds at most n / 7 frames; stop at the first error.
    while let Ok(Some(msg)) = reader.recv() {
        let payload = encode_payload(&msg).expect("a message that decoded must encode");
        let again: M = decode_payload(&payload).expect("a re-encoded message must decode");
        assert!(again == msg, "message changed in a round trip: {msg:?}");
    }
}

/// The policy parser and everything downstream of a load: a file from
/// arbitrary bytes loads or is refused with at least one error, and a
/// loaded policy evaluates and explains requests.
pub fn policy_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let file = SourceFile::new("50-fuzz.toml", text.as_ref());
    match PolicySet::from_sources(vec![file], None) {
        Ok(policy) => {
            let requests = [
                Request::open_file(FileFacts {
                    mime: "application/pdf".into(),
                    name: Some("a.tar.gz".into()),
                    path: Some("/home/a/Downloads/x.pdf".into()),
                    origin: Origin {
                        quarantined: true,
                        downloads: false,
                    },
                }),
                Request::open_uri("https://a.b.example.org/x"),
            ];
            for req in requests.into_iter().flatten() {
                let _ = policy.evaluate(&req);
                let _ = policy.explain(&req).to_string();
            }
        }
        Err(diags) => {
            assert!(diags.has_errors(), "a refused policy must say why");
            let _ = diags.to_string();
        }
    }
}

/// The daemon/viewer wire as the viewer reads it: messages decoded one
/// after another from `data`, each of which must encode again to a message
/// that decodes the same; frames are painted on a canvas and the canvas is
/// drawn, as the window does.
pub fn viewer_decode(data: &[u8]) {
    let mut canvas = Canvas::new();
    let mut rest = data;
    while let Ok((msg, used)) = wire::decode(rest) {
        assert!(
            (1..=rest.len()).contains(&used),
            "decode used {used} of {} bytes",
            rest.len()
        );
        rest = &rest[used..];
        let bytes = wire::encode(&msg).expect("a decoded message must encode");
        let (again, again_used) = wire::decode(&bytes).expect("an encoded message must decode");
        assert_eq!(again_used, bytes.len());
        assert!(again == msg, "message changed in a round trip: {msg:?}");
        match &msg {
            Message::Frame(frame) => {
                let _ = canvas.apply_frame(frame);
            }
            Message::Status(text) => canvas.set_status(text),
            // Viewer-to-daemon messages carry nothing to draw.
            _ => {}
        }
    }
    let mut window = vec![0u32; 64 * 48];
    canvas.draw(&mut window, 64, 48, None);
}

/// Flag bits of a `snapshot_load` input's first byte.
pub mod snapshot_flags {
    /// Recompute the state file's CRC, as a hostile writer of the file can.
    pub const FIX_CRC: u8 = 1;
    /// Set the header's body length to the body given.
    pub const FIX_LEN: u8 = 2;
}

/// Largest memory file the snapshot target makes (sparse).
const MAX_FUZZ_MEM: u64 = 64 << 20;
/// Largest disk the snapshot target makes for a restored block device.
const MAX_FUZZ_DISK_SECTORS: u64 = 1024;

/// Bytes of a `snapshot_load` input, in order.
///
/// ```text
/// u8      flags (snapshot_flags)
/// u32 LE  n, then n bytes: the state file
/// u64 LE  length of the memory file (sparse; modulo 64 MiB + 1)
/// u32 LE  m, then m bytes: the working-set file
/// rest    the start of the memory file's contents
/// ```
///
/// Missing bytes read as zero, so every byte string is a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotCase {
    pub flags: u8,
    pub state: Vec<u8>,
    pub mem_len: u64,
    pub working_set: Vec<u8>,
    pub mem_head: Vec<u8>,
}

impl SnapshotCase {
    pub fn parse(data: &[u8]) -> SnapshotCase {
        let mut input = FuzzInput::new(data);
        let flags = input.u8();
        let n = input.u32();
        let state = input.take(usize::try_from(n).unwrap_or(usize::MAX));
        let mem_len = input.u64() % (MAX_FUZZ_MEM + 1);
        let m = input.u32();
        let working_set = input.take(usize::try_from(m).unwrap_or(usize::MAX));
        let mem_head = input.rest().to_vec();
        SnapshotCase {
            flags,
            state,
            mem_len,
            working_set,
            mem_head,
        }
    }

    /// The input bytes that parse back to `self` (for seeds).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![self.flags];
        let n = u32::try_from(self.state.len()).expect("state under 4 GiB");
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&self.state);
        out.extend_from_slice(&self.mem_len.to_le_bytes());
        let m = u32::try_from(self.working_set.len()).expect("working set under 4 GiB");
        out.extend_from_slice(&m.to_le_bytes());
        out.extend_from_slice(&self.working_set);
        out.extend_from_slice(&self.mem_head);
        out
    }
}

thread_local! {
    static SNAPSHOT_DIR: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// The snapshot loader as `Vm::restore` runs it up to KVM: the state file
/// parsed and checked, guest memory mapped copy-on-write, the working set
/// read and pre-faulted, the clone identity page read, and every virtio
/// device with its transport restored from the saved registers (an active
/// one starts its worker, which is stopped again on drop).
pub fn snapshot_load(data: &[u8]) {
    snapshot_load_reach(data);
}

/// How far a `snapshot_load` case got, so tests can check that the seeds
/// reach the deep end of the loader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotReach {
    /// The state file passed every check and decoded.
    pub state_decoded: bool,
    /// Guest memory was mapped.
    pub memory_mapped: bool,
    /// Virtio devices saved in the state.
    pub devices_saved: usize,
    /// Devices restored together with their transports.
    pub devices_restored: usize,
}

/// [`snapshot_load`], saying how far the case got.
pub fn snapshot_load_reach(data: &[u8]) -> SnapshotReach {
    let case = SnapshotCase::parse(data);
    SNAPSHOT_DIR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let dir = slot.get_or_insert_with(|| tempfile::tempdir().expect("temporary directory"));
        load_snapshot_case(&case, dir.path())
    })
}

fn load_snapshot_case(case: &SnapshotCase, dir: &Path) -> SnapshotReach {
    let mut reach = SnapshotReach::default();
    let mut state = case.state.clone();
    if case.flags & snapshot_flags::FIX_LEN != 0 && state.len() >= 16 {
        let body = state.len().saturating_sub(20);
        let len = u32::try_from(body).unwrap_or(u32::MAX);
        state[12..16].copy_from_slice(&len.to_le_bytes());
    }
    if case.flags & snapshot_flags::FIX_CRC != 0 && state.len() >= 20 {
        let end = state.len() - 4;
        let crc = crc32fast::hash(&state[..end]);
        state[end..].copy_from_slice(&crc.to_le_bytes());
    }
    let state_path = dir.join("state");
    write_file(&state_path, &state);
    let Ok(vm_state) = snapshot_file::read(&state_path) else {
        return reach;
    };
    reach.state_decoded = true;
    reach.devices_saved = vm_state.virtio.len();
    // What a state that decoded must hold to be saved again.
    let reencoded = snapshot_file::encode(&vm_state).expect("a decoded state must encode");
    assert!(
        snapshot_file::decode(&reencoded).is_ok(),
        "a re-encoded state must decode"
    );

    let mem_path = dir.join("mem");
    let head_len = usize::try_from(case.mem_len)
        .unwrap_or(usize::MAX)
        .min(case.mem_head.len());
    write_file(&mem_path, &case.mem_head[..head_len]);
    File::options()
        .write(true)
        .open(&mem_path)
        .and_then(|f| f.set_len(case.mem_len))
        .expect("size the memory file");
    let Ok((mem, _file)) = snapshot_memory::map_private(&mem_path, vm_state.mem_size) else {
        return reach;
    };
    reach.memory_mapped = true;
    let ws_path = dir.join("working-set");
    write_file(&ws_path, &case.working_set);
    if let Ok(set) = snapshot_memory::read_working_set(&ws_path) {
        snapshot_memory::prefault(&mem, &set);
    }
    let _ = CloneIdentity::read(&mem);

    let mut transports = Vec::new();
    for (i, slot) in vm_state.virtio.iter().enumerate() {
        let Some(device) = restore_device(&slot.device, dir, i) else {
            continue;
        };
        let args = MmioConstructorArgs {
            mem: mem.clone(),
            device,
        };
        if let Ok(t) = MmioTransport::restore(args, &slot.transport) {
            transports.push(t);
        }
    }
    reach.devices_restored = transports.len();
    // Dropping the transports stops any worker a restore started.
    drop(transports);
    reach
}

fn restore_device(
    state: &VirtioDeviceState,
    dir: &Path,
    index: usize,
) -> Option<Arc<Mutex<dyn VirtioDevice>>> {
    match state {
        VirtioDeviceState::Rng(s) => {
            let d = RngDevice::restore(RngConstructorArgs, s).unwrap_or_else(|n| match n {});
            Some(Arc::new(Mutex::new(d)))
        }
        VirtioDeviceState::Block(s) => {
            // A disk of the saved size (when small), so restore gets past
            // its capacity check.
            let sectors = s.capacity_sectors.min(MAX_FUZZ_DISK_SECTORS);
            let disk = tempfile::tempfile_in(dir).ok()?;
            disk.set_len(sectors * 512).ok()?;
            let args = BlockConstructorArgs {
                disk,
                read_only: s.read_only,
            };
            let d = BlockDevice::restore(args, s).ok()?;
            Some(Arc::new(Mutex::new(d)))
        }
        VirtioDeviceState::Vsock(s) => {
            let uds_path = fresh_socket_path(dir, index);
            let args = VsockConstructorArgs {
                guest_cid: 3,
                uds_path,
            };
            let d = VsockDevice::restore(args, s).ok()?;
            Some(Arc::new(Mutex::new(d)))
        }
    }
}

fn fresh_socket_path(dir: &Path, index: usize) -> PathBuf {
    let path = dir.join(format!("v{index}.sock"));
    // A clone's socket must not exist yet; the last case may have left one.
    let _ = fs::remove_file(&path);
    path
}

fn write_file(path: &Path, bytes: &[u8]) {
    let mut f = File::create(path).expect("create a fuzz case file");
    f.write_all(bytes).expect("write a fuzz case file");
}

/// Reads fuzz bytes front to back; past the end everything is zero.
#[derive(Debug)]
pub struct FuzzInput<'a> {
    data: &'a [u8],
}

impl<'a> FuzzInput<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// The next `n` bytes, or what is left.
    pub fn take(&mut self, n: usize) -> Vec<u8> {
        let k = n.min(self.data.len());
        let (head, tail) = self.data.split_at(k);
        self.data = tail;
        head.to_vec()
    }

    pub fn u8(&mut self) -> u8 {
        self.fixed::<1>()[0]
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.fixed())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.fixed())
    }

    fn fixed<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let got = self.take(N);
        out[..got.len()].copy_from_slice(&got);
        out
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_case_round_trips_through_its_bytes() {
        let case = SnapshotCase {
            flags: 3,
            state: vec![1, 2, 3],
            mem_len: 4096,
            working_set: b"0x0 1\n".to_vec(),
            mem_head: vec![9; 10],
        };
        assert_eq!(SnapshotCase::parse(&case.to_bytes()), case);
    }
}
