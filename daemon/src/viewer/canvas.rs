//! What the viewer window shows, without the window: the pages received so
//! far, which one is on screen, the scroll position, and the sandbox frame
//! and status bar drawn around them. Pure pixel work, so it is tested
//! without a display.

use std::collections::BTreeMap;
use std::path::Path;

use vitrine_shim::protocol::{Frame, MAX_PAGES};

/// Width of the coloured frame around the content, in pixels.
pub const BORDER: u32 = 4;
/// Height of the status bar at the bottom, in pixels.
pub const STATUS_HEIGHT: u32 = 24;
/// The frame and status bar colour (0RGB): amber, "this is not your desktop".
pub const SANDBOX_COLOUR: u32 = 0x00E8_A317;
/// Behind and around the page.
pub const BACKGROUND: u32 = 0x0040_4040;
/// A page area no frame has painted yet.
const BLANK_PAGE: u32 = 0x00FF_FFFF;
const TEXT_COLOUR: u32 = 0x0020_1A00;
/// Pixels scrolled per wheel line.
pub const LINE_PIXELS: i64 = 40;
/// Page pixels kept in memory, all pages together (bytes at 4 per pixel).
const PAGE_BUDGET_BYTES: usize = 512 * 1024 * 1024;
const FONT_PX: f32 = 14.0;

/// Why a frame cannot be drawn.
#[derive(Debug, thiserror::Error)]
pub enum CanvasError {
    /// The frame is outside its page or its pixel count is wrong (the wire
    /// checks this already; the canvas does not trust it anyway).
    #[error("frame does not fit its page")]
    BadFrame,
}

/// A rectangle in window pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    /// Left.
    pub x: u32,
    /// Top.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

impl Area {
    fn contains(&self, x: f64, y: f64) -> bool {
        x >= f64::from(self.x)
            && y >= f64::from(self.y)
            && x < f64::from(self.x) + f64::from(self.w)
            && y < f64::from(self.y) + f64::from(self.h)
    }
}

/// Where things go in a window of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The page area; the page's top-left pixel is drawn at its top-left
    /// (minus the scroll offset).
    pub content: Area,
    /// The status bar.
    pub status: Area,
}

impl Layout {
    /// The layout of a `width` x `height` window.
    pub fn new(width: u32, height: u32) -> Layout {
        let status_h = STATUS_HEIGHT.min(height);
        Layout {
            content: Area {
                x: BORDER.min(width),
                y: BORDER.min(height),
                w: width.saturating_sub(2 * BORDER),
                h: height.saturating_sub(2 * BORDER + STATUS_HEIGHT),
            },
            status: Area {
                x: 0,
                y: height - status_h,
                w: width,
                h: status_h,
            },
        }
    }
}

/// Width of each of the "previous" and "next" zones at the right end of
/// the status bar.
pub const NAV_WIDTH: u32 = 90;

/// Width of the "save safe copy" zone, left of "previous".
pub const SAVE_WIDTH: u32 = 130;

/// The "save safe copy" zone of the status bar.
fn save_zone(layout: &Layout) -> Area {
    let bar = layout.status;
    let right = bar.w.saturating_sub(2 * NAV_WIDTH);
    let x = right.saturating_sub(SAVE_WIDTH);
    Area {
        x,
        y: bar.y,
        w: right - x,
        h: bar.h,
    }
}

/// The "previous" and "next" zones of the status bar.
fn nav_zones(layout: &Layout) -> (Area, Area) {
    let bar = layout.status;
    let next_x = bar.w.saturating_sub(NAV_WIDTH);
    let previous_x = bar.w.saturating_sub(2 * NAV_WIDTH);
    let zone = |x: u32, w: u32| Area {
        x,
        y: bar.y,
        w,
        h: bar.h,
    };
    (
        zone(previous_x, next_x - previous_x),
        zone(next_x, bar.w - next_x),
    )
}

/// A pixel of a page, in the page's own coordinates (as in `Frame`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagePoint {
    /// Page index, from 0.
    pub page: u32,
    /// Column.
    pub x: u32,
    /// Row.
    pub y: u32,
}

/// What a click on the status bar asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Click {
    /// The "previous" zone.
    PreviousPage,
    /// The "next" zone.
    NextPage,
    /// The "save safe copy" zone.
    SaveSafeCopy,
    /// Anywhere else.
    Nothing,
}

#[derive(Debug)]
struct Page {
    width: u32,
    height: u32,
    /// 0RGB, row-major.
    pixels: Vec<u32>,
}

/// The pages and the view onto them.
#[derive(Debug)]
pub struct Canvas {
    pages: BTreeMap<u32, Page>,
    current: u32,
    pages_seen: u32,
    /// The task's page count, once the daemon has said it.
    pages_total: Option<u32>,
    scroll_x: u32,
    scroll_y: u32,
    status: String,
}

impl Default for Canvas {
    fn default() -> Self {
        Canvas::new()
    }
}

impl Canvas {
    /// No pages yet, status "starting…".
    pub fn new() -> Canvas {
        Canvas {
            pages: BTreeMap::new(),
            current: 0,
            pages_seen: 0,
            pages_total: None,
            scroll_x: 0,
            scroll_y: 0,
            status: "starting…".into(),
        }
    }

    /// Paints a damage rectangle into its page. Returns true when the
    /// damaged page is the one on screen.
    pub fn apply_frame(&mut self, frame: &Frame) -> Result<bool, CanvasError> {
        frame.validate().map_err(|_| CanvasError::BadFrame)?;
        let (w, h) = (to_usize(frame.width), to_usize(frame.height));
        let replace = self
            .pages
            .get(&frame.page)
            .is_none_or(|p| p.width != frame.width || p.height != frame.height);
        if replace {
            self.pages.remove(&frame.page);
            self.make_room(w * h * 4);
            self.pages.insert(
                frame.page,
                Page {
                    width: frame.width,
                    height: frame.height,
                    pixels: vec![BLANK_PAGE; w * h],
                },
            );
        }
        let page = self
            .pages
            .get_mut(&frame.page)
            .ok_or(CanvasError::BadFrame)?;
        let (rx, ry, rw) = (
            to_usize(frame.rect.x),
            to_usize(frame.rect.y),
            to_usize(frame.rect.w),
        );
        for (row, src) in frame.pixels.chunks_exact(rw * 4).enumerate() {
            let start = (ry + row) * w + rx;
            let dst = page
                .pixels
                .get_mut(start..start + rw)
                .ok_or(CanvasError::BadFrame)?;
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = (u32::from(s[0]) << 16) | (u32::from(s[1]) << 8) | u32::from(s[2]);
            }
        }
        self.pages_seen = self.pages_seen.max(frame.page + 1);
        Ok(frame.page == self.current)
    }

    /// Sets the status line.
    pub fn set_status(&mut self, text: &str) {
        self.status = text.chars().filter(|c| !c.is_control()).collect();
    }

    /// Sets the task's page count.
    pub fn set_page_count(&mut self, count: u32) {
        if count > 0 {
            self.pages_total = Some(count);
        }
    }

    /// The page on screen.
    pub fn current_page(&self) -> u32 {
        self.current
    }

    /// Shows `page` (if it is a valid index) from its top. Returns true when
    /// it changed.
    pub fn show_page(&mut self, page: u32) -> bool {
        let last = self.pages_total.unwrap_or(MAX_PAGES).min(MAX_PAGES) - 1;
        if page > last || page == self.current {
            return false;
        }
        self.current = page;
        self.scroll_x = 0;
        self.scroll_y = 0;
        true
    }

    /// Scrolls the page by wheel lines (positive `dy` is down), within the
    /// page. Returns true when the view moved.
    pub fn scroll(&mut self, dx: i32, dy: i32, layout: &Layout) -> bool {
        let Some(page) = self.pages.get(&self.current) else {
            return false;
        };
        let max_x = page.width.saturating_sub(layout.content.w);
        let max_y = page.height.saturating_sub(layout.content.h);
        let step = |now: u32, d: i32, max: u32| {
            let next = i64::from(now) + i64::from(d) * LINE_PIXELS;
            u32::try_from(next.clamp(0, i64::from(max))).unwrap_or(0)
        };
        let (x, y) = (
            step(self.scroll_x, dx, max_x),
            step(self.scroll_y, dy, max_y),
        );
        let moved = (x, y) != (self.scroll_x, self.scroll_y);
        (self.scroll_x, self.scroll_y) = (x, y);
        moved
    }

    /// The page pixel under window position (`x`, `y`), or None where no
    /// page pixel is drawn (the frame, the status bar, the background, a
    /// page not received yet). The page is drawn one page pixel per window
    /// pixel (both are physical pixels), so only its placement and the
    /// scroll are undone.
    pub fn page_point(&self, layout: &Layout, x: f64, y: f64) -> Option<PagePoint> {
        let shown = self.shown_area(layout)?;
        if !shown.contains(x, y) {
            return None;
        }
        self.point_in(shown, x, y)
    }

    /// Like [`Canvas::page_point`], but a position outside the page goes
    /// to the nearest drawn page pixel: a drag that leaves the page still
    /// ends on it.
    pub fn page_point_clamped(&self, layout: &Layout, x: f64, y: f64) -> Option<PagePoint> {
        let shown = self.shown_area(layout)?;
        let clamp = |v: f64, start: u32, len: u32| {
            let last = f64::from(start) + f64::from(len) - 1.0;
            if v.is_nan() {
                f64::from(start)
            } else {
                v.clamp(f64::from(start), last)
            }
        };
        self.point_in(
            shown,
            clamp(x, shown.x, shown.w),
            clamp(y, shown.y, shown.h),
        )
    }

    /// The window area the page on screen covers: the content area, less
    /// what lies past the page's right and bottom edges after the scroll.
    fn shown_area(&self, layout: &Layout) -> Option<Area> {
        let page = self.pages.get(&self.current)?;
        let area = Area {
            x: layout.content.x,
            y: layout.content.y,
            w: page
                .width
                .saturating_sub(self.scroll_x)
                .min(layout.content.w),
            h: page
                .height
                .saturating_sub(self.scroll_y)
                .min(layout.content.h),
        };
        (area.w > 0 && area.h > 0).then_some(area)
    }

    /// The page pixel at window position (`x`, `y`) inside `shown`.
    fn point_in(&self, shown: Area, x: f64, y: f64) -> Option<PagePoint> {
        let column = whole_px(x - f64::from(shown.x))?.min(shown.w - 1);
        let row = whole_px(y - f64::from(shown.y))?.min(shown.h - 1);
        Some(PagePoint {
            page: self.current,
            x: self.scroll_x + column,
            y: self.scroll_y + row,
        })
    }

    /// What a click at window position (`x`, `y`) means.
    pub fn click(&self, layout: &Layout, x: f64, y: f64) -> Click {
        let (previous, next) = nav_zones(layout);
        if previous.contains(x, y) {
            Click::PreviousPage
        } else if next.contains(x, y) {
            Click::NextPage
        } else if save_zone(layout).contains(x, y) {
            Click::SaveSafeCopy
        } else {
            Click::Nothing
        }
    }

    /// The status bar's text.
    pub fn status_line(&self) -> String {
        let pages = match (self.pages_total, self.pages_seen) {
            (Some(total), _) => format!("page {} of {total}", self.current + 1),
            (None, 0) => "no page yet".to_owned(),
            (None, seen) => format!(
                "page {} of {}",
                self.current + 1,
                seen.max(self.current + 1)
            ),
        };
        format!("SANDBOXED · {pages} · {}", self.status)
    }

    /// Draws the whole window into `buf` (0RGB, `width` x `height`).
    pub fn draw(&self, buf: &mut [u32], width: u32, height: u32, font: Option<&StatusFont>) {
        let layout = Layout::new(width, height);
        let stride = to_usize(width);
        buf.fill(SANDBOX_COLOUR);
        fill(buf, stride, layout.content, BACKGROUND);
        if let (Some(page), Some(shown)) = (self.pages.get(&self.current), self.shown_area(&layout))
        {
            for row in 0..to_usize(shown.h) {
                let src_start = (to_usize(self.scroll_y) + row) * to_usize(page.width)
                    + to_usize(self.scroll_x);
                let dst_start =
                    (to_usize(layout.content.y) + row) * stride + to_usize(layout.content.x);
                let n = to_usize(shown.w);
                if let (Some(src), Some(dst)) = (
                    page.pixels.get(src_start..src_start + n),
                    buf.get_mut(dst_start..dst_start + n),
                ) {
                    dst.copy_from_slice(src);
                }
            }
        }
        if let Some(font) = font {
            let baseline = layout.status.y + STATUS_HEIGHT.min(layout.status.h) * 3 / 4;
            let clip = layout.status;
            font.draw(buf, stride, clip, BORDER + 4, baseline, &self.status_line());
            let (previous, next) = nav_zones(&layout);
            let save = save_zone(&layout);
            for (zone, label) in [
                (save, "save safe copy"),
                (previous, "‹ previous"),
                (next, "next ›"),
            ] {
                let x = zone.x + zone.w.saturating_sub(font.width(label)) / 2;
                font.draw(buf, stride, clip, x, baseline, label);
            }
        }
    }

    fn make_room(&mut self, need: usize) {
        let mut used: usize = self.pages.values().map(|p| p.pixels.len() * 4).sum();
        while used + need > PAGE_BUDGET_BYTES {
            // Drop the page farthest from the one on screen.
            let current = self.current;
            let Some(far) = self
                .pages
                .keys()
                .copied()
                .max_by_key(|p| p.abs_diff(current))
            else {
                break;
            };
            if let Some(p) = self.pages.remove(&far) {
                used -= p.pixels.len() * 4;
            }
        }
    }
}

/// A font for the status line, loaded from the system at run time.
pub struct StatusFont(fontdue::Font);

impl std::fmt::Debug for StatusFont {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatusFont")
    }
}

/// Fonts tried in order; `$VITRINE_VIEWER_FONT` first.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

impl StatusFont {
    /// The first font that loads, or None: the window then shows the bar
    /// without text rather than failing.
    pub fn load() -> Option<StatusFont> {
        let env = std::env::var_os("VITRINE_VIEWER_FONT");
        let paths = env
            .iter()
            .map(|p| Path::new(p).to_path_buf())
            .chain(FONT_CANDIDATES.iter().map(|p| Path::new(p).to_path_buf()));
        for path in paths {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            if let Ok(font) = fontdue::Font::from_bytes(bytes, fontdue::FontSettings::default()) {
                return Some(StatusFont(font));
            }
        }
        None
    }

    fn width(&self, text: &str) -> u32 {
        let w: f32 = text
            .chars()
            .map(|c| self.0.metrics(c, FONT_PX).advance_width)
            .sum();
        float_px(w)
    }

    fn draw(&self, buf: &mut [u32], stride: usize, clip: Area, x: u32, baseline: u32, text: &str) {
        let mut pen = f32_from(x);
        for c in text.chars() {
            let (m, coverage) = self.0.rasterize(c, FONT_PX);
            let left = i64::from(float_px(pen)) + i64::from(m.xmin);
            let top =
                i64::from(baseline) - i64::try_from(m.height).unwrap_or(0) - i64::from(m.ymin);
            for (i, &a) in coverage.iter().enumerate() {
                if a == 0 || m.width == 0 {
                    continue;
                }
                let px = left + i64::try_from(i % m.width).unwrap_or(0);
                let py = top + i64::try_from(i / m.width).unwrap_or(0);
                let (Ok(px), Ok(py)) = (u32::try_from(px), u32::try_from(py)) else {
                    continue;
                };
                if !clip.contains(f64::from(px), f64::from(py)) {
                    continue;
                }
                if let Some(d) = buf.get_mut(to_usize(py) * stride + to_usize(px)) {
                    *d = blend(*d, TEXT_COLOUR, a);
                }
            }
            pen += m.advance_width;
        }
    }
}

fn blend(under: u32, over: u32, alpha: u8) -> u32 {
    let a = u32::from(alpha);
    let mix = |shift: u32| {
        let u = (under >> shift) & 0xFF;
        let o = (over >> shift) & 0xFF;
        ((o * a + u * (255 - a)) / 255) << shift
    };
    mix(16) | mix(8) | mix(0)
}

fn fill(buf: &mut [u32], stride: usize, area: Area, colour: u32) {
    for row in 0..to_usize(area.h) {
        let start = (to_usize(area.y) + row) * stride + to_usize(area.x);
        if let Some(dst) = buf.get_mut(start..start + to_usize(area.w)) {
            dst.fill(colour);
        }
    }
}

fn to_usize(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn f32_from(v: u32) -> f32 {
    // Window coordinates are far below 2^24, where f32 is exact.
    f32::from(u16::try_from(v).unwrap_or(u16::MAX))
}

/// The whole window pixel that holds position `v` (>= 0), or None for a
/// position left of or above 0.
fn whole_px(v: f64) -> Option<u32> {
    let floor = v.floor();
    if !(0.0..=f64::from(u32::MAX)).contains(&floor) {
        return None;
    }
    // Inside u32's range (checked above) and whole, so the cast is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let px = floor as u32;
    Some(px)
}

fn float_px(v: f32) -> u32 {
    let r = v.round();
    if r <= 0.0 || r.is_nan() {
        return 0;
    }
    // Bounded by u16 range above; the cast after the clamp is lossless.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let px = r.min(f32::from(u16::MAX)) as u32;
    px
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitrine_shim::protocol::{PixelFormat, Rect};

    fn solid(page: u32, width: u32, height: u32, rect: Rect, rgb: [u8; 3]) -> Frame {
        let n = usize::try_from(rect.w * rect.h).unwrap();
        Frame {
            page,
            width,
            height,
            rect,
            format: PixelFormat::Rgba8,
            pixels: [rgb[0], rgb[1], rgb[2], 255].repeat(n),
        }
    }

    fn at(buf: &[u32], width: u32, x: u32, y: u32) -> u32 {
        buf[usize::try_from(y * width + x).unwrap()]
    }

    #[test]
    fn damage_lands_at_its_place_inside_the_sandbox_frame() {
        let mut canvas = Canvas::new();
        let whole = Rect {
            x: 0,
            y: 0,
            w: 60,
            h: 40,
        };
        assert!(canvas
            .apply_frame(&solid(0, 60, 40, whole, [255, 0, 0]))
            .unwrap());
        let patch = Rect {
            x: 10,
            y: 20,
            w: 5,
            h: 3,
        };
        canvas
            .apply_frame(&solid(0, 60, 40, patch, [0, 0, 255]))
            .unwrap();
        let (w, h) = (100, 100);
        let mut buf = vec![0; 100 * 100];
        canvas.draw(&mut buf, w, h, None);
        let c = Layout::new(w, h).content;
        assert_eq!(at(&buf, w, 0, 0), SANDBOX_COLOUR);
        assert_eq!(at(&buf, w, c.x, c.y), 0x00FF_0000);
        assert_eq!(at(&buf, w, c.x + 12, c.y + 21), 0x0000_00FF);
        assert_eq!(at(&buf, w, c.x + 15, c.y + 21), 0x00FF_0000);
        assert_eq!(at(&buf, w, c.x + 70, c.y + 10), BACKGROUND);
        assert_eq!(at(&buf, w, 50, h - 2), SANDBOX_COLOUR);
    }

    #[test]
    fn frames_for_other_pages_wait_until_that_page_is_shown() {
        let mut canvas = Canvas::new();
        let r = Rect {
            x: 0,
            y: 0,
            w: 8,
            h: 8,
        };
        assert!(!canvas.apply_frame(&solid(1, 8, 8, r, [0, 255, 0])).unwrap());
        let mut buf = vec![0; 50 * 50];
        canvas.draw(&mut buf, 50, 50, None);
        assert_eq!(at(&buf, 50, BORDER, BORDER), BACKGROUND);
        assert!(canvas.show_page(1));
        canvas.draw(&mut buf, 50, 50, None);
        assert_eq!(at(&buf, 50, BORDER, BORDER), 0x0000_FF00);
        assert_eq!(canvas.status_line(), "SANDBOXED · page 2 of 2 · starting…");
    }

    #[test]
    fn page_count_bounds_the_next_page_and_shows_in_the_status() {
        let mut canvas = Canvas::new();
        canvas.set_page_count(2);
        assert!(canvas.show_page(1));
        assert!(!canvas.show_page(2), "no page 3 of 2");
        assert!(canvas.status_line().starts_with("SANDBOXED · page 2 of 2"));
    }

    #[test]
    fn scrolling_stays_inside_the_page() {
        let mut canvas = Canvas::new();
        let r = Rect {
            x: 0,
            y: 0,
            w: 10,
            h: 500,
        };
        canvas
            .apply_frame(&solid(0, 10, 500, r, [1, 2, 3]))
            .unwrap();
        let layout = Layout::new(100, 100);
        assert!(!canvas.scroll(0, -1, &layout));
        assert!(canvas.scroll(0, 100, &layout));
        assert_eq!(canvas.scroll_y, 500 - layout.content.h);
    }

    #[test]
    fn window_positions_map_to_the_page_pixel_drawn_there_after_scrolling() {
        // Arrange: a 300x500 page in a window that shows 192 rows of it,
        // scrolled down two lines.
        let mut canvas = Canvas::new();
        let whole = Rect {
            x: 0,
            y: 0,
            w: 300,
            h: 500,
        };
        canvas
            .apply_frame(&solid(0, 300, 500, whole, [1, 2, 3]))
            .unwrap();
        let (w, h) = (200, 224);
        let layout = Layout::new(w, h);
        assert!(canvas.scroll(0, 2, &layout));
        let c = layout.content;

        // Act
        let top_left = canvas.page_point(&layout, f64::from(c.x), f64::from(c.y));
        let inside = canvas.page_point(&layout, f64::from(c.x) + 17.6, f64::from(c.y) + 9.2);
        let last = canvas.page_point(
            &layout,
            f64::from(c.x + c.w) - 0.5,
            f64::from(c.y + c.h) - 0.5,
        );
        let on_frame = canvas.page_point(&layout, 1.0, 1.0);
        let on_status_bar = canvas.page_point(&layout, 50.0, f64::from(h) - 2.0);
        let dragged_off = canvas.page_point_clamped(&layout, -40.0, f64::from(h) + 9.0);

        // Assert
        let at = |x, y| Some(PagePoint { page: 0, x, y });
        let scroll = 2 * u32::try_from(LINE_PIXELS).unwrap();
        assert_eq!(top_left, at(0, scroll));
        assert_eq!(inside, at(17, scroll + 9));
        assert_eq!(last, at(c.w - 1, scroll + c.h - 1));
        assert_eq!(on_frame, None);
        assert_eq!(on_status_bar, None);
        assert_eq!(dragged_off, at(0, scroll + c.h - 1));
    }

    #[test]
    fn positions_past_a_small_page_or_before_any_frame_are_not_on_the_page() {
        // Arrange
        let mut canvas = Canvas::new();
        let layout = Layout::new(400, 300);
        let c = layout.content;
        let empty = canvas.page_point(&layout, f64::from(c.x), f64::from(c.y));
        let r = Rect {
            x: 0,
            y: 0,
            w: 30,
            h: 20,
        };
        canvas.apply_frame(&solid(0, 30, 20, r, [4, 5, 6])).unwrap();

        // Act
        let right_of_page = canvas.page_point(&layout, f64::from(c.x + 30), f64::from(c.y));
        let below_page = canvas.page_point(&layout, f64::from(c.x), f64::from(c.y + 20));
        let clamped = canvas.page_point_clamped(&layout, 399.0, 0.0);

        // Assert
        assert_eq!(empty, None, "no page received yet");
        assert_eq!(right_of_page, None);
        assert_eq!(below_page, None);
        assert_eq!(
            clamped,
            Some(PagePoint {
                page: 0,
                x: 29,
                y: 0
            })
        );
    }

    #[test]
    fn status_bar_zones_page_backwards_and_forwards() {
        let canvas = Canvas::new();
        let layout = Layout::new(400, 100);
        assert_eq!(canvas.click(&layout, 10.0, 95.0), Click::Nothing);
        assert_eq!(canvas.click(&layout, 250.0, 95.0), Click::PreviousPage);
        assert_eq!(canvas.click(&layout, 390.0, 95.0), Click::NextPage);
        assert_eq!(canvas.click(&layout, 390.0, 10.0), Click::Nothing);
        assert_eq!(canvas.click(&layout, 200.0, 95.0), Click::SaveSafeCopy);
    }

    #[test]
    fn tiny_windows_draw_without_panicking() {
        let mut canvas = Canvas::new();
        let r = Rect {
            x: 0,
            y: 0,
            w: 8,
            h: 8,
        };
        canvas.apply_frame(&solid(0, 8, 8, r, [9, 9, 9])).unwrap();
        let font = StatusFont::load();
        for (w, h) in [(1, 1), (3, 30), (30, 3), (9, 9)] {
            let mut buf = vec![0; usize::try_from(w * h).unwrap()];
            canvas.draw(&mut buf, w, h, font.as_ref());
        }
    }

    #[test]
    fn status_line_drops_control_characters() {
        let mut canvas = Canvas::new();
        canvas.set_status("done\u{1b}[2J\n");
        assert!(canvas.status_line().ends_with("done[2J"));
    }
}
