//! The virtio-vsock packet header (virtio 1.2, 5.10.6) and the checks a
//! packet from the guest must pass before the muxer looks at it.

/// `struct virtio_vsock_hdr` is 44 bytes, packed, little endian.
pub const HEADER_SIZE: usize = HEADER_LEN as usize;
pub const HEADER_LEN: u32 = 44;
/// The host's CID, as the guest addresses it.
pub const HOST_CID: u64 = 2;
/// Largest payload in one packet, either way. Linux uses the same bound
/// (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PAYLOAD: u32 = 64 * 1024;

pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive no more / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl PacketHeader {
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |o: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[o..o + 4]);
            u32::from_le_bytes(a)
        };
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a packet from the guest is not acted on.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("source CID {0} is not the guest's")]
    SrcCid(u64),
    #[error("destination CID {0} is not the host")]
    DstCid(u64),
    #[error("socket type {0} is not stream")]
    Type(u16),
    #[error("unknown op {0}")]
    Op(u16),
    #[error("payload length {0} is over the 64 KiB limit")]
    TooLong(u32),
    #[error("header says {claimed} payload bytes, the chain holds {present}")]
    Short { claimed: u32, present: u32 },
}

impl PacketError {
    /// Whether the sender gets an RST. Misaddressed packets are dropped
    /// silently, as there is no connection to reset.
    pub fn wants_rst(&self) -> bool {
        !matches!(self, PacketError::SrcCid(_) | PacketError::DstCid(_))
    }
}

/// Checks a guest packet: addressing, type, op and that `len` fits both the
/// limit and the `payload_present` bytes that follow the header.
pub fn check_guest_packet(
    hdr: &PacketHeader,
    guest_cid: u64,
    payload_present: u32,
) -> Result<(), PacketError> {
    if hdr.src_cid != guest_cid {
        return Err(PacketError::SrcCid(hdr.src_cid));
    }
    if hdr.dst_cid != HOST_CID {
        return Err(PacketError::DstCid(hdr.dst_cid));
    }
    if hdr.type_ != TYPE_STREAM {
        return Err(PacketError::Type(hdr.type_));
    }
    if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&hdr.op) {
        return Err(PacketError::Op(hdr.op));
    }
    if hdr.op == OP_RW {
        if hdr.len > MAX_PAYLOAD {
            return Err(PacketError::TooLong(hdr.len));
        }
        if hdr.len > payload_present {
            return Err(PacketError::Short {
                claimed: hdr.len,
                present: payload_present,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rw(len: u32) -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op: OP_RW,
            ..Default::default()
        }
    }

    #[test]
    fn header_layout_matches_the_spec_offsets() {
        let h = PacketHeader {
            src_cid: 0x0807_0605_0403_0201,
            len: 0xaabb_ccdd,
            op: OP_RW,
            fwd_cnt: 0x1122_3344,
            ..Default::default()
        };

        let b = h.to_bytes();

        assert_eq!(b[0], 0x01);
        assert_eq!(&b[24..28], &[0xdd, 0xcc, 0xbb, 0xaa]);
        assert_eq!(&b[30..32], &[5, 0]);
        assert_eq!(&b[40..44], &[0x44, 0x33, 0x22, 0x11]);
    }

    #[test]
    fn payload_longer_than_chain_is_short() {
        assert_eq!(
            check_guest_packet(&rw(100), 3, 99),
            Err(PacketError::Short {
                claimed: 100,
                present: 99
            })
        );
    }

    #[test]
    fn spoofed_source_cid_is_dropped_without_rst() {
        let mut h = rw(0);
        h.src_cid = 4;

        let err = check_guest_packet(&h, 3, 0).unwrap_err();

        assert_eq!(err, PacketError::SrcCid(4));
        assert!(!err.wants_rst());
    }

    #[test]
    fn seqpacket_type_gets_rst() {
        let mut h = rw(0);
        h.type_ = 2;
        assert!(check_guest_packet(&h, 3, 0).unwrap_err().wants_rst());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn header_bytes_round_trip(bytes in proptest::array::uniform32(any::<u8>()),
                                   tail in proptest::array::uniform12(any::<u8>())) {
            let mut b = [0u8; HEADER_SIZE];
            b[..32].copy_from_slice(&bytes);
            b[32..].copy_from_slice(&tail);
            prop_assert_eq!(PacketHeader::from_bytes(&b).to_bytes(), b);
        }

        /// CI's fuzz gate for the vsock header check: an accepted RW packet
        /// never claims more than the limit or than the chain holds.
        #[test]
        fn accepted_packet_length_is_bounded(bytes in proptest::collection::vec(any::<u8>(), HEADER_SIZE),
                                             present in any::<u32>()) {
            let mut b = [0u8; HEADER_SIZE];
            b.copy_from_slice(&bytes);
            let h = PacketHeader::from_bytes(&b);
            if check_guest_packet(&h, h.src_cid, present).is_ok() && h.op == OP_RW {
                prop_assert!(h.len <= MAX_PAYLOAD && h.len <= present);
            }
        }
    }
}
