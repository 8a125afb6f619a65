//! The viewer's window: winit for the window and input, softbuffer for the
//! pixels. A reader thread decodes the daemon's messages from the socket and
//! hands them to the event loop; input goes back on the same socket.

use std::io::Write;
use std::num::NonZeroU32;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vitrine_shim::protocol::{
    InputEvent, Key, KeyEvent, Modifiers, MouseButton as GuestButton, MAX_DIM,
};
use winit::application::ApplicationHandler;
use winit::dpi::{PhysicalPosition, PhysicalSize};
use winit::event::{ElementState, MouseButton, MouseScrollDelta, WindowEvent};
use winit::event_loop::{ActiveEventLoop, ControlFlow, EventLoop, EventLoopProxy};
use winit::keyboard::{Key as WKey, ModifiersState, NamedKey};
use winit::window::{Window, WindowId};

use super::canvas::{Canvas, Click, Layout, StatusFont};
use super::link::window_title;
use super::pointer::GuestPointer;
use super::wire::{self, Message};

/// The longest the event loop sleeps. softbuffer shares winit's X
/// connection, and an X event that arrives while it waits for a reply is
/// queued without waking winit's poll; this bound is how late such an event
/// (a close, a key) can be handled. Measured: a WM_DELETE_WINDOW was lost
/// about once in 15 runs without it.
const MAX_SLEEP: std::time::Duration = std::time::Duration::from_millis(200);

/// The window's first size, before the user resizes it.
const INITIAL_SIZE: PhysicalSize<u32> = PhysicalSize::new(880, 1000);

/// Why the viewer window stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// No display, or the event loop failed.
    #[error("window system (DISPLAY={})", display_name())]
    EventLoop(#[from] winit::error::EventLoopError),
    /// The window could not be made.
    #[error("creating the window")]
    Os(#[from] winit::error::OsError),
    /// The pixel surface failed.
    #[error("drawing surface: {0}")]
    Surface(String),
    /// The socket to the daemon failed.
    #[error("daemon socket")]
    Io(#[from] std::io::Error),
    /// The daemon sent something the wire refuses.
    #[error("daemon message")]
    Wire(#[from] wire::WireError),
}

fn display_name() -> String {
    std::env::var("DISPLAY").unwrap_or_else(|_| "unset".into())
}

/// Events the reader thread posts to the event loop.
#[derive(Debug)]
enum FromDaemon {
    Message(Message),
    /// End of stream (the daemon closed the window) or a broken message.
    Ended(Option<wire::WireError>),
}

struct Shown {
    window: Arc<Window>,
    // The context must outlive the surface; kept here for that.
    _context: softbuffer::Context<Arc<Window>>,
    surface: softbuffer::Surface<Arc<Window>, Arc<Window>>,
}

struct Viewer {
    title: String,
    to_daemon: UnixStream,
    canvas: Canvas,
    font: Option<StatusFont>,
    shown: Option<Shown>,
    size: PhysicalSize<u32>,
    modifiers: ModifiersState,
    cursor: PhysicalPosition<f64>,
    /// Buttons and motion the guest was sent.
    pointer: GuestPointer,
    /// Frames received so far, and how many of them are on screen.
    frames_received: u32,
    frames_presented: u32,
    /// `VITRINE_VIEWER_TRACE` set: window events go to stderr.
    trace: bool,
    error: Option<WindowError>,
}

/// Opens the window titled `title` and serves `stream` until the daemon
/// closes it or the user closes the window.
pub fn run(title: &str, stream: UnixStream) -> Result<(), WindowError> {
    let event_loop = EventLoop::<FromDaemon>::with_user_event().build()?;
    let proxy = event_loop.create_proxy();
    let from_daemon = stream.try_clone()?;
    std::thread::Builder::new()
        .name("daemon-reader".into())
        .spawn(move || read_daemon(from_daemon, &proxy))?;
    let mut viewer = Viewer {
        title: window_title(title.trim_end_matches(" (sandboxed)")),
        to_daemon: stream,
        canvas: Canvas::new(),
        font: StatusFont::load(),
        shown: None,
        size: INITIAL_SIZE,
        modifiers: ModifiersState::empty(),
        cursor: PhysicalPosition::new(0.0, 0.0),
        pointer: GuestPointer::default(),
        frames_received: 0,
        frames_presented: 0,
        trace: std::env::var_os("VITRINE_VIEWER_TRACE").is_some(),
        error: None,
    };
    event_loop.run_app(&mut viewer)?;
    match viewer.error.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn read_daemon(mut stream: UnixStream, proxy: &EventLoopProxy<FromDaemon>) {
    loop {
        let event = match wire::read_message(&mut stream) {
            Ok(Some(msg)) => FromDaemon::Message(msg),
            Ok(None) => FromDaemon::Ended(None),
            // The daemon went away with input unread: that is a close too.
            Err(wire::WireError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                FromDaemon::Ended(None)
            }
            Err(e) => FromDaemon::Ended(Some(e)),
        };
        let last = matches!(event, FromDaemon::Ended(_));
        if proxy.send_event(event).is_err() || last {
            return;
        }
    }
}

impl Viewer {
    fn open(&mut self, event_loop: &ActiveEventLoop) -> Result<(), WindowError> {
        let attrs = Window::default_attributes()
            .with_title(self.title.clone())
            .with_inner_size(INITIAL_SIZE);
        let window = Arc::new(event_loop.create_window(attrs)?);
        let context = softbuffer::Context::new(Arc::clone(&window))
            .map_err(|e| WindowError::Surface(e.to_string()))?;
        let surface = softbuffer::Surface::new(&context, Arc::clone(&window))
            .map_err(|e| WindowError::Surface(e.to_string()))?;
        self.size = window.inner_size();
        self.shown = Some(Shown {
            window,
            _context: context,
            surface,
        });
        self.send_resize();
        Ok(())
    }

    fn redraw(&mut self) -> Result<(), WindowError> {
        let Some(shown) = self.shown.as_mut() else {
            return Ok(());
        };
        let (Some(w), Some(h)) = (
            NonZeroU32::new(self.size.width),
            NonZeroU32::new(self.size.height),
        ) else {
            return Ok(());
        };
        let surface_err = |e: softbuffer::SoftBufferError| WindowError::Surface(e.to_string());
        shown.surface.resize(w, h).map_err(surface_err)?;
        let mut buffer = shown.surface.buffer_mut().map_err(surface_err)?;
        self.canvas
            .draw(&mut buffer, w.get(), h.get(), self.font.as_ref());
        buffer.present().map_err(surface_err)?;
        if self.frames_presented != self.frames_received {
            self.frames_presented = self.frames_received;
            let report = Message::Presented {
                frames: self.frames_presented,
            };
            if let Ok(bytes) = wire::encode(&report) {
                let _ = self.to_daemon.write_all(&bytes);
            }
        }
        Ok(())
    }

    fn request_redraw(&self) {
        if let Some(shown) = &self.shown {
            shown.window.request_redraw();
        }
    }

    fn send(&mut self, event: InputEvent) {
        let bytes = match wire::encode(&Message::Input(event)) {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!("vitrine-viewer: not sending input: {e}");
                return;
            }
        };
        // A daemon that went away ends the window at the next read anyway.
        let _ = self.to_daemon.write_all(&bytes);
    }

    fn layout(&self) -> Layout {
        Layout::new(self.size.width, self.size.height)
    }

    /// A button went down or up. The viewer's own controls take a left
    /// press; a press over the page goes to the guest, and so does the
    /// release of a button the guest saw go down, wherever it happens.
    fn mouse_button(&mut self, button: MouseButton, state: ElementState) {
        let Some(button) = guest_button(button) else {
            return;
        };
        let layout = self.layout();
        let (x, y) = (self.cursor.x, self.cursor.y);
        if state == ElementState::Released {
            let point = self.canvas.page_point_clamped(&layout, x, y);
            if let Some(event) = self.pointer.release(point, button) {
                self.send(event);
            }
            return;
        }
        if button == GuestButton::Left && self.control_click(&layout) {
            return;
        }
        if let Some(point) = self.canvas.page_point(&layout, x, y) {
            let now = std::time::Instant::now();
            for event in self.pointer.press(point, button, now) {
                self.send(event);
            }
        }
    }

    /// Acts on a left press on the status bar's controls; false where the
    /// press is not on one.
    fn control_click(&mut self, layout: &Layout) -> bool {
        match self.canvas.click(layout, self.cursor.x, self.cursor.y) {
            Click::PreviousPage => self.change_page(false),
            Click::NextPage => self.change_page(true),
            Click::SaveSafeCopy => {
                if let Ok(bytes) = wire::encode(&Message::SaveSafeCopy) {
                    let _ = self.to_daemon.write_all(&bytes);
                }
                self.canvas.set_status("asking for a safe copy…");
                self.request_redraw();
            }
            Click::Nothing => return false,
        }
        true
    }

    /// The cursor moved: motion over the page (or anywhere during a drag
    /// the guest saw start) goes to the guest, throttled.
    fn cursor_moved(&mut self, position: PhysicalPosition<f64>) {
        self.cursor = position;
        let layout = self.layout();
        let point = if self.pointer.dragging() {
            self.canvas
                .page_point_clamped(&layout, position.x, position.y)
        } else {
            self.canvas.page_point(&layout, position.x, position.y)
        };
        if let Some(point) = point {
            if let Some(event) = self.pointer.moved(point, std::time::Instant::now()) {
                self.send(event);
            }
        }
    }

    fn set_title(&mut self, text: &str) {
        // The viewer adds the marker itself: no text, from the guest or
        // anywhere else, makes a window that does not say it is sandboxed.
        self.title = window_title(text);
        if let Some(shown) = &self.shown {
            shown.window.set_title(&self.title);
        }
    }

    fn send_resize(&mut self) {
        let content = self.layout().content;
        if content.w > 0 && content.h > 0 {
            self.send(InputEvent::Resize {
                width: content.w.min(MAX_DIM),
                height: content.h.min(MAX_DIM),
            });
        }
    }

    fn change_page(&mut self, forward: bool) {
        let current = self.canvas.current_page();
        let page = if forward {
            current.saturating_add(1)
        } else {
            current.saturating_sub(1)
        };
        if self.canvas.show_page(page) {
            self.send(InputEvent::PageChange { page });
            self.request_redraw();
        }
    }

    fn modifiers(&self) -> Modifiers {
        Modifiers {
            ctrl: self.modifiers.control_key(),
            alt: self.modifiers.alt_key(),
            shift: self.modifiers.shift_key(),
        }
    }

    fn key(&mut self, key: &WKey, text: Option<&str>) {
        let modifiers = self.modifiers();
        // Ctrl+PageUp/PageDown turn pages in the viewer itself.
        if modifiers.ctrl {
            if let WKey::Named(NamedKey::PageDown | NamedKey::PageUp) = key {
                self.change_page(matches!(key, WKey::Named(NamedKey::PageDown)));
                return;
            }
        }
        if let Some(key) = map_key(key) {
            self.send(InputEvent::Key(KeyEvent { key, modifiers }));
        } else if let Some(text) = text.filter(|t| !t.is_empty()) {
            // Composed input (several characters at once) goes as text.
            let clean: String = text.chars().filter(|c| !c.is_control()).collect();
            if !clean.is_empty() {
                self.send(InputEvent::Text(clean));
            }
        }
    }
}

impl ApplicationHandler<FromDaemon> for Viewer {
    fn resumed(&mut self, event_loop: &ActiveEventLoop) {
        if self.shown.is_some() {
            return;
        }
        if self.trace {
            eprintln!("vitrine-viewer: opening the window on {}", display_name());
        }
        if let Err(e) = self.open(event_loop) {
            self.error = Some(e);
            event_loop.exit();
        }
    }

    fn about_to_wait(&mut self, event_loop: &ActiveEventLoop) {
        let now = std::time::Instant::now();
        if let Some(event) = self.pointer.due(now) {
            self.send(event);
        }
        let wake = match self.pointer.deadline() {
            Some(motion) => motion.min(now + MAX_SLEEP),
            None => now + MAX_SLEEP,
        };
        event_loop.set_control_flow(ControlFlow::WaitUntil(wake));
    }

    fn user_event(&mut self, event_loop: &ActiveEventLoop, event: FromDaemon) {
        match event {
            FromDaemon::Message(Message::Frame(frame)) => {
                self.frames_received = self.frames_received.saturating_add(1);
                match self.canvas.apply_frame(&frame) {
                    // Off-screen pages count as presented at the next redraw.
                    Ok(_) => self.request_redraw(),
                    Err(e) => eprintln!("vitrine-viewer: dropped a frame: {e}"),
                }
            }
            FromDaemon::Message(Message::Pages(count)) => {
                self.canvas.set_page_count(count);
                self.request_redraw();
            }
            FromDaemon::Message(Message::Status(text)) => {
                self.canvas.set_status(&text);
                self.request_redraw();
            }
            FromDaemon::Message(Message::Title(text)) => self.set_title(&text),
            FromDaemon::Message(other) => {
                eprintln!(
                    "vitrine-viewer: ignoring a viewer-side message from the daemon: {other:?}"
                );
            }
            FromDaemon::Ended(err) => {
                if let Some(e) = err {
                    self.error = Some(e.into());
                }
                event_loop.exit();
            }
        }
    }

    fn window_event(&mut self, event_loop: &ActiveEventLoop, _id: WindowId, event: WindowEvent) {
        if self.trace {
            eprintln!("vitrine-viewer: {event:?}");
        }
        match event {
            WindowEvent::CloseRequested | WindowEvent::Destroyed => {
                let closed = wire::encode(&Message::Closed).unwrap_or_default();
                let _ = self.to_daemon.write_all(&closed);
                event_loop.exit();
            }
            WindowEvent::RedrawRequested => {
                if let Err(e) = self.redraw() {
                    self.error = Some(e);
                    event_loop.exit();
                }
            }
            WindowEvent::Resized(size) => {
                if size != self.size {
                    self.size = size;
                    self.send_resize();
                }
                self.request_redraw();
            }
            WindowEvent::ModifiersChanged(m) => self.modifiers = m.state(),
            WindowEvent::KeyboardInput { event, .. } if event.state == ElementState::Pressed => {
                self.key(&event.logical_key, event.text.as_deref());
            }
            WindowEvent::MouseWheel { delta, .. } => {
                let (dx, dy) = wheel_lines(delta);
                if dx != 0 || dy != 0 {
                    let layout = self.layout();
                    if self.canvas.scroll(dx, dy, &layout) {
                        self.request_redraw();
                    }
                    self.send(InputEvent::Scroll { dx, dy });
                }
            }
            WindowEvent::CursorMoved { position, .. } => self.cursor_moved(position),
            WindowEvent::MouseInput { state, button, .. } => self.mouse_button(button, state),
            _ => {}
        }
    }
}

/// The guest's name for a window-system button; None for the others (back,
/// forward), which the protocol does not carry.
fn guest_button(button: MouseButton) -> Option<GuestButton> {
    match button {
        MouseButton::Left => Some(GuestButton::Left),
        MouseButton::Middle => Some(GuestButton::Middle),
        MouseButton::Right => Some(GuestButton::Right),
        _ => None,
    }
}

/// Wheel movement in whole lines, positive `dy` down (the protocol's sense;
/// winit's is positive up).
fn wheel_lines(delta: MouseScrollDelta) -> (i32, i32) {
    let (x, y) = match delta {
        MouseScrollDelta::LineDelta(x, y) => (f64::from(x), f64::from(y)),
        MouseScrollDelta::PixelDelta(p) => (p.x / 40.0, p.y / 40.0),
    };
    (round_lines(-x), round_lines(-y))
}

fn round_lines(v: f64) -> i32 {
    let r = v.round().clamp(-100.0, 100.0);
    if r.is_nan() {
        return 0;
    }
    // Clamped to ±100 above, so the cast is exact.
    #[allow(clippy::cast_possible_truncation)]
    let lines = r as i32;
    lines
}

fn map_key(key: &WKey) -> Option<Key> {
    Some(match key {
        WKey::Named(named) => match named {
            NamedKey::Enter => Key::Enter,
            NamedKey::Tab => Key::Tab,
            NamedKey::Backspace => Key::Backspace,
            NamedKey::Escape => Key::Escape,
            NamedKey::ArrowUp => Key::Up,
            NamedKey::ArrowDown => Key::Down,
            NamedKey::ArrowLeft => Key::Left,
            NamedKey::ArrowRight => Key::Right,
            NamedKey::Home => Key::Home,
            NamedKey::End => Key::End,
            NamedKey::PageUp => Key::PageUp,
            NamedKey::PageDown => Key::PageDown,
            NamedKey::Insert => Key::Insert,
            NamedKey::Delete => Key::Delete,
            NamedKey::Space => Key::Char(' '),
            NamedKey::F1 => Key::F(1),
            NamedKey::F2 => Key::F(2),
            NamedKey::F3 => Key::F(3),
            NamedKey::F4 => Key::F(4),
            NamedKey::F5 => Key::F(5),
            NamedKey::F6 => Key::F(6),
            NamedKey::F7 => Key::F(7),
            NamedKey::F8 => Key::F(8),
            NamedKey::F9 => Key::F(9),
            NamedKey::F10 => Key::F(10),
            NamedKey::F11 => Key::F(11),
            NamedKey::F12 => Key::F(12),
            _ => return None,
        },
        WKey::Character(s) => {
            let mut chars = s.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if !c.is_control() => Key::Char(c),
                _ => return None,
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_down_is_positive_lines() {
        assert_eq!(wheel_lines(MouseScrollDelta::LineDelta(0.0, -1.0)), (0, 1));
        assert_eq!(wheel_lines(MouseScrollDelta::LineDelta(2.0, 1.0)), (-2, -1));
        assert_eq!(
            wheel_lines(MouseScrollDelta::LineDelta(f32::NAN, f32::INFINITY)),
            (0, -100)
        );
    }

    #[test]
    fn keys_map_to_protocol_keys() {
        assert_eq!(map_key(&WKey::Character("a".into())), Some(Key::Char('a')));
        assert_eq!(map_key(&WKey::Character("ab".into())), None);
        assert_eq!(map_key(&WKey::Named(NamedKey::F12)), Some(Key::F(12)));
        assert_eq!(map_key(&WKey::Named(NamedKey::Space)), Some(Key::Char(' ')));
        assert_eq!(map_key(&WKey::Named(NamedKey::CapsLock)), None);
    }
}
