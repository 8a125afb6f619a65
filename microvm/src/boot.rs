//! Loading a kernel and its boot information into guest memory.
//!
//! linux-loader does the loading; this module picks the protocol, checks the
//! image first so that bad input gets a precise error, places the initramfs
//! and command line, and writes `boot_params` (Linux 64-bit protocol) or
//! `hvm_start_info` (PVH).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, BzImage, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START,
    PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::arch::x86_64::regs::EntryMode;
use crate::memory::{low_ram_end, ram_ranges};

const E820_RAM: u32 = 1;
const PVH_START_INFO_MAGIC: u32 = 0x336e_c578;
const BOOT_PARAMS_HEADER_MAGIC: u32 = 0x5372_6448; // "HdrS"
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// A bzImage's 64-bit entry sits 0x200 past its protected-mode load address.
const BZIMAGE_ENTRY64_OFFSET: u64 = 0x200;
const PAGE: u64 = 0x1000;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot read kernel {}", .0.display())]
    KernelOpen(PathBuf, #[source] std::io::Error),
    #[error("kernel {} is truncated: {}", .0.display(), .1)]
    KernelTruncated(PathBuf, String),
    #[error("kernel {} is neither an x86-64 ELF (vmlinux) nor a bzImage", .0.display())]
    NotAKernel(PathBuf),
    #[error(
        "guest memory ({have_mib} MiB) is too small for kernel {}: it needs {need_mib} MiB",
        .path.display()
    )]
    MemoryTooSmall {
        path: PathBuf,
        need_mib: u64,
        have_mib: u64,
    },
    #[error("kernel {} has no PVH entry note, so it cannot boot with --boot pvh", .0.display())]
    NoPvhEntry(PathBuf),
    #[error("kernel {} could not be loaded: {}", .0.display(), .1)]
    Load(PathBuf, String),
    #[error("command line is {len} bytes; the limit is {max}", max = CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong { len: usize },
    #[error("command line is invalid: {0}")]
    Cmdline(String),
    #[error("cannot read initramfs {}", .0.display())]
    InitrdOpen(PathBuf, #[source] std::io::Error),
    #[error(
        "initramfs {} ({size} bytes) does not fit in guest memory above the kernel",
        .path.display()
    )]
    InitrdTooLarge { path: PathBuf, size: u64 },
    #[error("cannot write {0} into guest memory: {1}")]
    GuestWrite(&'static str, String),
}

/// Which boot protocol to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BootProtocol {
    /// PVH when the ELF has a PVH note, else the 64-bit Linux protocol.
    #[default]
    Auto,
    /// 32-bit PVH entry (what QEMU uses for `-kernel` ELF with a PVH note).
    Pvh,
    /// 64-bit Linux boot protocol with `boot_params`.
    Linux,
}

/// What the guest needs to start.
#[derive(Debug)]
pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    pub protocol: BootProtocol,
}

/// Where things landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedKernel {
    pub entry: EntryMode,
    pub kernel_end: u64,
    pub initrd: Option<(GuestAddress, u64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Elf,
    BzImage,
}

/// Builds a command line, enforcing Linux's size limit.
pub fn build_cmdline(text: &str) -> Result<Cmdline, BootError> {
    if text.len() >= CMDLINE_MAX_SIZE {
        return Err(BootError::CmdlineTooLong { len: text.len() });
    }
    let mut cmdline =
        Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    if !text.trim().is_empty() {
        cmdline
            .insert_str(text.trim())
            .map_err(|e| BootError::Cmdline(e.to_string()))?;
    }
    Ok(cmdline)
}

/// Loads kernel, initramfs and command line, and writes the boot protocol's
/// information block.
pub fn load(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    spec: &BootSpec<'_>,
) -> Result<LoadedKernel, BootError> {
    let path = spec.kernel.to_path_buf();
    let cmdline = build_cmdline(spec.cmdline)?;
    let mut file = File::open(spec.kernel).map_err(|e| BootError::KernelOpen(path.clone(), e))?;
    let format = preflight(&mut file, spec.kernel, ram_size)?;

    let (result, entry) = match format {
        Format::Elf => {
            let r = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                .map_err(|e| BootError::Load(path.clone(), e.to_string()))?;
            let elf_entry = r.kernel_load.0;
            let entry = match (spec.protocol, r.pvh_boot_cap) {
                (BootProtocol::Linux, _) => EntryMode::Linux64 { entry: elf_entry },
                (_, PvhBootCapability::PvhEntryPresent(addr)) => EntryMode::Pvh { entry: addr.0 },
                (BootProtocol::Pvh, _) => return Err(BootError::NoPvhEntry(path)),
                (BootProtocol::Auto, _) => EntryMode::Linux64 { entry: elf_entry },
            };
            (r, entry)
        }
        Format::BzImage => {
            if spec.protocol == BootProtocol::Pvh {
                return Err(BootError::NoPvhEntry(path));
            }
            let r = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                .map_err(|e| BootError::Load(path.clone(), e.to_string()))?;
            let entry = EntryMode::Linux64 {
                entry: r.kernel_load.0 + BZIMAGE_ENTRY64_OFFSET,
            };
            (r, entry)
        }
    };
    let kernel_end = result.kernel_end;

    let initrd = match spec.initrd {
        Some(p) => Some(load_initrd(mem, ram_size, kernel_end, p)?),
        None => None,
    };
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(|e| BootError::GuestWrite("command line", e.to_string()))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes_with_nul().len())
        .unwrap_or(1);

    match entry {
        EntryMode::Pvh { .. } => write_start_info(mem, ram_size, initrd)?,
        EntryMode::Linux64 { .. } => {
            write_boot_params(mem, ram_size, result.setup_header, cmdline_len, initrd)?
        }
    }
    Ok(LoadedKernel {
        entry,
        kernel_end,
        initrd,
    })
}

/// Identifies the image and checks that it is whole and fits in RAM, so
/// that the loader never fails with a vague "cannot read".
fn preflight(file: &mut File, path: &Path, ram_size: u64) -> Result<Format, BootError> {
    let p = path.to_path_buf();
    let len = file
        .metadata()
        .map_err(|e| BootError::KernelOpen(p.clone(), e))?
        .len();
    let mut head = [0u8; 0x268];
    let n = read_up_to(file, 0, &mut head).map_err(|e| BootError::KernelOpen(p.clone(), e))?;
    let head = &head[..n];

    if head.starts_with(b"\x7fELF") {
        let need = elf_memory_end(file, head, len, path)?;
        check_fits(path, need, ram_size)?;
        return Ok(Format::Elf);
    }
    if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        if head.len() < 0x264 {
            return Err(BootError::KernelTruncated(
                p,
                "setup header cut short".into(),
            ));
        }
        // setup_sects of 0 means 4, for the oldest kernels.
        let setup_sects = match head[0x1f1] {
            0 => 4,
            n => u64::from(n),
        };
        let setup_len = (setup_sects + 1) * 512;
        let syssize = u64::from(u32::from_le_bytes(
            head[0x1f4..0x1f8].try_into().unwrap_or_default(),
        ));
        if len < setup_len + syssize * 16 {
            return Err(BootError::KernelTruncated(
                p,
                format!(
                    "{len} bytes, but its header declares {}",
                    setup_len + syssize * 16
                ),
            ));
        }
        // init_size: the memory the kernel needs to decompress and run.
        let init_size = u64::from(u32::from_le_bytes(
            head[0x260..0x264].try_into().unwrap_or_default(),
        ));
        check_fits(path, HIMEM_START + init_size.max(len - setup_len), ram_size)?;
        return Ok(Format::BzImage);
    }
    if n < 4 {
        return Err(BootError::KernelTruncated(p, format!("only {n} bytes")));
    }
    Err(BootError::NotAKernel(p))
}

fn check_fits(path: &Path, need: u64, ram_size: u64) -> Result<(), BootError> {
    if need > low_ram_end(ram_size) {
        return Err(BootError::MemoryTooSmall {
            path: path.to_path_buf(),
            need_mib: need.div_ceil(1 << 20),
            have_mib: ram_size >> 20,
        });
    }
    Ok(())
}

/// The end of the highest loadable segment, after checking that the file
/// holds every header and segment it declares.
fn elf_memory_end(file: &mut File, head: &[u8], len: u64, path: &Path) -> Result<u64, BootError> {
    let p = path.to_path_buf();
    let truncated = |what: &str| BootError::KernelTruncated(p.clone(), what.to_string());
    if head.len() < 64 {
        return Err(truncated("ELF header cut short"));
    }
    if head[4] != 2 || head[5] != 1 || u16::from_le_bytes([head[18], head[19]]) != 62 {
        return Err(BootError::NotAKernel(p));
    }
    let phoff = u64::from_le_bytes(head[32..40].try_into().unwrap_or_default());
    let phentsize = u64::from(u16::from_le_bytes([head[54], head[55]]));
    let phnum = u64::from(u16::from_le_bytes([head[56], head[57]]));
    if phentsize != 56 {
        return Err(BootError::Load(
            p,
            format!("program header size {phentsize}, not 56"),
        ));
    }
    let table_end = phoff
        .checked_add(phnum * phentsize)
        .filter(|&e| e <= len)
        .ok_or_else(|| truncated("program headers past end of file"))?;
    let mut table = vec![0u8; usize::try_from(table_end - phoff).unwrap_or(0)];
    read_up_to(file, phoff, &mut table).map_err(|e| BootError::KernelOpen(p.clone(), e))?;

    let mut end = 0u64;
    for ph in table.chunks_exact(56) {
        let field = |o: usize| u64::from_le_bytes(ph[o..o + 8].try_into().unwrap_or_default());
        if u32::from_le_bytes(ph[0..4].try_into().unwrap_or_default()) != 1 {
            continue; // not PT_LOAD
        }
        let (offset, paddr, filesz, memsz) = (field(8), field(24), field(32), field(40));
        if offset.checked_add(filesz).is_none_or(|e| e > len) {
            return Err(truncated("a loadable segment runs past end of file"));
        }
        end = end.max(paddr.saturating_add(memsz));
    }
    if end == 0 {
        return Err(BootError::Load(p, "no loadable segment".into()));
    }
    Ok(end)
}

fn read_up_to(file: &mut File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    file.seek(SeekFrom::Start(offset))?;
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Places the initramfs page-aligned at the top of low RAM, above the kernel.
fn load_initrd(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    kernel_end: u64,
    path: &Path,
) -> Result<(GuestAddress, u64), BootError> {
    let p = path.to_path_buf();
    let mut file = File::open(path).map_err(|e| BootError::InitrdOpen(p.clone(), e))?;
    let size = file
        .metadata()
        .map_err(|e| BootError::InitrdOpen(p.clone(), e))?
        .len();
    let too_large = || BootError::InitrdTooLarge {
        path: p.clone(),
        size,
    };
    let addr = low_ram_end(ram_size)
        .checked_sub(size)
        .map(|a| a & !(PAGE - 1))
        .filter(|&a| a >= kernel_end.next_multiple_of(PAGE))
        .ok_or_else(too_large)?;
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| BootError::InitrdOpen(p.clone(), std::io::Error::other(e.to_string())))?;
    Ok((GuestAddress(addr), size))
}

fn e820_ram(ram_size: u64) -> Vec<(u64, u64)> {
    let mut out = vec![(0, EBDA_START)];
    for (start, len) in ram_ranges(ram_size) {
        let (s, e) = (start.0.max(HIMEM_START), start.0 + len);
        if e > s {
            out.push((s, e - s));
        }
    }
    debug_assert!(out
        .iter()
        .all(|(s, l)| s + l <= MMIO_GAP_START || *s >= MMIO_GAP_END));
    out
}

fn write_boot_params(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<(GuestAddress, u64)>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = BOOT_PARAMS_HEADER_MAGIC;
    params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    params.hdr.cmd_line_ptr = u32::try_from(CMDLINE_START).unwrap_or_default();
    params.hdr.cmdline_size = u32::try_from(cmdline_len).unwrap_or_default();
    if let Some((addr, size)) = initrd {
        // Both fit in 32 bits: the initramfs sits below the MMIO gap.
        params.hdr.ramdisk_image = u32::try_from(addr.0).unwrap_or_default();
        params.hdr.ramdisk_size = u32::try_from(size).unwrap_or_default();
    }
    let ram = e820_ram(ram_size);
    for (i, (addr, size)) in ram.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: E820_RAM,
        };
    }
    params.e820_entries = u8::try_from(ram.len()).unwrap_or_default();
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| BootError::GuestWrite("boot_params", e.to_string()))
}

fn write_start_info(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    initrd: Option<(GuestAddress, u64)>,
) -> Result<(), BootError> {
    let memmap: Vec<_> = e820_ram(ram_size)
        .into_iter()
        .map(|(addr, size)| hvm_memmap_table_entry {
            addr,
            size,
            type_: E820_RAM,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: PVH_START_INFO_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: u32::try_from(memmap.len()).unwrap_or_default(),
        ..Default::default()
    };
    if initrd.is_some() {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if let Some((addr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr: addr.0,
            size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(|e| BootError::GuestWrite("PVH start_info", e.to_string()))
}
