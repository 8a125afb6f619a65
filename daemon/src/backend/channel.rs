//! The framed byte stream between the host and one guest's shim.

use std::cell::Cell;
use std::io;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vitrine_shim::protocol::{FrameReader, FrameWriter, FramingError, GuestMessage, HostMessage};

/// A message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// No whole message arrived before the deadline. The stream may have
    /// stopped inside a frame, so the channel is unusable afterwards.
    #[error("no message from the guest within {0:?}")]
    TimedOut(Duration),
    /// The guest closed the stream between messages.
    #[error("the guest closed the stream")]
    Closed,
    /// An earlier time-out or framing error left the stream mid-frame.
    #[error("the channel broke earlier and cannot be used")]
    Broken,
    /// A frame was malformed, broke a cap, or the stream failed.
    #[error("guest stream failed")]
    Framing(#[from] FramingError),
    /// The stream could not be set up.
    #[error("cannot set up the guest stream")]
    Io(#[from] io::Error),
}

/// Host side of the protocol over one stream: receives `GuestMessage`s,
/// sends `HostMessage`s.
#[derive(Debug)]
pub struct GuestChannel {
    reader: FrameReader<DeadlineStream, GuestMessage>,
    writer: FrameWriter<UnixStream, HostMessage>,
    broken: bool,
}

/// The read half, whose every read(2) waits at most until the deadline of
/// the current `recv_until`: a guest that trickles a frame byte by byte
/// cannot stretch the wait.
#[derive(Debug)]
struct DeadlineStream {
    stream: UnixStream,
    // Set through FrameReader::get_ref, which is all the reader exposes.
    deadline: Cell<Instant>,
}

impl io::Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self
            .deadline
            .get()
            .saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

impl GuestChannel {
    /// Wraps a connected stream.
    pub fn new(stream: UnixStream) -> Result<Self, ChannelError> {
        let write_half = stream.try_clone()?;
        Ok(Self {
            reader: FrameReader::new(DeadlineStream {
                stream,
                deadline: Cell::new(Instant::now()),
            }),
            writer: FrameWriter::new(write_half),
            broken: false,
        })
    }

    /// Sends one message.
    pub fn send(&mut self, msg: &HostMessage) -> Result<(), ChannelError> {
        self.writer.send(msg).map_err(|e| self.fail(e))
    }

    /// Receives the next message, waiting at most until `deadline`.
    pub fn recv_until(&mut self, deadline: Instant) -> Result<GuestMessage, ChannelError> {
        if self.broken {
            return Err(ChannelError::Broken);
        }
        let waited = deadline.saturating_duration_since(Instant::now());
        self.reader.get_ref().deadline.set(deadline);
        match self.reader.recv() {
            Ok(Some(msg)) => Ok(msg),
            Ok(None) => Err(ChannelError::Closed),
            Err(FramingError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                self.broken = true;
                Err(ChannelError::TimedOut(waited))
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Receives the next message, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<GuestMessage, ChannelError> {
        self.recv_until(Instant::now() + timeout)
    }

    /// Waits up to `timeout` for the guest to send something (or close its
    /// end); `false` when it stayed silent. A frame is read whole by
    /// [`recv_until`](Self::recv_until), so nothing waits in a buffer that
    /// this would miss.
    pub fn wait_readable(&self, timeout: Duration) -> bool {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let stream = &self.reader.get_ref().stream;
        let timeout = Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds = [PollFd::new(stream, PollFlags::IN)];
        // An error (EINTR) counts as readable: the receive that follows
        // then reports whatever is wrong.
        poll(&mut fds, Some(&timeout)).map_or(true, |n| n > 0)
    }

    /// Whether the guest's end is still open and has sent nothing unasked,
    /// checked without blocking: what a VM kept warm must look like.
    pub fn idle_and_open(&self) -> bool {
        if self.broken {
            return false;
        }
        let stream = &self.reader.get_ref().stream;
        let mut byte = [0u8; 1];
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        matches!(
            rustix::net::recv(stream, &mut byte, flags),
            Err(rustix::io::Errno::AGAIN)
        )
    }

    fn fail(&mut self, e: FramingError) -> ChannelError {
        self.broken = true;
        ChannelError::Framing(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitrine_shim::protocol::{Capability, Ready};

    fn pair() -> (GuestChannel, UnixStream) {
        let (host, guest) = UnixStream::pair().unwrap();
        (GuestChannel::new(host).unwrap(), guest)
    }

    #[test]
    fn recv_returns_what_the_guest_sent() {
        let (mut channel, guest) = pair();
        let ready = GuestMessage::Ready(Ready {
            shim_version: "0.1.0".into(),
            capabilities: vec![Capability::Pdf],
        });
        FrameWriter::<_, GuestMessage>::new(&guest)
            .send(&ready)
            .unwrap();

        let got = channel.recv_timeout(Duration::from_secs(5)).unwrap();

        assert_eq!(got, ready);
    }

    #[test]
    fn send_reaches_the_guest() {
        let (mut channel, guest) = pair();

        channel.send(&HostMessage::Shutdown).unwrap();

        let got = FrameReader::<_, HostMessage>::new(&guest).recv().unwrap();
        assert_eq!(got, Some(HostMessage::Shutdown));
    }

    #[test]
    fn recv_times_out_and_then_refuses_a_half_read_stream() {
        let (mut channel, guest) = pair();
        // A length prefix and nothing more: the read stops mid-frame.
        std::io::Write::write_all(&mut &guest, &100u32.to_le_bytes()).unwrap();

        let first = channel.recv_timeout(Duration::from_millis(50)).unwrap_err();
        let second = channel.recv_timeout(Duration::from_millis(50)).unwrap_err();

        assert!(matches!(first, ChannelError::TimedOut(_)), "{first:?}");
        assert!(matches!(second, ChannelError::Broken), "{second:?}");
    }

    #[test]
    fn recv_ends_at_the_deadline_however_slowly_the_guest_trickles() {
        let (mut channel, guest) = pair();
        // The guest sends one byte of a 100-byte frame every 20 ms, for longer
        // than the 200 ms the host waits.
        let trickle = std::thread::spawn(move || {
            let mut guest = guest;
            std::io::Write::write_all(&mut guest, &100u32.to_le_bytes()).unwrap();
            for _ in 0..30 {
                std::thread::sleep(Duration::from_millis(20));
                if std::io::Write::write_all(&mut guest, &[0]).is_err() {
                    return;
                }
            }
        });
        let started = Instant::now();

        let err = channel
            .recv_timeout(Duration::from_millis(200))
            .unwrap_err();

        assert!(matches!(err, ChannelError::TimedOut(_)), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        drop(channel);
        trickle.join().unwrap();
    }

    #[test]
    fn recv_reports_a_clean_close() {
        let (mut channel, guest) = pair();
        drop(guest);

        let err = channel.recv_timeout(Duration::from_secs(5)).unwrap_err();

        assert!(matches!(err, ChannelError::Closed), "{err:?}");
    }

    #[test]
    fn recv_rejects_an_oversized_frame_prefix() {
        let (mut channel, guest) = pair();
        std::io::Write::write_all(&mut &guest, &u32::MAX.to_le_bytes()).unwrap();

        let err = channel.recv_timeout(Duration::from_secs(5)).unwrap_err();

        assert!(
            matches!(
                err,
                ChannelError::Framing(FramingError::FrameTooLarge(u32::MAX))
            ),
            "{err:?}"
        );
    }
}
