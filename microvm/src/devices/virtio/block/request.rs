//! Parsing and checking of one block request header (virtio 1.2, 5.2.6).
//!
//! Pure functions over bytes, so the property tests and the fuzz target can
//! hit them without a ring.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_SECURE_ERASE, VIRTIO_BLK_T_WRITE_ZEROES,
};

use super::SECTOR_SIZE;

/// Size of `struct virtio_blk_outhdr`: type, reserved (ioprio), sector.
pub const HEADER_SIZE: usize = 16;
/// Largest data transfer of one request. Linux stays far below this; a
/// bigger request gets IOERR so one request cannot pin the worker.
pub const MAX_DATA_LEN: u32 = 16 << 20;

/// The status byte values (5.2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    IoErr,
    Unsupp,
}

impl Status {
    pub fn byte(self) -> u8 {
        let v = match self {
            Status::Ok => VIRTIO_BLK_S_OK,
            Status::IoErr => VIRTIO_BLK_S_IOERR,
            Status::Unsupp => VIRTIO_BLK_S_UNSUPP,
        };
        u8::try_from(v).unwrap_or(u8::MAX)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    SecureErase,
    Other(u32),
}

impl From<u32> for RequestType {
    fn from(v: u32) -> Self {
        match v {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            VIRTIO_BLK_T_DISCARD => Self::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => Self::WriteZeroes,
            VIRTIO_BLK_T_SECURE_ERASE => Self::SecureErase,
            other => Self::Other(other),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    pub request_type: RequestType,
    pub sector: u64,
}

impl RequestHeader {
    pub fn parse(bytes: &[u8; HEADER_SIZE]) -> Self {
        let [t0, t1, t2, t3, _, _, _, _, s @ ..] = *bytes;
        Self {
            request_type: RequestType::from(u32::from_le_bytes([t0, t1, t2, t3])),
            sector: u64::from_le_bytes(s),
        }
    }
}

/// The byte range of the disk a data request touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskRange {
    pub offset: u64,
    pub len: u32,
}

/// Checks an IN or OUT request: whole sectors, a size cap, and
/// `sector * 512 + len <= capacity * 512` without overflow anywhere.
pub fn check_data_range(
    sector: u64,
    data_len: u32,
    capacity_sectors: u64,
) -> Result<DiskRange, Status> {
    if data_len == 0 || u64::from(data_len) % SECTOR_SIZE != 0 || data_len > MAX_DATA_LEN {
        return Err(Status::IoErr);
    }
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or(Status::IoErr)?;
    let end = offset
        .checked_add(u64::from(data_len))
        .ok_or(Status::IoErr)?;
    let disk_len = capacity_sectors
        .checked_mul(SECTOR_SIZE)
        .ok_or(Status::IoErr)?;
    if end > disk_len {
        return Err(Status::IoErr);
    }
    Ok(DiskRange {
        offset,
        len: data_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_fields_are_little_endian() {
        let mut b = [0u8; HEADER_SIZE];
        b[0] = 1;
        b[8..].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());

        let h = RequestHeader::parse(&b);

        assert_eq!(h.request_type, RequestType::Out);
        assert_eq!(h.sector, 0x0102_0304_0506_0708);
    }

    #[test]
    fn read_ending_exactly_at_disk_end_is_allowed() {
        assert_eq!(
            check_data_range(7, 512, 8),
            Ok(DiskRange {
                offset: 3584,
                len: 512
            })
        );
    }

    #[test]
    fn read_one_byte_past_disk_end_is_ioerr() {
        assert_eq!(check_data_range(7, 1024, 8), Err(Status::IoErr));
    }

    #[test]
    fn sector_that_overflows_u64_is_ioerr() {
        assert_eq!(
            check_data_range(u64::MAX, 512, u64::MAX),
            Err(Status::IoErr)
        );
        assert_eq!(
            check_data_range(u64::MAX / 512, 1024, u64::MAX),
            Err(Status::IoErr)
        );
    }

    #[test]
    fn partial_sector_and_empty_transfers_are_ioerr() {
        assert_eq!(check_data_range(0, 511, 8), Err(Status::IoErr));
        assert_eq!(check_data_range(0, 0, 8), Err(Status::IoErr));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// CI's fuzz gate for block request parsing: any header bytes and
        /// any length either fail or name a range wholly inside the disk.
        #[test]
        fn accepted_range_always_lies_inside_the_disk(
            bytes in proptest::array::uniform16(any::<u8>()),
            data_len in any::<u32>(),
            capacity in prop_oneof![Just(u64::MAX), 0u64..1 << 40],
        ) {
            let h = RequestHeader::parse(&bytes);
            if let Ok(r) = check_data_range(h.sector, data_len, capacity) {
                prop_assert!(r.len > 0 && r.len <= MAX_DATA_LEN);
                prop_assert_eq!(u64::from(r.len) % SECTOR_SIZE, 0);
                let end = u128::from(r.offset) + u128::from(r.len);
                prop_assert!(end <= u128::from(capacity) * 512);
            }
        }
    }
}
