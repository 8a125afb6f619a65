//! PDF files the tests and benchmarks write themselves, object by object,
//! with a correct cross-reference table: nothing is copied from elsewhere.

/// The sentence page 1 of [`hostile_pdf`] draws, 28 pt high.
pub const SENTENCE: &str = "Quarterly results are attached";

/// Builds a PDF from numbered object bodies, with a correct xref table.
pub fn pdf(objects: &[&[u8]], trailer_extra: &str) -> Vec<u8> {
    let mut out = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R {trailer_extra} >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

pub fn stream(dict: &str, data: &str) -> Vec<u8> {
    format!(
        "<< {dict} /Length {} >>\nstream\n{data}\nendstream",
        data.len()
    )
    .into_bytes()
}

/// Two pages; page 1 draws [`SENTENCE`]. The document opens with
/// JavaScript, embeds a file, links out, has a filled form field and names
/// an author.
pub fn hostile_pdf() -> Vec<u8> {
    let page1 = stream(
        "",
        &format!("BT /F1 28 Tf 72 680 Td ({SENTENCE}) Tj ET\nBT /F1 14 Tf 72 640 Td (Track me at the link below) Tj ET"),
    );
    let page2 = stream(
        "",
        "BT /F1 20 Tf 72 700 Td (Second page of the report) Tj ET",
    );
    let secret = stream("/Type /EmbeddedFile", "top secret payload");
    let objects: Vec<Vec<u8>> = vec![
        // 1 catalog
        b"<< /Type /Catalog /Pages 2 0 R /OpenAction 5 0 R \
          /AcroForm << /Fields [7 0 R] >> \
          /Names << /EmbeddedFiles << /Names [(secret.txt) 8 0 R] >> >> >>"
            .to_vec(),
        // 2 pages
        b"<< /Type /Pages /Kids [3 0 R 10 0 R] /Count 2 >>".to_vec(),
        // 3 page 1
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
          /Resources << /Font << /F1 4 0 R >> >> /Contents 6 0 R /Annots [9 0 R 7 0 R] >>"
            .to_vec(),
        // 4 font
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec(),
        // 5 JavaScript
        b"<< /Type /Action /S /JavaScript /JS (app.alert\\('pwned'\\);) >>".to_vec(),
        // 6 page 1 content
        page1,
        // 7 form field
        b"<< /Type /Annot /Subtype /Widget /FT /Tx /T (account) /V (filled-in) \
          /Rect [72 500 300 530] /P 3 0 R >>"
            .to_vec(),
        // 8 embedded file spec
        b"<< /Type /Filespec /F (secret.txt) /EF << /F 11 0 R >> >>".to_vec(),
        // 9 link out
        b"<< /Type /Annot /Subtype /Link /Rect [72 600 300 620] \
          /A << /S /URI /URI (https://tracker.invalid/pixel) >> >>"
            .to_vec(),
        // 10 page 2
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
          /Resources << /Font << /F1 4 0 R >> >> /Contents 12 0 R >>"
            .to_vec(),
        // 11 embedded file
        secret,
        // 12 page 2 content
        page2,
        // 13 info
        b"<< /Author (Mallory Authorname) /Title (Trap) >>".to_vec(),
    ];
    let refs: Vec<&[u8]> = objects.iter().map(Vec::as_slice).collect();
    pdf(&refs, "/Info 13 0 R")
}

/// One page of text.
pub fn plain_pdf(line: &str) -> Vec<u8> {
    let content = stream("", &format!("BT /F1 24 Tf 72 700 Td ({line}) Tj ET"));
    let objects: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
          /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>"
            .to_vec(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec(),
        content,
    ];
    let refs: Vec<&[u8]> = objects.iter().map(Vec::as_slice).collect();
    pdf(&refs, "")
}

/// `pages` pages of Helvetica 11 pt text, `lines` lines each, like a
/// report: what a safe copy of a text document is measured on.
pub fn text_pdf(pages: usize, lines: usize) -> Vec<u8> {
    let words = [
        "the",
        "quarterly",
        "report",
        "shows",
        "revenue",
        "growth",
        "across",
        "all",
        "regions",
        "while",
        "costs",
        "remained",
        "stable",
        "and",
        "margins",
        "improved",
    ];
    let mut objects: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        Vec::new(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec(),
    ];
    let mut kids = Vec::new();
    for page in 0..pages {
        let mut content = String::from("BT /F1 11 Tf 14 TL 72 740 Td\n");
        content.push_str(&format!("(Page {} of the test report) Tj T*\n", page + 1));
        for line in 0..lines {
            let text: Vec<&str> = (0..12)
                .map(|i| words[(page * 7 + line * 3 + i) % words.len()])
                .collect();
            content.push_str(&format!("({}) Tj T*\n", text.join(" ")));
        }
        content.push_str("ET");
        let content_id = objects.len() + 2;
        objects.push(
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
                 /Resources << /Font << /F1 3 0 R >> >> /Contents {content_id} 0 R >>"
            )
            .into_bytes(),
        );
        kids.push(format!("{} 0 R", objects.len()));
        objects.push(stream("", &content));
    }
    objects[1] = format!(
        "<< /Type /Pages /Kids [{}] /Count {pages} >>",
        kids.join(" ")
    )
    .into_bytes();
    let refs: Vec<&[u8]> = objects.iter().map(Vec::as_slice).collect();
    pdf(&refs, "")
}
