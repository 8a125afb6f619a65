//! KVM tier: snapshot a paused test guest, restore clones, and check that
//! they resume exactly, diverge, keep device state, and that corrupt
//! snapshot files are refused.

mod tier;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use vitrine_microvm::devices::serial::SerialSink;
use vitrine_microvm::lifecycle::GuestExit;
use vitrine_microvm::snapshot::file::{self, SnapshotFileError};
use vitrine_microvm::snapshot::{MEMORY_FILE, STATE_FILE};
use vitrine_microvm::test_guests::{self, counter};
use vitrine_microvm::vmm::{RestoreOptions, Vm, VmConfig, VmError};
use vm_memory::{Bytes, GuestAddress};

type Output = Arc<Mutex<Vec<u8>>>;

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.lock().unwrap()).into_owned()
}

/// Boots the counter guest with `params` and runs it to its pause.
fn paused_counter(params: &[u8], pause_after: Option<Duration>) -> (Vm, Output) {
    let mut config = VmConfig::new(test_guests::path("counter"));
    config.mem_mib = 64;
    config.time_limit = Some(Duration::from_secs(20));
    let out = Output::default();
    let mut vm = Vm::new(config, SerialSink::Capture(out.clone())).unwrap();
    vm.memory()
        .write_slice(params, GuestAddress(counter::PARAMS))
        .unwrap();
    vm.boot().unwrap();
    let exit = match pause_after {
        Some(d) => vm.run_for(d).unwrap(),
        None => vm.run().unwrap(),
    };
    assert!(
        matches!(exit, GuestExit::Ready | GuestExit::Paused),
        "{exit:?}: {}",
        text(&out)
    );
    (vm, out)
}

fn restore(dir: &Path, cid: u64) -> (Vm, Output) {
    let out = Output::default();
    let mut options = RestoreOptions::new(SerialSink::Capture(out.clone()));
    options.time_limit = Some(Duration::from_secs(20));
    options.vsock_cid = cid;
    (Vm::restore(dir, options).unwrap(), out)
}

fn count_lines(range: std::ops::RangeInclusive<u64>) -> String {
    range.map(|i| format!("count {i:016x}\n")).collect()
}

fn file_digest(path: &Path) -> (u64, u32) {
    let bytes = std::fs::read(path).unwrap();
    (bytes.len() as u64, crc32fast::hash(&bytes))
}

#[test]
fn restore_resumes_counter_where_snapshot_left_it() {
    if !tier::kvm_or_skip("restore_resumes_counter_where_snapshot_left_it") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut template, template_out) = paused_counter(&counter::params(Some(20), 40), None);
    template.snapshot(dir.path()).unwrap();

    let (mut clone, clone_out) = restore(dir.path(), 7);
    let exit = clone.run().unwrap();

    assert_eq!(text(&template_out), count_lines(0..=20));
    let out = text(&clone_out);
    let (identity, rest) = out.split_once('\n').unwrap();
    assert!(
        identity.starts_with("identity generation=0000000000000001 cid=0000000000000007"),
        "{identity}"
    );
    assert_eq!(rest, count_lines(21..=40));
    assert_eq!(exit, GuestExit::DebugExit(0));
    let count: u64 = clone
        .memory()
        .read_obj(GuestAddress(counter::COUNTER))
        .unwrap();
    assert_eq!(count, 40);
}

#[test]
fn a_pause_at_any_instant_resumes_without_losing_or_repeating_output() {
    if !tier::kvm_or_skip("a_pause_at_any_instant_resumes_without_losing_or_repeating_output") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let limit = 600;
    let (mut template, template_out) = paused_counter(
        &counter::params(None, limit),
        Some(Duration::from_millis(30)),
    );
    template.snapshot(dir.path()).unwrap();
    let at_pause: u64 = template
        .memory()
        .read_obj(GuestAddress(counter::COUNTER))
        .unwrap();

    let (mut clone, clone_out) = restore(dir.path(), 3);
    let exit = clone.run().unwrap();

    assert!(
        at_pause < limit,
        "paused after the guest finished; raise the limit"
    );
    let whole = text(&template_out) + &text(&clone_out);
    assert_eq!(whole, count_lines(0..=limit), "paused at count {at_pause}");
    assert_eq!(exit, GuestExit::DebugExit(0));
}

#[test]
fn a_guest_paused_on_a_serial_line_stops_right_after_it_and_a_clone_goes_on() {
    if !tier::kvm_or_skip(
        "a_guest_paused_on_a_serial_line_stops_right_after_it_and_a_clone_goes_on",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let limit = 300;
    let needle = "count 0000000000000064";
    let mut config = VmConfig::new(test_guests::path("counter"));
    config.mem_mib = 64;
    config.time_limit = Some(Duration::from_secs(20));
    let template_out = Output::default();
    let mut template = Vm::new(config, SerialSink::Capture(template_out.clone())).unwrap();
    template
        .memory()
        .write_slice(&counter::params(None, limit), GuestAddress(counter::PARAMS))
        .unwrap();
    template.boot().unwrap();
    template.pause_on_serial(needle);

    let exit = template.run().unwrap();
    template.snapshot(dir.path()).unwrap();
    let (mut clone, clone_out) = restore(dir.path(), 3);
    let clone_exit = clone.run().unwrap();

    assert_eq!(exit, GuestExit::Paused);
    assert!(template.serial_watch_fired());
    let before = text(&template_out);
    assert!(
        before.ends_with(needle),
        "the guest ran on past the line: ...{}",
        &before[before.len().saturating_sub(60)..]
    );
    assert_eq!(before + &text(&clone_out), count_lines(0..=limit));
    assert_eq!(clone_exit, GuestExit::DebugExit(0));
}

#[test]
fn vitrine_vmm_snapshot_on_a_serial_line_that_never_comes_writes_nothing() {
    if !tier::kvm_or_skip("vitrine_vmm_snapshot_on_a_serial_line_that_never_comes_writes_nothing") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("snap");

    let run = std::process::Command::new(env!("CARGO_BIN_EXE_vitrine-vmm"))
        .args(["snapshot", "--test-guest", "hello", "--snapshot-on-serial"])
        .arg("Goodbye")
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("before it reached its snapshot point"),
        "{stderr}"
    );
    assert!(!out.exists(), "no snapshot directory for a missed point");
}

#[test]
fn clones_diverge_and_never_write_the_template() {
    if !tier::kvm_or_skip("clones_diverge_and_never_write_the_template") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut template, _) = paused_counter(&counter::params(Some(5), 10), None);
    template.snapshot(dir.path()).unwrap();
    let mem_file = dir.path().join(MEMORY_FILE);
    let before = file_digest(&mem_file);

    let (mut a, a_out) = restore(dir.path(), 10);
    let (mut b, b_out) = restore(dir.path(), 11);
    a.memory()
        .write_obj(0xdead_beef_u64, GuestAddress(0x40_0000))
        .unwrap();
    assert_eq!(a.run().unwrap(), GuestExit::DebugExit(0));
    assert_eq!(b.run().unwrap(), GuestExit::DebugExit(0));

    let seed_of = |vm: &Vm| -> u64 {
        vm.memory()
            .read_obj(GuestAddress(counter::SEED_COPY))
            .unwrap()
    };
    let identity_seed =
        |vm: &Vm| u64::from_le_bytes(vm.identity().unwrap().seed[..8].try_into().unwrap());
    assert_eq!(seed_of(&a), identity_seed(&a));
    assert_eq!(seed_of(&b), identity_seed(&b));
    assert_ne!(seed_of(&a), seed_of(&b), "each clone got its own seed");
    assert!(
        text(&a_out).contains("cid=000000000000000a"),
        "{}",
        text(&a_out)
    );
    assert!(
        text(&b_out).contains("cid=000000000000000b"),
        "{}",
        text(&b_out)
    );
    let b_sees: u64 = b.memory().read_obj(GuestAddress(0x40_0000)).unwrap();
    assert_eq!(b_sees, 0, "B must not see A's write");
    assert_eq!(
        file_digest(&mem_file),
        before,
        "the template's memory file is unchanged"
    );
}

#[test]
fn restored_uart_keeps_the_scratch_register_the_guest_set() {
    if !tier::kvm_or_skip("restored_uart_keeps_the_scratch_register_the_guest_set") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut template, _) = paused_counter(&counter::params(Some(1), 2), None);
    template.snapshot(dir.path()).unwrap();

    let (mut clone, out) = restore(dir.path(), 3);
    clone.run().unwrap();

    let mark = format!("uart-scratch={:016x}", counter::SCRATCH_MARK);
    assert!(text(&out).contains(&mark), "{}", text(&out));
}

/// MSRs that move with time on their own: the TSC and its deadline.
const TIME_MSRS: [u32; 2] = [0x10, 0x6e0];
/// LAPIC timer current-count register: counts down while the VM exists.
const APIC_TMCCT: usize = 0x390;

fn field_bytes<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap()
}

#[test]
fn vcpu_state_round_trips_through_kvm_unchanged() {
    if !tier::kvm_or_skip("vcpu_state_round_trips_through_kvm_unchanged") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut template, _) = paused_counter(&counter::params(Some(3), 4), None);
    template.snapshot(dir.path()).unwrap();
    let first = file::read(&dir.path().join(STATE_FILE)).unwrap();

    let (mut clone, _) = restore(dir.path(), 3);
    let again_dir = tempfile::tempdir().unwrap();
    clone.snapshot(again_dir.path()).unwrap();
    let again = file::read(&again_dir.path().join(STATE_FILE)).unwrap();

    let (a, b) = (&first.vcpus[0], &again.vcpus[0]);
    let mut differ = Vec::new();
    let mut check = |name: &str, x: Vec<u8>, y: Vec<u8>| {
        if x != y {
            differ.push(name.to_string());
        }
    };
    check(
        "mp_state",
        field_bytes(&a.mp_state),
        field_bytes(&b.mp_state),
    );
    check("regs", field_bytes(&a.regs), field_bytes(&b.regs));
    check("sregs", field_bytes(&a.sregs), field_bytes(&b.sregs));
    check("xsave", field_bytes(&a.xsave), field_bytes(&b.xsave));
    check("xcrs", field_bytes(&a.xcrs), field_bytes(&b.xcrs));
    check(
        "debug_regs",
        field_bytes(&a.debug_regs),
        field_bytes(&b.debug_regs),
    );
    check("cpuid", field_bytes(&a.cpuid), field_bytes(&b.cpuid));
    let steady = |m: &[kvm_bindings::kvm_msr_entry]| -> Vec<(u32, u64)> {
        m.iter()
            .filter(|e| !TIME_MSRS.contains(&e.index))
            .map(|e| (e.index, e.data))
            .collect()
    };
    if steady(&a.msrs) != steady(&b.msrs) {
        differ.push("msrs".into());
    }
    let lapic = |l: &Option<kvm_bindings::kvm_lapic_state>| {
        l.map(|mut s| {
            s.regs[APIC_TMCCT..APIC_TMCCT + 4].fill(0);
            field_bytes(&s)
        })
    };
    if lapic(&a.lapic) != lapic(&b.lapic) {
        differ.push("lapic".into());
    }
    assert!(differ.is_empty(), "restore then save changed: {differ:?}");
    assert!(!a.msrs.is_empty(), "MSRs were saved");
}

#[test]
fn snapshot_of_a_running_or_finished_vm_is_refused() {
    if !tier::kvm_or_skip("snapshot_of_a_running_or_finished_vm_is_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = VmConfig::new(test_guests::path("hello"));
    config.mem_mib = 16;
    let mut vm = Vm::new(config, SerialSink::Discard).unwrap();
    vm.boot().unwrap();

    let before_run = vm.snapshot(dir.path());
    vm.run().unwrap();
    let after_exit = vm.snapshot(dir.path());

    assert!(matches!(before_run, Err(VmError::NotPaused)));
    assert!(matches!(after_exit, Err(VmError::NotPaused)));
}

fn valid_state_bytes() -> Vec<u8> {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let (mut t, _) = paused_counter(&counter::params(Some(1), 2), None);
            t.snapshot(dir.path()).unwrap();
            std::fs::read(dir.path().join(STATE_FILE)).unwrap()
        })
        .clone()
}

#[test]
fn corrupt_state_files_are_refused_with_the_reason() {
    if !tier::kvm_or_skip("corrupt_state_files_are_refused_with_the_reason") {
        return;
    }
    let good = valid_state_bytes();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        file::decode(&b).unwrap_err()
    };

    assert!(file::decode(&good).is_ok());
    assert!(matches!(
        with(&|b| b[0] = b'X'),
        SnapshotFileError::BadMagic
    ));
    assert!(matches!(
        with(&|b| b[8] = 9),
        SnapshotFileError::UnknownVersion { found: 9 }
    ));
    assert!(matches!(
        with(&|b| b.truncate(b.len() - 10)),
        SnapshotFileError::Truncated { .. }
    ));
    assert!(matches!(
        with(&|b| b.truncate(7)),
        SnapshotFileError::Truncated { .. }
    ));
    assert!(matches!(
        with(&|b| b.push(0)),
        SnapshotFileError::TrailingBytes(1)
    ));
    assert!(matches!(
        with(&|b| b[100] ^= 0x10),
        SnapshotFileError::BadCrc { .. }
    ));
    assert!(matches!(
        with(&|b| b[12..16].copy_from_slice(&u32::MAX.to_le_bytes())),
        SnapshotFileError::TooLarge { len: u32::MAX }
    ));
}

#[test]
fn restoring_a_corrupt_snapshot_is_one_clear_error() {
    if !tier::kvm_or_skip("restoring_a_corrupt_snapshot_is_one_clear_error") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut t, _) = paused_counter(&counter::params(Some(1), 2), None);
    t.snapshot(dir.path()).unwrap();
    let state = dir.path().join(STATE_FILE);
    let mut bytes = std::fs::read(&state).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&state, &bytes).unwrap();

    let err = Vm::restore(dir.path(), RestoreOptions::new(SerialSink::Discard)).unwrap_err();

    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

#[test]
fn a_memory_file_of_the_wrong_size_is_refused() {
    if !tier::kvm_or_skip("a_memory_file_of_the_wrong_size_is_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut t, _) = paused_counter(&counter::params(Some(1), 2), None);
    t.snapshot(dir.path()).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join(MEMORY_FILE))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();

    let err = Vm::restore(dir.path(), RestoreOptions::new(SerialSink::Discard)).unwrap_err();

    assert!(
        err.to_string()
            .contains("is 1048576 bytes; the state says 67108864"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any bytes at all: an error or a state, never a panic.
    #[test]
    fn state_decoder_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = file::decode(&bytes);
    }

    /// A valid header with an arbitrary body: the CRC or the decoder
    /// refuses it, without a panic.
    #[test]
    fn state_decoder_survives_arbitrary_bodies(body in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut b = file::MAGIC.to_vec();
        b.extend_from_slice(&file::VERSION.to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
        b.extend_from_slice(&body);
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        let _ = file::decode(&b);
    }
}

#[test]
fn every_single_byte_corruption_of_a_real_state_file_is_refused() {
    if !tier::kvm_or_skip("every_single_byte_corruption_of_a_real_state_file_is_refused") {
        return;
    }
    let good = valid_state_bytes();

    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x41;
        assert!(file::decode(&b).is_err(), "flip at byte {i} accepted");
    }
}

/// Pages of `vm`'s guest RAM mapped in this process right now.
fn mapped_pages(vm: &Vm) -> u64 {
    vitrine_microvm::snapshot::memory::working_set(vm.memory())
        .unwrap()
        .iter()
        .map(|r| r.pages)
        .sum()
}

#[test]
fn a_recorded_working_set_is_faulted_in_before_the_next_clone_runs() {
    if !tier::kvm_or_skip("a_recorded_working_set_is_faulted_in_before_the_next_clone_runs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut template, _) = paused_counter(&counter::params(Some(3), 30), None);
    template.snapshot(dir.path()).unwrap();
    let (mut first, _) = restore(dir.path(), 3);
    first.run().unwrap();
    let ranges = first.record_working_set(dir.path()).unwrap();
    let touched = mapped_pages(&first);

    let (cold, _) = restore(dir.path(), 4);
    let mut options = RestoreOptions::new(SerialSink::Discard);
    options.prefault = true;
    options.time_limit = Some(Duration::from_secs(20));
    let mut warm = Vm::restore(dir.path(), options).unwrap();
    let (cold_pages, warm_pages) = (mapped_pages(&cold), mapped_pages(&warm));

    assert!(
        ranges > 0 && touched > 0,
        "the first clone touched guest pages"
    );
    assert!(
        warm_pages >= touched,
        "prefault mapped {warm_pages} pages before the run; the working set has {touched}"
    );
    assert!(
        warm_pages > cold_pages,
        "without prefault only {cold_pages} pages are mapped"
    );
    assert_eq!(warm.run().unwrap(), GuestExit::DebugExit(0));
}
