//! Thunar's custom actions file (`~/.config/Thunar/uca.xml`) is shared with
//! the user's own actions, so Vitrine edits it in place: it parses the file
//! to find the byte range of its one `<action>` (by unique id) and splices
//! text there, leaving every other byte of the user's file as it was.

/// Why uca.xml could not be edited.
#[derive(Debug, thiserror::Error)]
pub enum ThunarError {
    /// Not well-formed XML.
    #[error("is not well-formed XML")]
    Xml(#[from] roxmltree::Error),
    /// Well-formed, but its root is not `<actions>`.
    #[error("has root element <{0}>, expected <actions>")]
    NotActions(String),
}

/// `existing` (None: no file yet) with `action` added, or replacing the
/// action that has the same `<unique-id>`.
pub fn merge(existing: Option<&str>, unique_id: &str, action: &str) -> Result<String, ThunarError> {
    let action = action.trim_end();
    let Some(text) = existing else {
        return Ok(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<actions>\n{action}\n</actions>\n"
        ));
    };
    let doc = parse(text)?;
    let root = doc.root_element();
    let out = if let Some(ours) = find(&doc, unique_id) {
        let r = ours.range();
        format!("{}{action}{}", &text[..r.start], &text[r.end..])
    } else {
        let r = root.range();
        let inner = &text[r.clone()];
        match inner.rfind("</") {
            Some(close) if !inner.ends_with("/>") => {
                let at = r.start + close;
                let before = &text[..at];
                let sep = if before.ends_with('\n') { "" } else { "\n" };
                format!("{before}{sep}{action}\n{}", &text[at..])
            }
            // `<actions/>`: no closing tag to insert before.
            _ => format!(
                "{}<actions>\n{action}\n</actions>{}",
                &text[..r.start],
                &text[r.end..]
            ),
        }
    };
    parse(&out)?;
    Ok(out)
}

/// `text` without the action that has `unique_id`, and how many actions
/// remain.
pub fn remove(text: &str, unique_id: &str) -> Result<(String, usize), ThunarError> {
    let doc = parse(text)?;
    let total = doc
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("action"))
        .count();
    let Some(ours) = find(&doc, unique_id) else {
        return Ok((text.to_owned(), total));
    };
    let r = ours.range();
    let end = if text[r.end..].starts_with('\n') {
        r.end + 1
    } else {
        r.end
    };
    Ok((format!("{}{}", &text[..r.start], &text[end..]), total - 1))
}

fn parse(text: &str) -> Result<roxmltree::Document<'_>, ThunarError> {
    let doc = roxmltree::Document::parse(text)?;
    let root = doc.root_element();
    if !root.has_tag_name("actions") {
        return Err(ThunarError::NotActions(root.tag_name().name().to_owned()));
    }
    Ok(doc)
}

fn find<'a, 'i>(
    doc: &'a roxmltree::Document<'i>,
    unique_id: &str,
) -> Option<roxmltree::Node<'a, 'i>> {
    doc.root_element().children().find(|action| {
        action.has_tag_name("action")
            && action
                .children()
                .any(|c| c.has_tag_name("unique-id") && c.text().map(str::trim) == Some(unique_id))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<actions>\n<action>\n\t<name>Terminal</name>\n\t<unique-id>1-1</unique-id>\n\t<command>xterm</command>\n</action>\n</actions>\n";
    const OURS: &str =
        "<action>\n\t<name>Open safely</name>\n\t<unique-id>v</unique-id>\n</action>\n";

    #[test]
    fn merge_keeps_the_users_action_and_remove_restores_the_file() {
        let merged = merge(Some(USER), "v", OURS).unwrap();
        assert!(merged.contains("<command>xterm</command>"));
        assert!(merged.contains("Open safely"));
        let (back, left) = remove(&merged, "v").unwrap();
        assert_eq!(back, USER);
        assert_eq!(left, 1);
    }

    #[test]
    fn merging_twice_replaces_rather_than_duplicates() {
        let once = merge(Some(USER), "v", OURS).unwrap();
        let twice = merge(Some(&once), "v", OURS).unwrap();
        assert_eq!(once, twice);
    }

    #[test]
    fn empty_and_self_closing_files_take_the_action() {
        let fresh = merge(None, "v", OURS).unwrap();
        assert_eq!(remove(&fresh, "v").unwrap().1, 0);
        let closed = merge(Some("<actions/>\n"), "v", OURS).unwrap();
        assert!(closed.contains("Open safely"));
        parse(&closed).unwrap();
    }

    #[test]
    fn broken_or_foreign_files_are_refused_not_overwritten() {
        assert!(matches!(
            merge(Some("<actions><action>"), "v", OURS),
            Err(ThunarError::Xml(_))
        ));
        assert!(matches!(
            merge(Some("<menu/>"), "v", OURS),
            Err(ThunarError::NotActions(_))
        ));
    }
}
