//! HTML as a readable static page: a careful tag stripper that drops scripts,
//! styles and embedded objects and keeps headings, paragraphs and lists as
//! text layout. No script ever runs; nothing is fetched.

/// Elements whose whole content is dropped.
const DROPPED: &[&str] = &[
    "script", "style", "noscript", "template", "iframe", "object", "embed", "svg", "math", "head",
    "canvas", "audio", "video",
];

/// Elements that start and end a line.
const BLOCKS: &[&str] = &[
    "p",
    "div",
    "br",
    "section",
    "article",
    "header",
    "footer",
    "nav",
    "main",
    "aside",
    "blockquote",
    "table",
    "tr",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "hr",
    "form",
    "fieldset",
    "figure",
    "figcaption",
    "address",
    "body",
    "html",
    "title",
];

/// Converts HTML to plain text with line structure.
pub fn html_to_text(html: &str) -> String {
    let mut out = Layout::default();
    let bytes = html.as_bytes();
    let mut i = 0;
    let mut pre = 0u32;
    while i < bytes.len() {
        if bytes[i] != b'<' {
            let end = bytes[i..]
                .iter()
                .position(|b| *b == b'<')
                .map_or(bytes.len(), |p| i + p);
            let text = decode_entities(&html[i..end]);
            out.text(&text, pre > 0);
            i = end;
            continue;
        }
        let rest = &html[i..];
        if rest.starts_with("<!--") {
            i += rest.find("-->").map_or(rest.len(), |p| p + 3);
            continue;
        }
        if rest.starts_with("<!") || rest.starts_with("<?") {
            i += rest.find('>').map_or(rest.len(), |p| p + 1);
            continue;
        }
        let Some(tag) = Tag::parse(rest) else {
            // A lone '<' is text.
            out.text("<", pre > 0);
            i += 1;
            continue;
        };
        i += tag.len;
        let name = tag.name.as_str();
        if !tag.closing && DROPPED.contains(&name) {
            if tag.self_closing {
                continue;
            }
            // Skip to the matching close tag; raw text elements hold no tags.
            i += find_close(&html[i..], name);
            continue;
        }
        match name {
            "pre" => {
                out.break_line();
                if tag.closing {
                    pre = pre.saturating_sub(1);
                } else {
                    pre += 1;
                }
            }
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                if tag.closing {
                    out.end_heading(if name <= "h2" { '=' } else { '-' });
                } else {
                    out.blank_line();
                    out.start_heading();
                }
            }
            "li" if !tag.closing => {
                out.break_line();
                out.text("  \u{2022} ", true);
            }
            "td" | "th" if !tag.closing => out.text("  ", true),
            "p" => out.blank_line(),
            "hr" => {
                out.break_line();
                out.text(&"-".repeat(40), true);
                out.break_line();
            }
            "img" => {
                if let Some(alt) = tag.alt.filter(|a| !a.trim().is_empty()) {
                    out.text(&format!("[image: {}]", decode_entities(&alt)), false);
                }
            }
            _ if BLOCKS.contains(&name) => out.break_line(),
            _ => {}
        }
    }
    out.finish()
}

fn find_close(rest: &str, name: &str) -> usize {
    let lower = rest.to_ascii_lowercase();
    let needle = format!("</{name}");
    match lower.find(&needle) {
        Some(p) => p + rest[p..].find('>').map_or(rest.len() - p, |q| q + 1),
        None => rest.len(),
    }
}

#[derive(Debug)]
struct Tag {
    name: String,
    closing: bool,
    self_closing: bool,
    alt: Option<String>,
    len: usize,
}

impl Tag {
    fn parse(s: &str) -> Option<Tag> {
        let b = s.as_bytes();
        let mut i = 1;
        let closing = b.get(i) == Some(&b'/');
        if closing {
            i += 1;
        }
        let start = i;
        while b.get(i).is_some_and(|c| c.is_ascii_alphanumeric()) {
            i += 1;
        }
        if i == start || !b[start].is_ascii_alphabetic() {
            return None;
        }
        let name = s[start..i].to_ascii_lowercase();
        // Attributes: skip quoted values so a '>' inside quotes does not end the tag.
        let attr_start = i;
        let mut quote = None;
        while let Some(&c) = b.get(i) {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, b'"' | b'\'') => quote = Some(c),
                (None, b'>') => break,
                _ => {}
            }
            i += 1;
        }
        let attrs = &s[attr_start..i.min(s.len())];
        let self_closing = attrs.trim_end().ends_with('/');
        let alt = (name == "img").then(|| attr_value(attrs, "alt")).flatten();
        Some(Tag {
            name,
            closing,
            self_closing,
            alt,
            len: (i + 1).min(s.len()),
        })
    }
}

fn attr_value(attrs: &str, key: &str) -> Option<String> {
    let lower = attrs.to_ascii_lowercase();
    let p = lower.find(&format!("{key}="))? + key.len() + 1;
    let rest = &attrs[p..];
    let (q, body) = match rest.chars().next()? {
        c @ ('"' | '\'') => (Some(c), &rest[1..]),
        _ => (None, rest),
    };
    let end = match q {
        Some(q) => body.find(q)?,
        None => body
            .find(|c: char| c.is_whitespace() || c == '>')
            .unwrap_or(body.len()),
    };
    Some(body[..end].to_string())
}

/// Decodes the common named entities and numeric references.
pub fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        rest = &rest[p..];
        let end = rest[1..].find(';').map(|e| e + 1).filter(|e| *e <= 10);
        let decoded = end.and_then(|e| {
            let name = &rest[1..e];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some(' '),
                "copy" => Some('\u{a9}'),
                "mdash" => Some('\u{2014}'),
                "ndash" => Some('\u{2013}'),
                _ => name
                    .strip_prefix("#x")
                    .or_else(|| name.strip_prefix("#X"))
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .or_else(|| name.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .map(|n| char::from_u32(n).unwrap_or('\u{FFFD}')),
            };
            c.map(|c| (c, e + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Builds the text: collapses whitespace, tracks line starts and headings.
#[derive(Debug, Default)]
struct Layout {
    out: String,
    heading_start: Option<usize>,
    pending_space: bool,
}

impl Layout {
    fn at_line_start(&self) -> bool {
        self.out.is_empty() || self.out.ends_with('\n')
    }

    fn text(&mut self, text: &str, verbatim: bool) {
        if verbatim {
            if self.pending_space && !self.at_line_start() {
                self.out.push(' ');
            }
            self.pending_space = false;
            self.out.push_str(text);
            return;
        }
        for word in text.split_inclusive(char::is_whitespace) {
            let trimmed = word.trim_end_matches(char::is_whitespace);
            if !trimmed.is_empty() {
                if self.pending_space && !self.at_line_start() {
                    self.out.push(' ');
                }
                self.out.push_str(trimmed);
                self.pending_space = false;
            }
            if trimmed.len() != word.len() {
                self.pending_space = true;
            }
        }
    }

    fn break_line(&mut self) {
        self.pending_space = false;
        if !self.at_line_start() {
            self.out.push('\n');
        }
    }

    fn blank_line(&mut self) {
        self.break_line();
        if !self.out.is_empty() && !self.out.ends_with("\n\n") {
            self.out.push('\n');
        }
    }

    fn start_heading(&mut self) {
        self.heading_start = Some(self.out.len());
    }

    fn end_heading(&mut self, underline: char) {
        let Some(start) = self.heading_start.take() else {
            return;
        };
        let width = self.out[start..].trim().chars().count();
        self.break_line();
        if width > 0 {
            self.out
                .push_str(&underline.to_string().repeat(width.min(120)));
            self.out.push('\n');
        }
    }

    fn finish(self) -> String {
        let trimmed = self.out.trim_end();
        format!("{trimmed}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_and_style_content_is_dropped() {
        let text = html_to_text(
            "<html><head><style>p{color:red}</style></head><body><p>Hi</p>\
             <script>var SECRET = '</p>';</script><p>there</p></body></html>",
        );

        assert!(!text.contains("SECRET"));
        assert!(!text.contains("color"));
        assert_eq!(text, "Hi\n\nthere\n");
    }

    #[test]
    fn headings_paragraphs_and_lists_keep_their_structure() {
        let text =
            html_to_text("<h1>Title</h1><p>One   two\nthree</p><ul><li>a</li><li>b</li></ul>");

        assert_eq!(
            text,
            "Title\n=====\n\nOne two three\n\n  \u{2022} a\n  \u{2022} b\n"
        );
    }

    #[test]
    fn entities_decode_and_bad_ones_stay_literal() {
        assert_eq!(
            decode_entities("a &amp; b &#x41;&#66; &bogus; &"),
            "a & b AB &bogus; &"
        );
    }

    #[test]
    fn pre_keeps_whitespace() {
        let text = html_to_text("<pre>a  b\n  c</pre>");

        assert_eq!(text, "a  b\n  c\n");
    }

    #[test]
    fn unterminated_constructs_do_not_panic() {
        for s in [
            "<",
            "<a",
            "<script>",
            "<!--",
            "&#",
            "<img alt='x",
            "</",
            "<p attr=\"a>b\">x",
            "&#xFFFFFFFF;",
        ] {
            let _ = html_to_text(s);
        }
    }
}
