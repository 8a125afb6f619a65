//! Assembles the integer-only test guests in `guests/` with GNU as and ld.
//! Each becomes `$OUT_DIR/guests/<name>.elf`: an ELF64 with a PVH note, so
//! QEMU can boot the very same file.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e} (install binutils)"));
    assert!(status.success(), "{shown} failed with {status}");
}

fn main() {
    let src = Path::new("guests");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("guests");
    std::fs::create_dir_all(&out).expect("create guest output dir");
    println!("cargo:rerun-if-changed=guests");

    let mut names = Vec::new();
    for entry in std::fs::read_dir(src).expect("read guests/") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("S") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let obj = out.join(format!("{name}.o"));
        let elf = out.join(format!("{name}.elf"));
        run(Command::new("as")
            .args(["--64", "-I"])
            .arg(src)
            .arg("-o")
            .arg(&obj)
            .arg(&path));
        run(Command::new("ld")
            .args([
                "-m",
                "elf_x86_64",
                "-nostdlib",
                "-static",
                "--build-id=none",
                "-T",
            ])
            .arg(src.join("guest.ld"))
            .arg("-o")
            .arg(&elf)
            .arg(&obj));
        names.push(name);
    }
    names.sort();

    let mut table =
        String::from("/// Every test guest, by name.\npub const ALL: &[(&str, &[u8])] = &[\n");
    for n in &names {
        table += &format!(
            "    ({n:?}, include_bytes!({:?})),\n",
            out.join(format!("{n}.elf"))
        );
    }
    table += "];\n";
    std::fs::write(out.join("table.rs"), table).expect("write guest table");
    println!("cargo:rustc-env=VITRINE_GUEST_DIR={}", out.display());
}
