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

/// An office document LibreOffice converted in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfficeRun {
    /// The format sniffed (a known extension).
    pub format: &'static str,
    /// Conversion time.
    pub ms: u64,
    /// A LibreOffice preloaded in the template did it (else one started
    /// for it).
    pub preloaded: bool,
}

/// The formats the shim names; anything else is not read.
const OFFICE_FORMATS: [&str; 10] = [
    "docx", "doc", "odt", "rtf", "xlsx", "xls", "ods", "pptx", "ppt", "odp",
];

/// Reads the shim's `office: format=F ms=N libreoffice=preloaded|started
/// written-outside=0` line: the shim logs it only when its check found
/// nothing written outside LibreOffice's output (else the task fails).
pub fn office_run(text: &str) -> Option<OfficeRun> {
    let rest = text.strip_prefix("office: ")?;
    let (mut format, mut ms, mut preloaded, mut clean) = (None, None, None, false);
    for field in rest.split(' ') {
        match field.split_once('=')? {
            ("format", f) => format = OFFICE_FORMATS.iter().copied().find(|k| *k == f),
            ("ms", n) => ms = n.parse().ok(),
            ("libreoffice", "preloaded") => preloaded = Some(true),
            ("libreoffice", "started") => preloaded = Some(false),
            ("written-outside", "0") => clean = true,
            _ => return None,
        }
    }
    clean.then_some(OfficeRun {
        format: format?,
        ms: ms?,
        preloaded: preloaded?,
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

    #[test]
    fn the_office_line_is_read_only_when_well_formed_and_clean() {
        assert_eq!(
            office_run("office: format=docx ms=2364 libreoffice=preloaded written-outside=0"),
            Some(OfficeRun {
                format: "docx",
                ms: 2364,
                preloaded: true
            })
        );
        for bad in [
            "office: format=exe ms=1 libreoffice=started written-outside=0",
            "office: format=docx ms=1 libreoffice=started written-outside=3",
            "office: format=docx ms=x libreoffice=started written-outside=0",
            "office: format=docx ms=1 libreoffice=started",
            "office: format=docx ms=1 libreoffice=maybe written-outside=0",
            "rendering a.docx as office",
        ] {
            assert_eq!(office_run(bad), None, "{bad}");
        }
    }
}
