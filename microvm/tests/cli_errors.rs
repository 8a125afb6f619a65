//! `vitrine-vmm run` on bad input: one clear line on stderr, a non-zero
//! exit, never a panic. These stop before any vCPU runs, so they need no KVM
//! for the input checks that come first; the KVM-dependent ones say so.

mod tier;

use std::io::Write;
use std::process::{Command, Output};

use vitrine_microvm::test_guests;

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vitrine-vmm"))
        .args(args)
        .output()
        .expect("run vitrine-vmm")
}

/// Asserts the one-line error contract and returns the line.
fn single_error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    assert!(lines[0].starts_with("vitrine-vmm: error: "), "{stderr}");
    lines[0].to_string()
}

fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f
}

/// An ELF64 x86-64 with one PT_LOAD of `memsz` bytes at 1 MiB.
fn elf_with_segment(memsz: u64) -> Vec<u8> {
    let mut e = vec![0u8; 64 + 56 + 16];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // 64-bit
    e[5] = 1; // little-endian
    e[6] = 1;
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // entry
    e[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    e[52..54].copy_from_slice(&64u16.to_le_bytes());
    e[54..56].copy_from_slice(&56u16.to_le_bytes());
    e[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = &mut e[64..120];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[8..16].copy_from_slice(&120u64.to_le_bytes()); // offset
    ph[16..24].copy_from_slice(&0x10_0000u64.to_le_bytes());
    ph[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes());
    ph[32..40].copy_from_slice(&16u64.to_le_bytes()); // filesz
    ph[40..48].copy_from_slice(&memsz.to_le_bytes());
    e
}

#[test]
fn missing_kernel_is_named() {
    let line = single_error_line(&vmm(&["run", "--kernel", "/nonexistent/vmlinux"]));

    assert!(
        line.contains("cannot read kernel /nonexistent/vmlinux"),
        "{line}"
    );
    assert!(line.contains("No such file"), "{line}");
}

#[test]
fn non_elf_kernel_is_refused() {
    let f = file_with(b"#!/bin/sh\necho this is not a kernel\n");

    let line = single_error_line(&vmm(&["run", "--kernel", f.path().to_str().unwrap()]));

    assert!(
        line.contains("neither an x86-64 ELF (vmlinux) nor a bzImage"),
        "{line}"
    );
}

#[test]
fn empty_kernel_is_called_truncated() {
    let f = file_with(b"");

    let line = single_error_line(&vmm(&["run", "--kernel", f.path().to_str().unwrap()]));

    assert!(line.contains("truncated: only 0 bytes"), "{line}");
}

#[test]
fn truncated_elf_kernel_is_refused() {
    let full = std::fs::read(test_guests::path("hello")).unwrap();
    let f = file_with(&full[..200]);

    let line = single_error_line(&vmm(&["run", "--kernel", f.path().to_str().unwrap()]));

    assert!(line.contains("is truncated"), "{line}");
}

#[test]
fn elf_for_another_architecture_is_refused() {
    let mut bytes = std::fs::read(test_guests::path("hello")).unwrap();
    bytes[18] = 183; // EM_AARCH64
    let f = file_with(&bytes);

    let line = single_error_line(&vmm(&["run", "--kernel", f.path().to_str().unwrap()]));

    assert!(line.contains("neither an x86-64 ELF"), "{line}");
}

#[test]
fn memory_too_small_for_the_kernel_says_how_much_it_needs() {
    if !tier::kvm_or_skip("memory_too_small_for_the_kernel_says_how_much_it_needs") {
        return;
    }
    let f = file_with(&elf_with_segment(40 << 20));

    let line = single_error_line(&vmm(&[
        "run",
        "--kernel",
        f.path().to_str().unwrap(),
        "--mem-mib",
        "16",
    ]));

    assert!(
        line.contains("guest memory (16 MiB) is too small"),
        "{line}"
    );
    assert!(line.contains("it needs 41 MiB"), "{line}");
}

#[test]
fn command_line_over_the_linux_limit_is_refused() {
    if !tier::kvm_or_skip("command_line_over_the_linux_limit_is_refused") {
        return;
    }
    let long = "x".repeat(3000);
    let kernel = test_guests::path("hello");

    let line = single_error_line(&vmm(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        &long,
    ]));

    assert!(
        line.contains("command line is 3000 bytes; the limit is 2047"),
        "{line}"
    );
}

#[test]
fn zero_vcpus_and_tiny_memory_are_refused() {
    if !tier::kvm_or_skip("zero_vcpus_and_tiny_memory_are_refused") {
        return;
    }
    let kernel = test_guests::path("hello");
    let k = kernel.to_str().unwrap();

    let vcpus = single_error_line(&vmm(&["run", "--kernel", k, "--vcpus", "0"]));
    let mem = single_error_line(&vmm(&["run", "--kernel", k, "--mem-mib", "1"]));

    assert!(vcpus.contains("0 vCPUs requested"), "{vcpus}");
    assert!(
        mem.contains("guest memory of 1 MiB is outside 2..=65536 MiB"),
        "{mem}"
    );
}

#[test]
fn unknown_cpuid_feature_lists_the_known_ones() {
    let kernel = test_guests::path("hello");

    let line = single_error_line(&vmm(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cpuid-mask",
        "avx,warp-drive",
    ]));

    assert!(
        line.contains("unknown CPUID feature 'warp-drive'"),
        "{line}"
    );
    assert!(line.contains("known: sse3"), "{line}");
}

#[test]
fn guest_exit_code_becomes_the_process_exit_code() {
    if !tier::kvm_or_skip("guest_exit_code_becomes_the_process_exit_code") {
        return;
    }
    let hello = vmm(&[
        "run",
        "--kernel",
        test_guests::path("hello").to_str().unwrap(),
    ]);
    let fault = vmm(&[
        "run",
        "--kernel",
        test_guests::path("triple_fault").to_str().unwrap(),
    ]);
    let spin = vmm(&[
        "run",
        "--kernel",
        test_guests::path("endless").to_str().unwrap(),
        "--time-limit",
        "0.2",
    ]);

    assert_eq!(hello.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&hello.stdout),
        "Hello from a Vitrine test guest\n"
    );
    assert_eq!(fault.status.code(), Some(2));
    assert!(single_error_line(&fault).contains("triple-faulted"));
    assert_eq!(spin.status.code(), Some(124));
    assert!(single_error_line(&spin).contains("ran past its 200ms limit"));
}

#[test]
fn built_in_test_guests_run_by_name_and_unknown_names_are_listed() {
    if !tier::kvm_or_skip("built_in_test_guests_run_by_name_and_unknown_names_are_listed") {
        return;
    }

    let hello = vmm(&["run", "--test-guest", "hello"]);
    let unknown = vmm(&["run", "--test-guest", "nope"]);

    assert_eq!(hello.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&hello.stdout),
        "Hello from a Vitrine test guest\n"
    );
    let line = single_error_line(&unknown);
    assert!(
        line.contains("no test guest 'nope' (there are: counter, endless, halt, hello"),
        "{line}"
    );
}

#[test]
fn probe_exits_zero_and_names_a_reason_for_each_no() {
    let out = vmm(&["probe"]);
    let text = String::from_utf8_lossy(&out.stdout);

    assert!(out.status.success(), "{text}");
    assert!(text.contains("full Linux guests: "), "{text}");
    if text.contains("full Linux guests: no") {
        assert!(text.contains("full Linux guests: no ("), "{text}");
    }
}
