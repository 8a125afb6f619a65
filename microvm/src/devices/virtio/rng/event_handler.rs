//! The rng worker: fills device-writable buffers with getrandom bytes.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use crate::devices::virtio::chain::{self, CheckedChain};
use crate::devices::virtio::queue::DeviceQueue;
use crate::devices::virtio::worker::{EpollToken, EventHandler, Registry, WorkerError};
use crate::devices::virtio::{ActivateContext, ActivateError, VirtioInterrupt};

/// Bytes handed out per request at most; a driver asking for more gets a
/// short answer (the used length says how much), as the spec allows.
pub const MAX_BYTES_PER_REQUEST: u32 = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RngToken {
    Queue,
}

impl EpollToken for RngToken {
    fn to_raw(self) -> u64 {
        0
    }
    fn from_raw(raw: u64) -> Option<Self> {
        (raw == 0).then_some(RngToken::Queue)
    }
}

/// Counters a test or the VMM can read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RngStats {
    pub served: u64,
    pub bytes: u64,
    /// Chains returned with nothing written because they broke the rules.
    pub dropped: u64,
}

#[derive(Debug)]
pub struct RngHandler {
    mem: GuestMemoryMmap,
    queue: DeviceQueue,
    irq: Arc<VirtioInterrupt>,
    scratch: Vec<u8>,
    stats: RngStats,
}

impl RngHandler {
    pub fn new(ctx: ActivateContext) -> Result<Self, ActivateError> {
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
            scratch: vec![0; MAX_BYTES_PER_REQUEST as usize],
            stats: RngStats::default(),
        })
    }

    pub fn stats(&self) -> RngStats {
        self.stats
    }

    pub fn queue(&self) -> &DeviceQueue {
        &self.queue
    }

    /// Serves what the driver has made available (see [`DeviceQueue::serve`]).
    pub fn process_queue(&mut self) {
        let (mem, scratch, stats) = (&self.mem, &mut self.scratch, &mut self.stats);
        self.queue.serve(mem, &self.irq, |chain| {
            let head = chain.head_index();
            match fill(mem, chain, scratch) {
                Ok(n) => {
                    stats.served += 1;
                    stats.bytes += u64::from(n);
                    n
                }
                Err(e) => {
                    log::warn!("virtio-rng: dropped request {head}: {e}");
                    stats.dropped += 1;
                    0
                }
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum FillError {
    #[error(transparent)]
    Chain(#[from] chain::ChainError),
    #[error("request has device-readable buffers")]
    Readable,
    #[error("getrandom failed: {0}")]
    Entropy(getrandom::Error),
    #[error("cannot write guest memory")]
    Write(#[source] std::io::Error),
}

fn fill(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    scratch: &mut [u8],
) -> Result<u32, FillError> {
    let checked = CheckedChain::check(&chain, mem)?;
    if checked.readable_len > 0 {
        return Err(FillError::Readable);
    }
    let n = checked.writable_len.min(MAX_BYTES_PER_REQUEST);
    let buf = &mut scratch[..n as usize];
    getrandom::fill(buf).map_err(FillError::Entropy)?;
    let mut w = chain::writer(chain, mem)?;
    std::io::Write::write_all(&mut w, buf).map_err(FillError::Write)?;
    Ok(n)
}

impl EventHandler for RngHandler {
    type Token = RngToken;

    fn init(&mut self, registry: &Registry<RngToken>) -> Result<(), WorkerError> {
        registry.add(self.queue.evt().as_raw_fd(), RngToken::Queue, EventSet::IN)
    }

    fn handle_event(&mut self, token: RngToken, _: EventSet, _: &Registry<RngToken>) {
        match token {
            RngToken::Queue => {
                self.queue.consume_notification();
                self.process_queue();
            }
        }
    }
}
