//! The 8250 UART at COM1 (vm-superio), with its output sent to a sink,
//! and optionally watched for a line that pauses the guest (so a kernel
//! can be snapshotted at a point of its boot named by its own log).

use std::fs::File;
use std::io::{self, LineWriter, Write};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::lifecycle::{GuestExit, Lifecycle};
use crate::snapshot::Persist;

/// Captured output beyond this is dropped: a guest cannot grow the VMM.
pub const CAPTURE_LIMIT: usize = 4 << 20;

/// Where guest serial output goes.
#[derive(Debug)]
pub enum SerialSink {
    /// Line-buffered to this process's stdout.
    Stdout(LineWriter<io::Stdout>),
    File(LineWriter<File>),
    /// Kept in memory (tests), up to [`CAPTURE_LIMIT`] bytes.
    Capture(Arc<Mutex<Vec<u8>>>),
    Discard,
}

impl SerialSink {
    pub fn stdout() -> Self {
        Self::Stdout(LineWriter::new(io::stdout()))
    }

    pub fn file(f: File) -> Self {
        Self::File(LineWriter::new(f))
    }

    /// Pushes out a trailing partial line (at the end of a run).
    pub fn flush_all(&mut self) -> io::Result<()> {
        match self {
            Self::Stdout(w) => w.flush(),
            Self::File(w) => w.flush(),
            Self::Capture(_) | Self::Discard => Ok(()),
        }
    }
}

impl Write for SerialSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Stdout(w) => w.write(buf),
            Self::File(w) => w.write(buf),
            Self::Capture(v) => {
                let mut v = v.lock().unwrap_or_else(|e| e.into_inner());
                let room = CAPTURE_LIMIT.saturating_sub(v.len());
                v.extend_from_slice(&buf[..buf.len().min(room)]);
                Ok(buf.len())
            }
            Self::Discard => Ok(buf.len()),
        }
    }

    /// The UART flushes after every byte; lines are enough, and cost one
    /// syscall each instead of one per character. See [`Self::flush_all`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The UART's interrupt line: an eventfd registered as an irqfd.
#[derive(Debug)]
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Pauses the guest ([`GuestExit::Paused`]) the moment its serial output
/// contains `needle` within one line. Fires once.
#[derive(Debug)]
pub struct SerialWatch {
    needle: Vec<u8>,
    /// The current line, at most `needle.len()` bytes of its end.
    tail: Vec<u8>,
    lifecycle: Arc<Lifecycle>,
    fired: bool,
}

impl SerialWatch {
    pub fn new(needle: impl Into<Vec<u8>>, lifecycle: Arc<Lifecycle>) -> Self {
        Self {
            needle: needle.into(),
            tail: Vec::new(),
            lifecycle,
            fired: false,
        }
    }

    /// Whether the text has been seen (and the pause asked for).
    pub fn fired(&self) -> bool {
        self.fired
    }

    fn observe(&mut self, bytes: &[u8]) {
        if self.fired || self.needle.is_empty() {
            return;
        }
        for &b in bytes {
            if b == b'\n' {
                self.tail.clear();
                continue;
            }
            if self.tail.len() == self.needle.len() {
                self.tail.remove(0);
            }
            self.tail.push(b);
            if self.tail == self.needle {
                self.fired = true;
                // The vCPU printing this stops at its next exit check; the
                // rest of its line reaches the sink of whoever runs next.
                self.lifecycle.finish(Ok(GuestExit::Paused));
                return;
            }
        }
    }
}

/// The UART's output: the sink, seen by the watch first.
#[derive(Debug)]
struct WatchedSink {
    sink: SerialSink,
    watch: Option<SerialWatch>,
}

impl Write for WatchedSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(w) = &mut self.watch {
            w.observe(buf);
        }
        self.sink.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}

impl WatchedSink {
    fn new(sink: SerialSink) -> Self {
        Self { sink, watch: None }
    }
}

pub struct SerialDevice {
    serial: Serial<IrqLine, vm_superio::serial::NoEvents, WatchedSink>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    pub fn new(irq: EventFd, sink: SerialSink) -> Self {
        Self {
            serial: Serial::new(IrqLine(irq), WatchedSink::new(sink)),
        }
    }

    pub fn flush(&mut self) {
        // Nothing useful can be done if the sink is gone (a closed pipe).
        let _ = self.serial.writer_mut().sink.flush_all();
    }

    /// Watches the output from now on, replacing any earlier watch.
    pub fn set_watch(&mut self, watch: SerialWatch) {
        self.serial.writer_mut().watch = Some(watch);
    }

    /// Whether the watch has fired.
    pub fn watch_fired(&self) -> bool {
        self.serial
            .writer()
            .watch
            .as_ref()
            .is_some_and(SerialWatch::fired)
    }
}

/// The UART registers and receive FIFO (vm-superio's `SerialState`, which
/// has no serde).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SerialPersistError {
    #[error("saved UART receive FIFO is larger than the device's")]
    FifoOverflow,
}

impl<'a> Persist<'a> for SerialDevice {
    type State = SerialState;
    /// The new interrupt line and output sink.
    type ConstructorArgs = (EventFd, SerialSink);
    type Error = SerialPersistError;

    fn save(&self) -> Result<SerialState, SerialPersistError> {
        let s = self.serial.state();
        Ok(SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        })
    }

    fn restore(
        (irq, sink): (EventFd, SerialSink),
        state: &SerialState,
    ) -> Result<Self, SerialPersistError> {
        let s = vm_superio::serial::SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let serial = Serial::from_state(
            &s,
            IrqLine(irq),
            vm_superio::serial::NoEvents,
            WatchedSink::new(sink),
        )
        .map_err(|_| SerialPersistError::FifoOverflow)?;
        Ok(Self { serial })
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(o), 1) => data[0] = self.serial.read(o),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(o), [value]) = (u8::try_from(offset), data) {
            // A failed write means the sink is gone; the guest must not notice.
            let _ = self.serial.write(o, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_written_to_thr_reach_the_sink() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut dev = SerialDevice::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            SerialSink::Capture(buf.clone()),
        );

        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }

        assert_eq!(&*buf.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn wide_accesses_are_ignored_and_read_as_all_ones() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut dev = SerialDevice::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            SerialSink::Capture(buf.clone()),
        );
        let mut data = [0u8; 2];

        dev.write(0, b"ab");
        dev.read(0, &mut data);

        assert!(buf.lock().unwrap().is_empty());
        assert_eq!(data, [0xff, 0xff]);
    }

    #[test]
    fn serial_state_round_trips_with_registers_and_fifo() {
        let mut dev = SerialDevice::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            SerialSink::Discard,
        );
        dev.write(7, &[0x5a]); // scratch
        dev.write(3, &[0x03]); // LCR: 8 bits
        let saved = dev.save().unwrap();

        let mut restored = SerialDevice::restore(
            (
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                SerialSink::Discard,
            ),
            &saved,
        )
        .unwrap();
        let mut scratch = [0u8];
        restored.read(7, &mut scratch);

        assert_eq!(scratch, [0x5a]);
        assert_eq!(restored.save().unwrap(), saved);
        assert_eq!(saved.line_control, 0x03);
    }

    #[test]
    fn a_saved_fifo_larger_than_the_device_is_refused() {
        let state = SerialState {
            in_buffer: vec![0; 1000],
            ..Default::default()
        };

        let r = SerialDevice::restore((EventFd::new(0).unwrap(), SerialSink::Discard), &state);

        assert!(matches!(r, Err(SerialPersistError::FifoOverflow)));
    }

    #[test]
    fn a_watched_line_pauses_the_guest_once_even_split_across_writes() {
        let lifecycle = Arc::new(Lifecycle::new());
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut dev = SerialDevice::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            SerialSink::Capture(buf.clone()),
        );
        dev.set_watch(SerialWatch::new("Run /init", lifecycle.clone()));

        for b in b"Run /\ninit\nxx Run /in" {
            dev.write(0, &[*b]);
        }
        let before = lifecycle.should_stop();
        for b in b"it as init process\n" {
            dev.write(0, &[*b]);
        }

        assert!(!before, "a needle split by a newline must not match");
        assert!(dev.watch_fired());
        assert_eq!(lifecycle.wait(None), Some(Ok(GuestExit::Paused)));
        assert!(buf.lock().unwrap().ends_with(b"init process\n"));
    }

    #[test]
    fn capture_stops_at_its_limit() {
        let buf = Arc::new(Mutex::new(vec![0u8; CAPTURE_LIMIT - 1]));
        let mut sink = SerialSink::Capture(buf.clone());

        sink.write_all(b"xyz").unwrap();

        assert_eq!(buf.lock().unwrap().len(), CAPTURE_LIMIT);
    }
}
