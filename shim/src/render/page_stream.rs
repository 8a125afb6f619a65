//! The render worker's stdout: a header with the page counts, then each page
//! as soon as it is drawn. The pipe's small buffer is the flow control: a
//! worker runs at most a page ahead of the agent, and no page waits on disk.
//!
//! Layout (little-endian u32s): `MAGIC count total`, then per page
//! `width height` and `width * height * 3` bytes of RGB.

use std::io::{Read, Write};

use crate::raster::{Raster, RasterError};

const MAGIC: [u8; 4] = *b"VPG1";

/// Bad bytes on a page stream.
#[derive(Debug, thiserror::Error)]
pub enum PageStreamError {
    /// Reading or writing the pipe failed.
    #[error("page stream I/O")]
    Io(#[from] std::io::Error),
    /// The stream does not start with the header.
    #[error("the page stream has no header")]
    NoHeader,
    /// The worker sent more pages than its header said.
    #[error("the worker sent more than the {0} page(s) it announced")]
    TooManyPages(u32),
    /// A page is larger than allowed, or its pixels are short.
    #[error("bad page")]
    Raster(#[from] RasterError),
}

/// The counts a worker announces before its first page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    /// Pages that follow.
    pub count: u32,
    /// Pages the whole document has (at least `count`).
    pub total: u32,
}

/// Writes pages to `out` as they are drawn.
#[derive(Debug)]
pub struct PageWriter<W: Write> {
    out: W,
}

impl<W: Write> PageWriter<W> {
    /// Writes the header.
    pub fn new(mut out: W, header: StreamHeader) -> Result<Self, PageStreamError> {
        out.write_all(&MAGIC)?;
        out.write_all(&header.count.to_le_bytes())?;
        out.write_all(&header.total.to_le_bytes())?;
        out.flush()?;
        Ok(Self { out })
    }

    /// Writes one page and flushes it, so the agent can send it now.
    pub fn page(&mut self, page: &Raster) -> Result<(), PageStreamError> {
        self.out.write_all(&page.width().to_le_bytes())?;
        self.out.write_all(&page.height().to_le_bytes())?;
        let mut row = Vec::with_capacity(usize::try_from(page.width()).unwrap_or(0) * 3);
        let stride = usize::try_from(page.width()).unwrap_or(0) * 4;
        for line in page.rgba().chunks_exact(stride.max(4)) {
            row.clear();
            for p in line.chunks_exact(4) {
                row.extend_from_slice(&p[..3]);
            }
            self.out.write_all(&row)?;
        }
        self.out.flush()?;
        Ok(())
    }
}

/// Reads a worker's pages, checking each against the page size allowed
/// before allocating it.
#[derive(Debug)]
pub struct PageReader<R: Read> {
    input: R,
    header: StreamHeader,
    read: u32,
    max_w: u32,
    max_h: u32,
}

fn read_u32(input: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    input.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

impl<R: Read> PageReader<R> {
    /// Reads the header.
    pub fn new(mut input: R, max_w: u32, max_h: u32) -> Result<Self, PageStreamError> {
        let mut magic = [0u8; 4];
        input
            .read_exact(&mut magic)
            .map_err(|_| PageStreamError::NoHeader)?;
        if magic != MAGIC {
            return Err(PageStreamError::NoHeader);
        }
        let count = read_u32(&mut input)?;
        let total = read_u32(&mut input)?.max(count);
        Ok(Self {
            input,
            header: StreamHeader { count, total },
            read: 0,
            max_w,
            max_h,
        })
    }

    /// The worker's counts.
    pub fn header(&self) -> StreamHeader {
        self.header
    }

    /// The next page; `None` at the end of the stream.
    pub fn next_page(&mut self) -> Result<Option<Raster>, PageStreamError> {
        let mut b = [0u8; 4];
        match self.input.read(&mut b[..1])? {
            0 => return Ok(None),
            _ => self.input.read_exact(&mut b[1..])?,
        }
        if self.read == self.header.count {
            return Err(PageStreamError::TooManyPages(self.header.count));
        }
        let width = u32::from_le_bytes(b);
        let height = read_u32(&mut self.input)?;
        if width > self.max_w || height > self.max_h || width == 0 || height == 0 {
            return Err(RasterError::BadSize {
                width: width.into(),
                height: height.into(),
                max: self.max_w.max(self.max_h),
            }
            .into());
        }
        let pixels = usize::try_from(u64::from(width) * u64::from(height)).unwrap_or(usize::MAX);
        let mut rgb = vec![0u8; pixels * 3];
        self.input.read_exact(&mut rgb)?;
        let mut rgba = Vec::with_capacity(pixels * 4);
        for p in rgb.chunks_exact(3) {
            rgba.extend_from_slice(&[p[0], p[1], p[2], 255]);
        }
        self.read += 1;
        Ok(Some(Raster::from_rgba(width, height, rgba)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raster::Rgb;

    #[test]
    fn pages_round_trip_in_order() {
        let mut a = Raster::new(3, 2, Rgb::WHITE).unwrap();
        a.put(1, 1, Rgb(10, 20, 30));
        let b = Raster::new(2, 5, Rgb(1, 2, 3)).unwrap();
        let mut buf = Vec::new();
        let mut w = PageWriter::new(&mut buf, StreamHeader { count: 2, total: 9 }).unwrap();
        w.page(&a).unwrap();
        w.page(&b).unwrap();

        let mut r = PageReader::new(&buf[..], 10, 10).unwrap();

        assert_eq!(r.header(), StreamHeader { count: 2, total: 9 });
        assert_eq!(r.next_page().unwrap().unwrap().rgba(), a.rgba());
        assert_eq!(r.next_page().unwrap().unwrap().rgba(), b.rgba());
        assert!(r.next_page().unwrap().is_none());
    }

    #[test]
    fn a_page_larger_than_allowed_is_refused_before_allocation() {
        let mut buf = Vec::new();
        PageWriter::new(&mut buf, StreamHeader { count: 1, total: 1 }).unwrap();
        buf.extend_from_slice(&60_000u32.to_le_bytes());
        buf.extend_from_slice(&60_000u32.to_le_bytes());

        let mut r = PageReader::new(&buf[..], 100, 100).unwrap();

        assert!(matches!(
            r.next_page(),
            Err(PageStreamError::Raster(RasterError::BadSize { .. }))
        ));
    }

    #[test]
    fn pages_past_the_announced_count_are_refused() {
        let page = Raster::new(1, 1, Rgb::WHITE).unwrap();
        let mut buf = Vec::new();
        let mut w = PageWriter::new(&mut buf, StreamHeader { count: 1, total: 1 }).unwrap();
        w.page(&page).unwrap();
        w.page(&page).unwrap();

        let mut r = PageReader::new(&buf[..], 10, 10).unwrap();
        r.next_page().unwrap();

        assert!(matches!(
            r.next_page(),
            Err(PageStreamError::TooManyPages(1))
        ));
    }
}
