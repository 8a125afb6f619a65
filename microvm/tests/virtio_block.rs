//! virtio-blk over a real file, driven through the virtio-mmio transport:
//! reads, writes, flush, GET_ID, and what the config space announces.

mod virtio_driver;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_driver::{guest_memory, Driver, TestQueue};
use vitrine_microvm::devices::virtio::block::{BlockDevice, SEG_MAX};
use vitrine_microvm::devices::virtio::{device_type, VirtioDevice};
use vm_memory::GuestMemoryMmap;

/// Status bytes (virtio 1.2, 5.2.6).
const OK: u8 = 0;
const UNSUPP: u8 = 2;

/// A disk of `sectors` sectors; byte j of sector i is (i + j) mod 251.
fn disk(sectors: u64) -> File {
    let mut f = tempfile::tempfile().unwrap();
    let mut buf = Vec::new();
    for i in 0..sectors {
        for j in 0..512u64 {
            buf.push(u8::try_from((i + j) % 251).unwrap());
        }
    }
    f.write_all(&buf).unwrap();
    f
}

fn expected(sector: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|k| u8::try_from((sector + k / 512 + k % 512) % 251).unwrap())
        .collect()
}

struct Blk<'m> {
    d: Driver,
    q: TestQueue<'m>,
}

impl<'m> Blk<'m> {
    fn start(mem: &'m GuestMemoryMmap, dev: BlockDevice) -> Self {
        let mut d = Driver::new(mem, Arc::new(Mutex::new(dev)));
        let q = TestQueue::new(mem, 0, 128);
        d.start(&[&q]);
        Self { d, q }
    }

    /// Sends one request with `data` as (len, device_writable) segments;
    /// returns (used length, status byte, head) once the device is done.
    fn request(
        &mut self,
        request_type: u32,
        sector: u64,
        data: &[(u32, bool)],
        fill: &[&[u8]],
    ) -> (u32, u8, u16) {
        let mut bufs = vec![(16u32, false)];
        bufs.extend_from_slice(data);
        bufs.push((1, true));
        let head = self.q.add_buffers_pending(&bufs);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&request_type.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.q.write(self.q.slot(head), &h);
        for (i, bytes) in fill.iter().enumerate() {
            self.q.write(self.segment(head, i), bytes);
        }
        let before = self.q.used_idx();
        self.q.make_available(head);
        self.d.notify(0);
        assert!(self.q.wait_used(before.wrapping_add(1)));
        let (id, len) = self.q.used_elem(before);
        assert_eq!(id, u32::from(head));
        let status_desc = (head + 1 + u16::try_from(data.len()).unwrap()) % self.q.size;
        let status = self.q.read(self.q.slot(status_desc), 1)[0];
        (len, status, head)
    }

    /// Address of data segment `i` of the request at `head`.
    fn segment(&self, head: u16, i: usize) -> u64 {
        self.q
            .slot((head + 1 + u16::try_from(i).unwrap()) % self.q.size)
    }
}

#[test]
fn read_only_disk_announces_ro_and_its_capacity() {
    let mut dev = BlockDevice::new(disk(100), true).unwrap();

    let f = dev.avail_features();
    let mut cfg = [0u8; 16];
    dev.read_config(0, &mut cfg);

    assert_eq!(dev.device_type(), device_type::BLOCK);
    assert_ne!(f & 1 << VIRTIO_BLK_F_RO, 0);
    assert_eq!(f & 1 << VIRTIO_BLK_F_FLUSH, 0);
    assert_eq!(u64::from_le_bytes(cfg[..8].try_into().unwrap()), 100);
    assert_eq!(u32::from_le_bytes(cfg[12..].try_into().unwrap()), SEG_MAX);
    dev.write_config(0, &[0xff; 8]);
    dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg[..8].try_into().unwrap()), 100);
}

#[test]
fn writable_disk_announces_flush_not_ro() {
    let dev = BlockDevice::new(disk(1), false).unwrap();

    let f = dev.avail_features();

    assert_eq!(f & 1 << VIRTIO_BLK_F_RO, 0);
    assert_ne!(f & 1 << VIRTIO_BLK_F_FLUSH, 0);
}

#[test]
fn partial_last_sector_is_not_part_of_the_capacity() {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&[0u8; 1000]).unwrap();

    let dev = BlockDevice::new(f, true).unwrap();

    assert_eq!(dev.capacity_sectors(), 1);
}

#[test]
fn read_spanning_segments_returns_the_disk_contents() {
    let mem = guest_memory();
    let mut b = Blk::start(&mem, BlockDevice::new(disk(64), true).unwrap());

    let (len, status, head) = b.request(VIRTIO_BLK_T_IN, 7, &[(1024, true), (512, true)], &[]);

    assert_eq!((len, status), (1537, OK));
    assert_eq!(b.q.read(b.segment(head, 0), 1024), expected(7, 1024));
    assert_eq!(b.q.read(b.segment(head, 1), 512), expected(9, 512));
}

#[test]
fn large_read_crosses_the_bounce_buffer_intact() {
    let mem = guest_memory();
    let mut b = Blk::start(&mem, BlockDevice::new(disk(2048), true).unwrap());

    // Four 64 KiB segments: 256 KiB, twice the device's bounce buffer.
    let seg = (64 * 1024, true);
    let (len, status, head) = b.request(VIRTIO_BLK_T_IN, 100, &[seg; 4], &[]);

    assert_eq!((len, status), (4 * 64 * 1024 + 1, OK));
    for i in 0..4u64 {
        let got =
            b.q.read(b.segment(head, usize::try_from(i).unwrap()), 64 * 1024);
        assert_eq!(got, expected(100 + i * 128, 64 * 1024), "segment {i}");
    }
}

#[test]
fn write_then_read_back_on_a_writable_disk() {
    let mem = guest_memory();
    let mut file = disk(64);
    let dev = BlockDevice::new(file.try_clone().unwrap(), false).unwrap();
    let mut b = Blk::start(&mem, dev);
    let data = vec![0x42u8; 1024];

    let (wlen, wstatus, _) = b.request(VIRTIO_BLK_T_OUT, 10, &[(1024, false)], &[&data]);
    let (flen, fstatus, _) = b.request(VIRTIO_BLK_T_FLUSH, 0, &[], &[]);
    let (rlen, rstatus, head) = b.request(VIRTIO_BLK_T_IN, 10, &[(1024, true)], &[]);

    assert_eq!((wlen, wstatus), (1, OK));
    assert_eq!((flen, fstatus), (1, OK));
    assert_eq!((rlen, rstatus), (1025, OK));
    assert_eq!(b.q.read(b.segment(head, 0), 1024), data);
    let mut on_disk = vec![0u8; 1024];
    file.seek(SeekFrom::Start(10 * 512)).unwrap();
    file.read_exact(&mut on_disk).unwrap();
    assert_eq!(on_disk, data);
}

#[test]
fn get_id_returns_the_serial() {
    let mem = guest_memory();
    let dev = BlockDevice::new(disk(1), true)
        .unwrap()
        .with_id(b"image-1234");
    let mut b = Blk::start(&mem, dev);

    let (len, status, head) = b.request(VIRTIO_BLK_T_GET_ID, 0, &[(20, true)], &[]);

    assert_eq!((len, status), (21, OK));
    let mut want = b"image-1234".to_vec();
    want.resize(20, 0);
    assert_eq!(b.q.read(b.segment(head, 0), 20), want);
}

#[test]
fn unknown_request_type_is_unsupported() {
    let mem = guest_memory();
    let mut b = Blk::start(&mem, BlockDevice::new(disk(1), false).unwrap());

    let (len, status, _) = b.request(0x7777, 0, &[], &[]);

    assert_eq!((len, status), (1, UNSUPP));
}
