//! Per-task cap on the total pixel bytes sent.

use super::message::Frame;

/// A frame would push the task over its pixel budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// The budget is spent.
    #[error("task pixel budget of {limit} bytes spent ({used} used, frame needs {wanted})")]
    Exhausted {
        /// Budget.
        limit: u64,
        /// Bytes already sent.
        used: u64,
        /// Bytes the frame needs.
        wanted: u64,
    },
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
