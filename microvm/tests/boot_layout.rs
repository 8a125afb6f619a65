//! Where the kernel, boot information, command line and initramfs land in
//! guest memory, for both boot protocols. No vCPU runs: these read the
//! memory that a guest would find at its first instruction.

use std::io::Write;

use linux_loader::loader::bootparam::boot_params;
use vitrine_microvm::arch::x86_64::layout::{
    CMDLINE_START, EBDA_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START,
    ZERO_PAGE_START,
};
use vitrine_microvm::arch::x86_64::regs::EntryMode;
use vitrine_microvm::boot::{self, BootError, BootProtocol, BootSpec};
use vitrine_microvm::memory;
use vitrine_microvm::test_guests;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

const MEM_MIB: u32 = 64;
const MEM: u64 = (MEM_MIB as u64) << 20;

/// Byte `i` of a non-repeating-per-page test pattern.
fn pattern_byte(i: usize) -> u8 {
    u8::try_from(i % 251).unwrap()
}

fn initrd_file(len: usize) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let body: Vec<u8> = (0..len).map(pattern_byte).collect();
    f.write_all(&body).unwrap();
    f
}

fn read_boot_params(mem: &GuestMemoryMmap) -> boot_params {
    let mut p = boot_params::default();
    mem.read_slice(p.as_mut_slice(), GuestAddress(ZERO_PAGE_START))
        .unwrap();
    p
}

fn read_cstr(mem: &GuestMemoryMmap, addr: u64) -> String {
    let mut out = Vec::new();
    for i in 0..4096 {
        let b: u8 = mem.read_obj(GuestAddress(addr + i)).unwrap();
        if b == 0 {
            break;
        }
        out.push(b);
    }
    String::from_utf8(out).unwrap()
}

fn assert_initrd_at_top_of_ram(mem: &GuestMemoryMmap, addr: u64, size: u64, kernel_end: u64) {
    assert_eq!(addr % 4096, 0, "page-aligned");
    assert!(addr >= kernel_end, "above the kernel");
    assert!(
        addr + size <= MEM && MEM - (addr + size) < 4096,
        "at the top of RAM"
    );
    let mut got = vec![0u8; usize::try_from(size).unwrap()];
    mem.read_slice(&mut got, GuestAddress(addr)).unwrap();
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == pattern_byte(i)),
        "initrd bytes intact"
    );
}

#[test]
fn linux_protocol_fills_boot_params_e820_cmdline_and_initrd() {
    let ram = memory::create(MEM_MIB).unwrap();
    let initrd = initrd_file(300_000);
    let spec = BootSpec {
        kernel: &test_guests::path("hello"),
        initrd: Some(initrd.path()),
        cmdline: "console=ttyS0 reboot=k quiet",
        protocol: BootProtocol::Linux,
    };

    let loaded = boot::load(&ram.mem, ram.size, &spec).unwrap();

    let EntryMode::Linux64 { entry } = loaded.entry else {
        panic!("expected the 64-bit entry, got {:?}", loaded.entry);
    };
    assert!(entry >= HIMEM_START && entry < loaded.kernel_end);
    let p = read_boot_params(&ram.mem);
    let hdr = p.hdr;
    assert_eq!({ hdr.header }, 0x5372_6448);
    assert_eq!({ hdr.boot_flag }, 0xaa55);
    assert_eq!(hdr.type_of_loader, 0xff);
    assert_eq!(u64::from(hdr.cmd_line_ptr), CMDLINE_START);
    assert_eq!(
        hdr.cmdline_size as usize,
        "console=ttyS0 reboot=k quiet".len() + 1
    );
    assert_eq!(
        read_cstr(&ram.mem, CMDLINE_START),
        "console=ttyS0 reboot=k quiet"
    );
    let (ird_addr, ird_size) = (u64::from(hdr.ramdisk_image), u64::from(hdr.ramdisk_size));
    assert_eq!(ird_size, 300_000);
    assert_eq!(Some((GuestAddress(ird_addr), ird_size)), loaded.initrd);
    assert_initrd_at_top_of_ram(&ram.mem, ird_addr, ird_size, loaded.kernel_end);
    let e820: Vec<_> = p.e820_table[..usize::from(p.e820_entries)]
        .iter()
        .map(|e| (e.addr, e.size, e.r#type))
        .collect();
    assert_eq!(
        e820,
        vec![(0, EBDA_START, 1), (HIMEM_START, MEM - HIMEM_START, 1)]
    );
}

#[test]
fn pvh_protocol_fills_start_info_memmap_and_module_list() {
    let ram = memory::create(MEM_MIB).unwrap();
    let initrd = initrd_file(8192);
    let spec = BootSpec {
        kernel: &test_guests::path("hello"),
        initrd: Some(initrd.path()),
        cmdline: "console=ttyS0",
        protocol: BootProtocol::Auto,
    };

    let loaded = boot::load(&ram.mem, ram.size, &spec).unwrap();

    assert!(
        matches!(loaded.entry, EntryMode::Pvh { .. }),
        "PVH note is honoured"
    );
    let word = |a: u64| -> u64 { ram.mem.read_obj(GuestAddress(a)).unwrap() };
    let dword = |a: u64| -> u32 { ram.mem.read_obj(GuestAddress(a)).unwrap() };
    assert_eq!(dword(PVH_INFO_START), 0x336e_c578, "magic");
    assert_eq!(dword(PVH_INFO_START + 12), 1, "nr_modules");
    assert_eq!(word(PVH_INFO_START + 16), PVH_MODLIST_START);
    assert_eq!(word(PVH_INFO_START + 24), CMDLINE_START);
    assert_eq!(word(PVH_INFO_START + 40), PVH_MEMMAP_START);
    assert_eq!(dword(PVH_INFO_START + 48), 2, "memmap entries");
    assert_eq!(read_cstr(&ram.mem, CMDLINE_START), "console=ttyS0");
    let (mod_addr, mod_size) = (word(PVH_MODLIST_START), word(PVH_MODLIST_START + 8));
    assert_eq!(mod_size, 8192);
    assert_initrd_at_top_of_ram(&ram.mem, mod_addr, mod_size, loaded.kernel_end);
    assert_eq!(
        (
            word(PVH_MEMMAP_START),
            word(PVH_MEMMAP_START + 8),
            dword(PVH_MEMMAP_START + 16)
        ),
        (0, EBDA_START, 1)
    );
    assert_eq!(
        (word(PVH_MEMMAP_START + 24), word(PVH_MEMMAP_START + 32)),
        (HIMEM_START, MEM - HIMEM_START)
    );
}

/// A minimal bzImage: 4 setup sectors after the boot sector, then a payload.
fn synthetic_bzimage(payload: &[u8]) -> tempfile::NamedTempFile {
    let mut img = vec![0u8; 5 * 512];
    img[0x1f1] = 4; // setup_sects
    let syssize = u32::try_from(payload.len().div_ceil(16)).unwrap();
    img[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x211] = 0x01; // LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    img[0x260..0x264].copy_from_slice(&(4u32 << 20).to_le_bytes()); // init_size
    img.extend_from_slice(payload);
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&img).unwrap();
    f
}

#[test]
fn bzimage_loads_its_payload_at_1_mib_and_keeps_its_setup_header() {
    let ram = memory::create(MEM_MIB).unwrap();
    let payload: Vec<u8> = (0..4096).map(pattern_byte).collect();
    let kernel = synthetic_bzimage(&payload);
    let spec = BootSpec {
        kernel: kernel.path(),
        initrd: None,
        cmdline: "console=ttyS0",
        protocol: BootProtocol::Auto,
    };

    let loaded = boot::load(&ram.mem, ram.size, &spec).unwrap();

    assert_eq!(
        loaded.entry,
        EntryMode::Linux64 {
            entry: HIMEM_START + 0x200
        }
    );
    let mut got = vec![0u8; payload.len()];
    ram.mem
        .read_slice(&mut got, GuestAddress(HIMEM_START))
        .unwrap();
    assert_eq!(got, payload);
    let hdr = read_boot_params(&ram.mem).hdr;
    assert_eq!(
        { hdr.version },
        0x020f,
        "setup header copied from the image"
    );
    assert_eq!(hdr.type_of_loader, 0xff);
    assert_eq!((hdr.ramdisk_image, hdr.ramdisk_size), (0, 0));
}

#[test]
fn pvh_is_refused_for_a_bzimage() {
    let ram = memory::create(MEM_MIB).unwrap();
    let kernel = synthetic_bzimage(&[0; 64]);
    let spec = BootSpec {
        kernel: kernel.path(),
        initrd: None,
        cmdline: "",
        protocol: BootProtocol::Pvh,
    };

    assert!(matches!(
        boot::load(&ram.mem, ram.size, &spec),
        Err(BootError::NoPvhEntry(_))
    ));
}

#[test]
fn an_initrd_that_cannot_fit_above_the_kernel_is_refused() {
    let ram = memory::create(4).unwrap();
    let initrd = initrd_file(3 << 20);
    let spec = BootSpec {
        kernel: &test_guests::path("hello"),
        initrd: Some(initrd.path()),
        cmdline: "",
        protocol: BootProtocol::Auto,
    };

    let err = boot::load(&ram.mem, ram.size, &spec).unwrap_err();

    assert!(
        matches!(err, BootError::InitrdTooLarge { size, .. } if size == 3 << 20),
        "{err}"
    );
}

#[test]
fn a_truncated_bzimage_names_the_missing_length() {
    let ram = memory::create(MEM_MIB).unwrap();
    let kernel = synthetic_bzimage(&[0; 4096]);
    let full = std::fs::read(kernel.path()).unwrap();
    std::fs::write(kernel.path(), &full[..full.len() - 1000]).unwrap();
    let spec = BootSpec {
        kernel: kernel.path(),
        initrd: None,
        cmdline: "",
        protocol: BootProtocol::Auto,
    };

    let err = boot::load(&ram.mem, ram.size, &spec).unwrap_err();

    assert!(matches!(err, BootError::KernelTruncated(..)), "{err}");
    assert!(err.to_string().contains("header declares"), "{err}");
}
