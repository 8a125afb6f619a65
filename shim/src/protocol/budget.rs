//! Per-task cap on the total pixel bytes sent.

use super::message::Frame;

/// A frame would push the task over its pixel budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// The budget is spent: the task drew more than it may send.
    #[error(
        "the output exceeded {} of frames, the most one task may send ({} sent before a \
         frame of {} that did not fit)",
        size_text(*limit), size_text(*used), size_text(*wanted)
    )]
    Exhausted {
        /// Budget.
        limit: u64,
        /// Bytes already sent.
        used: u64,
        /// Bytes the frame needs.
        wanted: u64,
    },
}

/// Bytes in MiB where that reads better.
fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// Counts pixel bytes of one task against a limit. Both sides keep one: the
/// guest to stop rendering, the host to end a task that overspends.
#[derive(Debug, Clone)]
pub struct PixelBudget {
    limit: u64,
    used: u64,
}

impl PixelBudget {
    /// A budget of `limit` bytes, clamped to `MAX_TASK_PIXEL_BYTES`.
    pub fn new(limit: u64) -> Self {
        Self {
            limit: limit.min(super::MAX_TASK_PIXEL_BYTES),
            used: 0,
        }
    }

    /// Charges `bytes`, or fails without charging.
    pub fn charge(&mut self, bytes: u64) -> Result<(), BudgetError> {
        let total = self.used.saturating_add(bytes);
        if total > self.limit {
            return Err(BudgetError::Exhausted {
                limit: self.limit,
                used: self.used,
                wanted: bytes,
            });
        }
        self.used = total;
        Ok(())
    }

    /// Charges the pixels of `frame`.
    pub fn charge_frame(&mut self, frame: &Frame) -> Result<(), BudgetError> {
        self.charge(u64::try_from(frame.pixels.len()).unwrap_or(u64::MAX))
    }

    /// Bytes charged so far.
    pub fn used(&self) -> u64 {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_budget_says_the_output_was_too_large() {
        let mut budget = PixelBudget::new(256 << 20);
        budget.charge(255 << 20).unwrap();

        let err = budget.charge(4 << 20).unwrap_err();

        assert_eq!(
            err.to_string(),
            "the output exceeded 256 MiB of frames, the most one task may send (255 MiB sent \
             before a frame of 4 MiB that did not fit)"
        );
    }
}
