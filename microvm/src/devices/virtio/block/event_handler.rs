//! The block worker: parses each request chain and does the file I/O.
//!
//! A chain that breaks the ring rules, or has no device-writable byte for
//! the status, is returned with used length 0 (nothing can report an error
//! to the driver). Every other request gets a status byte in the last
//! writable byte of the chain: OK, IOERR (bad range, wrong buffer direction,
//! write to a read-only disk, I/O failure) or UNSUPP (request type not
//! offered: discard, write zeroes, secure erase, anything unknown).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::request::{check_data_range, RequestHeader, RequestType, Status, HEADER_SIZE};
use crate::devices::virtio::chain::{self, ChainError, CheckedChain};
use crate::devices::virtio::queue::DeviceQueue;
use crate::devices::virtio::worker::{EpollToken, EventHandler, Registry, WorkerError};
use crate::devices::virtio::{ActivateContext, ActivateError, VirtioInterrupt};

/// File I/O goes through a bounce buffer of this size, so a large request
/// costs time, not memory.
const CHUNK: usize = 128 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockToken {
    Queue,
}

impl EpollToken for BlockToken {
    fn to_raw(self) -> u64 {
        0
    }
    fn from_raw(raw: u64) -> Option<Self> {
        (raw == 0).then_some(BlockToken::Queue)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    pub ok: u64,
    pub ioerr: u64,
    pub unsupp: u64,
    /// Chains returned with used length 0.
    pub dropped: u64,
}

#[derive(Debug, thiserror::Error)]
enum DropReason {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("no device-writable byte for the status")]
    NoStatus,
    #[error("cannot write the status byte")]
    Status(#[source] std::io::Error),
}

#[derive(Debug)]
pub struct BlockHandler {
    mem: GuestMemoryMmap,
    queue: DeviceQueue,
    irq: Arc<VirtioInterrupt>,
    disk: Disk,
}

/// The backing file and what the device knows about it.
#[derive(Debug)]
struct Disk {
    file: File,
    read_only: bool,
    capacity_sectors: u64,
    id: [u8; 20],
    scratch: Vec<u8>,
    stats: BlockStats,
}

impl BlockHandler {
    pub fn new(
        ctx: ActivateContext,
        disk: File,
        read_only: bool,
        capacity_sectors: u64,
        id: [u8; 20],
    ) -> Result<Self, ActivateError> {
        let ActivateContext {
            mem,
            queues,
            queue_evts,
            interrupt,
            ..
        } = ctx;
        let got = queues.len();
        let (Some(queue), Some(evt)) = (queues.into_iter().next(), queue_evts.into_iter().next())
        else {
            return Err(ActivateError::QueueCount { expected: 1, got });
        };
        Ok(Self {
            mem,
            queue: DeviceQueue::new(0, queue, evt),
            irq: interrupt,
            disk: Disk {
                file: disk,
                read_only,
                capacity_sectors,
                id,
                scratch: vec![0; CHUNK],
                stats: BlockStats::default(),
            },
        })
    }

    pub fn stats(&self) -> BlockStats {
        self.disk.stats
    }

    pub fn queue(&self) -> &DeviceQueue {
        &self.queue
    }

    /// Serves what the driver has made available (see [`DeviceQueue::serve`]).
    pub fn process_queue(&mut self) {
        let (mem, disk) = (&self.mem, &mut self.disk);
        self.queue.serve(mem, &self.irq, |chain| {
            let head = chain.head_index();
            disk.handle_chain(mem, chain).unwrap_or_else(|e| {
                log::warn!("virtio-blk: dropped request {head}: {e}");
                disk.stats.dropped += 1;
                0
            })
        });
    }
}

impl Disk {
    /// Returns the used length: data bytes written plus the status byte.
    fn handle_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<u32, DropReason> {
        let checked = CheckedChain::check(&chain, mem)?;
        let Some(data_writable) = checked.writable_len.checked_sub(1) else {
            return Err(DropReason::NoStatus);
        };
        let mut reader = chain::reader(chain.clone(), mem)?;
        let mut writer = chain::writer(chain, mem)?;
        let mut status_writer = writer
            .split_at(data_writable as usize)
            .map_err(|e| DropReason::Chain(ChainError::Map(e)))?;
        let status = self.execute(checked.readable_len, &mut reader, &mut writer);
        match status {
            Status::Ok => self.stats.ok += 1,
            Status::IoErr => self.stats.ioerr += 1,
            Status::Unsupp => self.stats.unsupp += 1,
        }
        status_writer
            .write_all(&[status.byte()])
            .map_err(DropReason::Status)?;
        let written = u32::try_from(writer.bytes_written()).unwrap_or(data_writable);
        Ok(written.saturating_add(1))
    }

    fn execute(&mut self, readable_len: u32, reader: &mut Reader, writer: &mut Writer) -> Status {
        if (readable_len as usize) < HEADER_SIZE {
            return Status::IoErr;
        }
        let mut raw = [0u8; HEADER_SIZE];
        if reader.read_exact(&mut raw).is_err() {
            return Status::IoErr;
        }
        let header = RequestHeader::parse(&raw);
        let result = match header.request_type {
            RequestType::In => self.read_disk(header.sector, reader, writer),
            RequestType::Out => self.write_disk(header.sector, reader, writer),
            RequestType::Flush => self.flush(),
            RequestType::GetId => {
                let n = writer.available_bytes().min(self.id.len());
                writer.write_all(&self.id[..n]).map_err(|_| Status::IoErr)
            }
            RequestType::Discard
            | RequestType::WriteZeroes
            | RequestType::SecureErase
            | RequestType::Other(_) => Err(Status::Unsupp),
        };
        result.err().unwrap_or(Status::Ok)
    }

    fn read_disk(
        &mut self,
        sector: u64,
        reader: &Reader,
        writer: &mut Writer,
    ) -> Result<(), Status> {
        // Data for IN must be device-writable; readable bytes after the
        // header mean the driver got the direction wrong.
        if reader.available_bytes() != 0 {
            return Err(Status::IoErr);
        }
        let len = u32::try_from(writer.available_bytes()).map_err(|_| Status::IoErr)?;
        let range = check_data_range(sector, len, self.capacity_sectors)?;
        let mut offset = range.offset;
        let mut left = range.len as usize;
        while left > 0 {
            let n = left.min(self.scratch.len());
            let buf = &mut self.scratch[..n];
            self.file.read_exact_at(buf, offset).map_err(|e| {
                log::warn!("virtio-blk: read at {offset}: {e}");
                Status::IoErr
            })?;
            writer.write_all(buf).map_err(|_| Status::IoErr)?;
            offset += n as u64;
            left -= n;
        }
        Ok(())
    }

    fn write_disk(
        &mut self,
        sector: u64,
        reader: &mut Reader,
        writer: &Writer,
    ) -> Result<(), Status> {
        if self.read_only {
            return Err(Status::IoErr);
        }
        // Only the status may be device-writable in an OUT request.
        if writer.available_bytes() != 0 {
            return Err(Status::IoErr);
        }
        let len = u32::try_from(reader.available_bytes()).map_err(|_| Status::IoErr)?;
        let range = check_data_range(sector, len, self.capacity_sectors)?;
        let mut offset = range.offset;
        let mut left = range.len as usize;
        while left > 0 {
            let n = left.min(self.scratch.len());
            let buf = &mut self.scratch[..n];
            reader.read_exact(buf).map_err(|_| Status::IoErr)?;
            self.file.write_all_at(buf, offset).map_err(|e| {
                log::warn!("virtio-blk: write at {offset}: {e}");
                Status::IoErr
            })?;
            offset += n as u64;
            left -= n;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Status> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(|_| Status::IoErr)
    }
}

impl EventHandler for BlockHandler {
    type Token = BlockToken;

    fn init(&mut self, registry: &Registry<BlockToken>) -> Result<(), WorkerError> {
        registry.add(
            self.queue.evt().as_raw_fd(),
            BlockToken::Queue,
            EventSet::IN,
        )
    }

    fn handle_event(&mut self, token: BlockToken, _: EventSet, _: &Registry<BlockToken>) {
        match token {
            BlockToken::Queue => {
                self.queue.consume_notification();
                self.process_queue();
            }
        }
    }
}
