//! Finds DejaVu Sans Mono and copies it into OUT_DIR, so the guest binary
//! carries its font and the initramfs needs no font files.

use std::path::PathBuf;

const CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/TTF/DejaVuSansMono.ttf",
    "/usr/share/fonts/dejavu/DejaVuSansMono.ttf",
    "/usr/local/share/fonts/DejaVuSansMono.ttf",
];

fn main() {
    println!("cargo:rerun-if-env-changed=VITRINE_MONO_FONT");
    let explicit = std::env::var_os("VITRINE_MONO_FONT").map(PathBuf::from);
    let found = explicit
        .into_iter()
        .chain(CANDIDATES.iter().map(PathBuf::from))
        .find(|p| p.is_file());
    let Some(font) = found else {
        panic!(
            "DejaVu Sans Mono not found: install the Debian package `fonts-dejavu-core` \
             or set VITRINE_MONO_FONT to a monospace .ttf"
        );
    };
    println!("cargo:rerun-if-changed={}", font.display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::copy(&font, out.join("mono.ttf")).expect("copy font into OUT_DIR");
}
