//! Lines of the shim's log that the host reads, beside the `timing` line
//! (`TaskRun::guest_input_time`): where a document was cut short and an
//! out-of-memory kill. The guest gives only numbers and keywords; the host
//! words them itself (`service::verdict`).

/// The shim's line for a program the guest's kernel killed for memory.
pub const OUT_OF_MEMORY: &str = "program-exit: out-of-memory";

/// A document cut short by the task's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagesCut {
    /// Pages sent.
    pub shown: u32,
    /// Pages the document has, or (when `at_least`) the fewest it has.
    pub total: u32,
    /// The guest knows only that the document has `total` pages or more:
    /// LibreOffice converts only up to the page cap and one page past it.
    pub at_least: bool,
    /// Which limit cut it.
    pub by: CutBy,
}

/// The limit that cut a document short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutBy {
    /// The task's page cap (`Limits::max_pages`).
    PageCap,
    /// The task's pixel budget (`Limits::max_pixel_bytes`).
    PixelBudget,
}

/// Reads the shim's `page cap: shown=N total=M reason=R` line, where `M+`
/// means at least M pages. The host words the cut itself; the guest gives
/// only numbers and a keyword.
pub fn pages_cut(text: &str) -> Option<PagesCut> {
    let rest = text.strip_prefix("page cap: ")?;
    let mut shown = None;
    let mut total = None;
    let mut at_least = false;
    let mut by = None;
    for field in rest.split(' ') {
        match field.split_once('=')? {
            ("shown", n) => shown = n.parse().ok(),
            ("total", n) => {
                at_least = n.ends_with('+');
                total = n.strip_suffix('+').unwrap_or(n).parse().ok();
            }
            ("reason", "page-cap") => by = Some(CutBy::PageCap),
            ("reason", "pixel-budget") => by = Some(CutBy::PixelBudget),
            _ => return None,
        }
    }
    let (shown, total) = (shown?, total?);
    (shown < total).then_some(PagesCut {
        shown,
        total,
        at_least,
        by: by?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_cap_line_is_read_and_anything_else_is_not() {
        assert_eq!(
            pages_cut("page cap: shown=2 total=900 reason=page-cap"),
            Some(PagesCut {
                shown: 2,
                total: 900,
                at_least: false,
                by: CutBy::PageCap
            })
        );
        assert_eq!(pages_cut("page cap: shown=2 total=3 reason=lies"), None);
        assert_eq!(pages_cut("page cap: shown=3 total=3 reason=page-cap"), None);
        assert_eq!(pages_cut("page cap: shown=x total=3 reason=page-cap"), None);
    }

    #[test]
    fn a_total_with_a_plus_is_a_lower_bound() {
        let cut = pages_cut("page cap: shown=200 total=201+ reason=page-cap");

        assert_eq!(
            cut,
            Some(PagesCut {
                shown: 200,
                total: 201,
                at_least: true,
                by: CutBy::PageCap
            })
        );
        assert_eq!(
            pages_cut("page cap: shown=200 total=200+ reason=page-cap"),
            None,
            "at least as many as were shown is no cut"
        );
        assert_eq!(pages_cut("page cap: shown=2 total=+ reason=page-cap"), None);
        assert_eq!(
            pages_cut("page cap: shown=2 total=3++ reason=page-cap"),
            None
        );
    }
}
