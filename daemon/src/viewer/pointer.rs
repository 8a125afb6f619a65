//! The pointer as the guest sees it: which buttons it saw go down, and the
//! motion it is sent. Motion goes only when the page pixel under the cursor
//! changed, at most once per [`MOTION_INTERVAL`]; moves in between are
//! coalesced to the latest. Pure bookkeeping over [`PagePoint`]s and
//! instants, so it is tested without a window.

use std::time::{Duration, Instant};

use vitrine_shim::protocol::{InputEvent, MouseButton};

use super::canvas::PagePoint;

/// The shortest time between two motion events: one per frame at 60 Hz.
pub const MOTION_INTERVAL: Duration = Duration::from_millis(16);

/// Pointer state on the guest's side of the window.
#[derive(Debug, Default)]
pub struct GuestPointer {
    /// Buttons whose press the guest was sent, so their release goes too.
    held: [bool; 3],
    /// Where the guest last saw the pointer, and when it was sent.
    sent: Option<(PagePoint, Instant)>,
    /// A move not sent yet because the last one was too recent.
    pending: Option<PagePoint>,
}

impl GuestPointer {
    /// The cursor moved over `point` at `now`: the motion to send now, if
    /// any. A move too soon after the last is kept for [`Self::due`].
    pub fn moved(&mut self, point: PagePoint, now: Instant) -> Option<InputEvent> {
        match self.sent {
            Some((last, _)) if last == point => {
                // Back where the guest already has it: nothing to say.
                self.pending = None;
                None
            }
            Some((_, at)) if now.saturating_duration_since(at) < MOTION_INTERVAL => {
                self.pending = Some(point);
                None
            }
            _ => Some(self.send_motion(point, now)),
        }
    }

    /// The coalesced motion, once its interval has passed.
    pub fn due(&mut self, now: Instant) -> Option<InputEvent> {
        let deadline = self.deadline()?;
        if now < deadline {
            return None;
        }
        let point = self.pending.take()?;
        Some(self.send_motion(point, now))
    }

    /// When the coalesced motion is due, if one waits.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending?;
        // A move waits only behind one that was sent.
        let (_, at) = self.sent?;
        Some(at + MOTION_INTERVAL)
    }

    /// A button press at `point`: the events to send, a motion to `point`
    /// first where the guest has the pointer elsewhere (a browser takes the
    /// press where its pointer is), then the press.
    pub fn press(
        &mut self,
        point: PagePoint,
        button: MouseButton,
        now: Instant,
    ) -> Vec<InputEvent> {
        let mut events = Vec::with_capacity(2);
        self.pending = None;
        if self.sent.map(|(last, _)| last) != Some(point) {
            events.push(self.send_motion(point, now));
        }
        self.held[index(button)] = true;
        events.push(button_event(point, button, true));
        events
    }

    /// A button release at `point` (the nearest page pixel where the cursor
    /// left the page): the event to send, or None where the guest never saw
    /// that button go down (it went down on the viewer's own controls, or
    /// off the page) or no page is shown to put the release on.
    pub fn release(&mut self, point: Option<PagePoint>, button: MouseButton) -> Option<InputEvent> {
        let held = std::mem::take(&mut self.held[index(button)]);
        point
            .filter(|_| held)
            .map(|p| button_event(p, button, false))
    }

    /// Whether the guest was sent a press with no release yet: moves off
    /// the page then still go to it, as a drag.
    pub fn dragging(&self) -> bool {
        self.held.iter().any(|&h| h)
    }

    fn send_motion(&mut self, point: PagePoint, now: Instant) -> InputEvent {
        self.sent = Some((point, now));
        self.pending = None;
        InputEvent::Motion {
            page: point.page,
            x: point.x,
            y: point.y,
        }
    }
}

fn index(button: MouseButton) -> usize {
    match button {
        MouseButton::Left => 0,
        MouseButton::Middle => 1,
        MouseButton::Right => 2,
    }
}

fn button_event(point: PagePoint, button: MouseButton, down: bool) -> InputEvent {
    InputEvent::Button {
        page: point.page,
        x: point.x,
        y: point.y,
        button,
        down,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(x: u32, y: u32) -> PagePoint {
        PagePoint { page: 0, x, y }
    }

    fn motion(x: u32, y: u32) -> InputEvent {
        InputEvent::Motion { page: 0, x, y }
    }

    #[test]
    fn fast_moves_coalesce_to_the_latest_pixel_after_the_interval() {
        // Arrange
        let mut pointer = GuestPointer::default();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);

        // Act
        let first = pointer.moved(at(1, 1), t0);
        let same_pixel = pointer.moved(at(1, 1), ms(3));
        let too_soon = [
            pointer.moved(at(2, 1), ms(5)),
            pointer.moved(at(3, 1), ms(10)),
        ];
        let early = pointer.due(ms(12));
        let deadline = pointer.deadline();
        let late = pointer.due(ms(17));
        let nothing_left = pointer.due(ms(100));

        // Assert
        assert_eq!(first, Some(motion(1, 1)));
        assert_eq!(same_pixel, None, "the pixel did not change");
        assert_eq!(too_soon, [None, None]);
        assert_eq!(early, None);
        assert_eq!(deadline, Some(t0 + MOTION_INTERVAL));
        assert_eq!(late, Some(motion(3, 1)), "the latest move, once");
        assert_eq!(nothing_left, None);
    }

    #[test]
    fn moving_back_to_the_pixel_the_guest_has_cancels_the_pending_move() {
        // Arrange
        let mut pointer = GuestPointer::default();
        let t0 = Instant::now();
        pointer.moved(at(5, 5), t0);

        // Act
        pointer.moved(at(6, 5), t0 + Duration::from_millis(2));
        pointer.moved(at(5, 5), t0 + Duration::from_millis(4));

        // Assert
        assert_eq!(pointer.deadline(), None);
        assert_eq!(pointer.due(t0 + Duration::from_secs(1)), None);
    }

    #[test]
    fn press_moves_the_guest_pointer_first_and_only_its_release_follows() {
        // Arrange
        let mut pointer = GuestPointer::default();
        let t0 = Instant::now();
        pointer.moved(at(1, 1), t0);
        pointer.moved(at(2, 2), t0 + Duration::from_millis(1));

        // Act
        let press = pointer.press(at(9, 4), MouseButton::Right, t0 + Duration::from_millis(2));
        let dragging = pointer.dragging();
        let stray = pointer.release(Some(at(9, 4)), MouseButton::Left);
        let release = pointer.release(Some(at(0, 7)), MouseButton::Right);
        let again = pointer.release(Some(at(0, 7)), MouseButton::Right);

        // Assert
        assert_eq!(
            press,
            vec![
                motion(9, 4),
                InputEvent::Button {
                    page: 0,
                    x: 9,
                    y: 4,
                    button: MouseButton::Right,
                    down: true
                }
            ]
        );
        assert_eq!(
            pointer.due(t0 + Duration::from_secs(1)),
            None,
            "(2,2) dropped"
        );
        assert!(dragging);
        assert_eq!(stray, None, "the guest never saw Left go down");
        assert_eq!(
            release,
            Some(InputEvent::Button {
                page: 0,
                x: 0,
                y: 7,
                button: MouseButton::Right,
                down: false
            })
        );
        assert_eq!(again, None);
        assert!(!pointer.dragging());
    }
}
