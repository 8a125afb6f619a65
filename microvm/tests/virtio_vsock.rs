//! virtio-vsock end to end: a real Unix socket on the host side, the guest's
//! rings in guest memory, the device on its worker thread behind the
//! virtio-mmio transport. Host half and guest half of each exchange are in
//! the same test.

mod virtio_driver;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio_bindings::virtio_mmio as reg;
use virtio_driver::vsock_guest::{header, send, RxReader, GUEST_CID};
use virtio_driver::{guest_memory, Driver, TestQueue, WAIT};
use vitrine_microvm::devices::virtio::vsock::packet::{
    PacketHeader, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST,
    OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use vitrine_microvm::devices::virtio::vsock::{VsockDevice, VsockError};
use vitrine_microvm::devices::virtio::VirtioDevice;
use vm_memory::GuestMemoryMmap;

const RX_BUF: u32 = 4096 + 44;

struct Vm<'m> {
    d: Driver,
    rx: TestQueue<'m>,
    tx: TestQueue<'m>,
    _ev: TestQueue<'m>,
    reader: RxReader,
    uds: PathBuf,
    _dir: tempfile::TempDir,
}

impl<'m> Vm<'m> {
    fn start(mem: &'m GuestMemoryMmap) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let dev = Arc::new(Mutex::new(VsockDevice::new(GUEST_CID, &uds).unwrap()));
        let mut d = Driver::new(mem, dev);
        let (rx, tx, ev) = (
            TestQueue::new(mem, 0, 64),
            TestQueue::new(mem, 1, 64),
            TestQueue::new(mem, 2, 64),
        );
        d.start(&[&rx, &tx, &ev]);
        let reader = RxReader::new();
        reader.post(&rx, 32, RX_BUF);
        d.notify(0);
        Self {
            d,
            rx,
            tx,
            _ev: ev,
            reader,
            uds,
            _dir: dir,
        }
    }

    fn send(&mut self, hdr: &PacketHeader, payload: &[u8]) {
        send(&self.tx, hdr, payload);
        self.d.notify(1);
    }

    fn recv(&mut self) -> (PacketHeader, Vec<u8>) {
        let p = self.reader.recv(&self.rx);
        self.d.notify(0); // the buffer went back
        p
    }

    fn try_recv(&mut self, wait: Duration) -> Option<(PacketHeader, Vec<u8>)> {
        let p = self.reader.try_recv(&self.rx, wait);
        self.d.notify(0);
        p
    }

    /// Host connects and asks for guest port `port`; returns the socket
    /// and the REQUEST the guest saw.
    fn host_connect(&mut self, port: u32) -> (UnixStream, PacketHeader) {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        writeln!(s, "CONNECT {port}").unwrap();
        let (req, _) = self.recv();
        (s, req)
    }

    /// A host-initiated connection the guest accepted with `buf_alloc`.
    fn establish(&mut self, port: u32, buf_alloc: u32) -> (UnixStream, u32) {
        let (mut s, req) = self.host_connect(port);
        let mut resp = header(OP_RESPONSE, port, req.src_port);
        resp.buf_alloc = buf_alloc;
        self.send(&resp, &[]);
        assert_eq!(read_line(&mut s), format!("OK {}", req.src_port));
        (s, req.src_port)
    }

    /// Collects RW payloads for the connection until `n` bytes came.
    fn recv_data(&mut self, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < n {
            let (h, p) = self.recv();
            if h.op == OP_RW {
                got.extend_from_slice(&p);
            }
        }
        got
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        s.read_exact(&mut b).unwrap();
        if b[0] == b'\n' {
            return String::from_utf8(line).unwrap();
        }
        line.push(b[0]);
    }
}

/// True when the host socket reads EOF (the device closed its end).
fn host_sees_eof(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

#[test]
fn reserved_cid_is_refused() {
    let dir = tempfile::tempdir().unwrap();

    let err = VsockDevice::new(2, dir.path().join("v.sock")).unwrap_err();

    assert!(matches!(err, VsockError::Cid(2)));
}

#[test]
fn config_space_holds_the_guest_cid() {
    let dir = tempfile::tempdir().unwrap();
    let dev = VsockDevice::new(0x1234_5678, dir.path().join("v.sock")).unwrap();

    let mut b = [0u8; 8];
    dev.read_config(0, &mut b);

    assert_eq!(u64::from_le_bytes(b), 0x1234_5678);
}

#[test]
fn host_connect_reaches_guest_as_request() {
    let mem = guest_memory();
    let mut vm = Vm::start(&mem);

    let (_s, req) = vm.host_connect(1234);

    assert_eq!(req.op, OP_REQUEST);
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!(req.dst_port, 1234);
    assert!(req.src_port >= 1 << 30);
    assert_eq!(req.type_, TYPE_STREAM);
}

#[test]
fn guest_response_gives_host_the_ok_line() {
    let mem = guest_memory();
    let mut vm = Vm::start(&mem);
    let (mut s, req) = vm.host_connect(52);

    vm.send(&header(OP_RESPONSE, 52, req.src_port), &[]);

    assert_eq!(read_line(&mut s), format!("OK {}", req.src_port));
}

#[test]
fn data_flows_both_ways() {
    let mem = guest_memory();
    let mut vm = Vm::start(&mem);
    let (mut s, local) = vm.establish(52, 1 << 20);

    s.write_all(b"ping").unwrap();
    let got = vm.recv_data(4);
    vm.send(&header(OP_RW, 52, local), b"pong");
    let mut back = [0u8; 4];
    s.read_exact(&mut back).unwrap();

    assert_eq!(got, b"ping");
    assert_eq!(&back, b"pong");
}

#[test]
fn large_transfer_host_to_guest_arrives_intact() {
    let mem = guest_memory();
    let mut vm = Vm::start(&mem);
    let (s, local) = vm.establish(52, 1 << 20);
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| u8::try_from(i % 253).unwrap())
        .collect();
    let writer = {
        let data = data.clone();
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || s.write_all(&data).unwrap())
    };

    let mut got = Vec::new();
    while got.len() < data.len() {
        let (h, p) = vm.recv();
        if h.op == OP_RW {
            got.extend_from_slice(&p);
            // Tell the device what was consumed, as Linux does.
            let mut u = header(OP_CREDIT_UPDATE, 52, local);
            u.buf_alloc = 1 << 20;
            u.fwd_cnt = u32::try_from(got.len()).unwrap();
            vm.send(&u, &[]);
        }
    }
    writer.join().unwrap();

    assert_eq!(got, data);
}

#[test]
fn host_to_guest_respects_guest_credit() {
    let mem = guest_memory();
    let mut vm = Vm::start(&mem);
    let (mut s, local) = vm.establish(52, 4096);
    let data: Vec<u8> = (0..10_000u32)
        .map(|i| u8::try_from(i % 251).unwrap())
        .collect();
    s.write_all(&data).unwrap();

    let mut got = Vec::new();
    let mut saw_credit_request = false;
    for round in 1..=3u32 {
        // Take everything the device sends until it goes quiet.
        while let Some((h, p)) = vm.try_recv(Duration::from_millis(200)) {
            match h.op {
                OP_RW => got.extend_from_slice(&p),
                OP_CREDIT_REQUEST => saw_credit_request = true,
                _ => {}
            }
        }
        let limit = usize::try_from(4096 * round).unwrap().min(data.len());
        assert_eq!(got.len(), limit, "round {round}: device overran the credit");
        let mut u = header(OP_CREDIT_UPDATE, 52, local);
        u.buf_alloc = 4096;
        u.fwd_cnt = u32::try_from(got.len()).unwrap();
        vm.send(&u, &[]);
    }

    assert_eq!(got, data);
    assert!(saw_credit_request);
}

#[test]
fn guest_ignoring_host_credit_is_reset() {
    let mem = guest_memory();
    let mut vm = Vm::start(&mem);
    let (mut s, local) = vm.establish(52, 1 << 20);
    let chunk = vec![0x5au8; 64 * 1024];

    // The host never reads: the socket fills, then the 256 KiB the device
    // advertised, then the guest is over its credit.
    let mut rst = None;
    for _ in 0..64 {
        vm.send(&header(OP_RW, 52, local), &chunk);
        if let Some((h, _)) = vm.try_recv(Duration::from_millis(20)) {
            if h.op == OP_RST {
                rst = Some(h);
                break;
            }
        }
    }

    let rst = rst.expect("no RST for a guest that overran its credit");
    assert_eq!((rst.src_port, rst.dst_port), (local, 52));
    assert!(host_sees_eof(&mut s));
}

#[test]
fn guest_rst_closes_the_host_socket() {
    let mem = guest_memory();
    let mut vm = Vm::start(&mem);
    let (mut s, local) = vm.establish(52, 1 << 20);

    vm.send(&header(OP_RST, 52, local), &[]);

    assert!(host_sees_eof(&mut s));
}

#[test]
fn host_close_delivers_pending_data_then_shutdown() {
    let mem = guest_memory();
    let mut vm = Vm::start(&mem);
    let (mut s, local) = vm.establish(52, 1 << 20);

    s.write_all(b"last words").unwrap();
    drop(s);
    let got = vm.recv_data(10);
    let (h, _) = vm.recv();
    // The guest's RST finishes the close; nothing more should follow.
    vm.send(&header(OP_RST, 52, local), &[]);

    assert_eq!(got, b"last words");
    assert_eq!(h.op, OP_SHUTDOWN);
    assert_eq!(h.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    assert!(vm.try_recv(Duration::from_millis(200)).is_none());
}

#[test]
fn host_half_close_is_shutdown_send_and_guest_can_still_answer() {
    let mem = guest_memory();
    let mut vm = Vm::start(&mem);
    let (mut s, local) = vm.establish(52, 1 << 20);

    s.shutdown(Shutdown::Write).unwrap();
    let (h, _) = vm.recv();
    vm.send(&header(OP_RW, 52, local), b"reply");
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();

    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    assert_eq!(&b, b"reply");
}

#[test]
fn guest_full_shutdown_is_answered_with_rst_and_host_eof() {
    let mem = guest_memory();
    let mut vm = Vm::start(&mem);
    let (mut s, local) = vm.establish(52, 1 << 20);

    let mut sd = header(OP_SHUTDOWN, 52, local);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    vm.send(&sd, &[]);
    let (h, _) = vm.recv();

    assert_eq!(h.op, OP_RST);
    assert!(host_sees_eof(&mut s));
}

#[test]
fn guest_connect_is_relayed_to_the_port_socket() {
    let mem = guest_memory();
    let mut vm = Vm::start(&mem);
    let mut path = vm.uds.clone().into_os_string();
    path.push("_5000");
    let listener = UnixListener::bind(&path).unwrap();

    vm.send(&header(OP_REQUEST, 49152, 5000), &[]);
    let (resp, _) = vm.recv();
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(WAIT)).unwrap();
    vm.send(&header(OP_RW, 49152, 5000), b"hello host");
    let mut b = [0u8; 10];
    host.read_exact(&mut b).unwrap();
    host.write_all(b"hi guest").unwrap();
    let back = vm.recv_data(8);

    assert_eq!(resp.op, OP_RESPONSE);
    assert_eq!((resp.src_port, resp.dst_port), (5000, 49152));
    assert_eq!(&b, b"hello host");
    assert_eq!(back, b"hi guest");
}

#[test]
fn guest_connect_to_a_port_nobody_listens_on_gets_rst() {
    let mem = guest_memory();
    let mut vm = Vm::start(&mem);

    vm.send(&header(OP_REQUEST, 49152, 6000), &[]);
    let (h, _) = vm.recv();

    assert_eq!(h.op, OP_RST);
    assert_eq!((h.src_port, h.dst_port), (6000, 49152));
}

#[test]
fn packet_for_an_unknown_connection_gets_rst() {
    let mem = guest_memory();
    let mut vm = Vm::start(&mem);

    vm.send(&header(OP_RW, 1, 2), b"stray");
    let (h, _) = vm.recv();

    assert_eq!(h.op, OP_RST);
}

#[test]
fn malformed_connect_line_closes_the_host_socket() {
    let mem = guest_memory();
    let mut vm = Vm::start(&mem);
    let mut s = UnixStream::connect(&vm.uds).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();

    s.write_all(b"HELLO 52\n").unwrap();

    assert!(host_sees_eof(&mut s));
    assert!(vm.try_recv(Duration::from_millis(100)).is_none());
}

#[test]
fn guest_that_never_answers_a_request_gets_rst_and_host_eof() {
    let mem = guest_memory();
    let mut vm = Vm::start(&mem);
    let (mut s, req) = vm.host_connect(52);

    // No RESPONSE. The device gives up after its 2 s connect timeout.
    let (h, _) = vm.reader.try_recv(&vm.rx, Duration::from_secs(5)).unwrap();

    assert_eq!(h.op, OP_RST);
    assert_eq!(h.src_port, req.src_port);
    assert!(host_sees_eof(&mut s));
}

#[test]
fn device_reset_closes_every_host_connection() {
    let mem = guest_memory();
    let mut vm = Vm::start(&mem);
    let (mut a, _) = vm.establish(52, 1 << 20);
    let (mut b, _) = vm.establish(53, 1 << 20);

    vm.d.write(reg::VIRTIO_MMIO_STATUS, 0);

    assert!(host_sees_eof(&mut a));
    assert!(host_sees_eof(&mut b));
}

#[test]
fn socket_file_is_removed_with_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let dev = VsockDevice::new(3, &path).unwrap();
    assert!(path.exists());

    drop(dev);

    assert!(!path.exists());
}
