//! Office documents the tests make themselves: flat OpenDocument XML
//! written here, turned into .docx/.xlsx/.pptx/.odt by the host's
//! LibreOffice (the same program as the guest's), and the host's own
//! reading of them (LibreOffice to PDF, then pdfinfo) to compare with.
//! The shim's tests include this file too.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The host's LibreOffice, or `None` after a SKIPPED line.
pub fn soffice_or_skip(test: &str) -> Option<PathBuf> {
    let path = PathBuf::from("/usr/bin/soffice");
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED {test}: the host has no LibreOffice to make and read office files \
             (apt-get install libreoffice-core-nogui libreoffice-writer-nogui \
             libreoffice-calc-nogui libreoffice-impress-nogui; shim/image/build.sh does)"
        );
        None
    }
}

const NS: &str = r#"xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" xmlns:draw="urn:oasis:names:tc:opendocument:xmlns:drawing:1.0" xmlns:svg="urn:oasis:names:tc:opendocument:xmlns:svg-compatible:1.0" xmlns:style="urn:oasis:names:tc:opendocument:xmlns:style:1.0" xmlns:fo="urn:oasis:names:tc:opendocument:xmlns:xsl-fo-compatible:1.0" xmlns:presentation="urn:oasis:names:tc:opendocument:xmlns:presentation:1.0" xmlns:script="urn:oasis:names:tc:opendocument:xmlns:script:1.0" xmlns:ooo="http://openoffice.org/2004/office" xmlns:xlink="http://www.w3.org/1999/xlink" office:version="1.2""#;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A text document: one page per entry, each a large line of text.
pub fn text_fodt(pages: &[&str]) -> String {
    text_fodt_with(pages, "")
}

/// [`text_fodt`] with `scripts` (an `office:scripts` element) in it.
pub fn text_fodt_with(pages: &[&str], scripts: &str) -> String {
    let mut body = String::new();
    for (i, page) in pages.iter().enumerate() {
        let style = if i == 0 { "Big" } else { "BigBreak" };
        body.push_str(&format!(
            "<text:p text:style-name=\"{style}\">{}</text:p>",
            escape(page)
        ));
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<office:document {NS} office:mimetype="application/vnd.oasis.opendocument.text">
{scripts}
<office:automatic-styles>
<style:style style:name="Big" style:family="paragraph"><style:text-properties fo:font-size="22pt" style:font-name="Liberation Sans"/></style:style>
<style:style style:name="BigBreak" style:family="paragraph"><style:paragraph-properties fo:break-before="page"/><style:text-properties fo:font-size="22pt"/></style:style>
</office:automatic-styles>
<office:body><office:text>{body}</office:text></office:body></office:document>
"#
    )
}

/// A spreadsheet of one sheet with these rows.
pub fn sheet_fods(rows: &[&[&str]]) -> String {
    let mut body = String::new();
    for row in rows {
        body.push_str("<table:table-row>");
        for cell in *row {
            body.push_str(&format!(
                "<table:table-cell office:value-type=\"string\" table:style-name=\"Big\"><text:p>{}</text:p></table:table-cell>",
                escape(cell)
            ));
        }
        body.push_str("</table:table-row>");
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<office:document {NS} office:mimetype="application/vnd.oasis.opendocument.spreadsheet">
<office:automatic-styles>
<style:style style:name="Big" style:family="table-cell"><style:text-properties fo:font-size="20pt"/></style:style>
<style:style style:name="Wide" style:family="table-column"><style:table-column-properties style:column-width="9cm"/></style:style>
</office:automatic-styles>
<office:body><office:spreadsheet><table:table table:name="Sheet1">
<table:table-column table:style-name="Wide" table:number-columns-repeated="{}"/>
{body}
</table:table></office:spreadsheet></office:body></office:document>
"#,
        rows.iter().map(|r| r.len()).max().unwrap_or(1)
    )
}

/// A presentation: one slide per entry, each a big text box.
pub fn slides_fodp(slides: &[&str]) -> String {
    let mut body = String::new();
    for (i, slide) in slides.iter().enumerate() {
        body.push_str(&format!(
            r#"<draw:page draw:name="s{i}"><draw:frame draw:style-name="Plain" svg:x="1cm" svg:y="3cm" svg:width="24cm" svg:height="6cm"><draw:text-box><text:p text:style-name="Big">{}</text:p></draw:text-box></draw:frame></draw:page>"#,
            escape(slide)
        ));
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<office:document {NS} office:mimetype="application/vnd.oasis.opendocument.presentation">
<office:automatic-styles>
<style:style style:name="Big" style:family="paragraph"><style:text-properties fo:font-size="36pt"/></style:style>
<style:style style:name="Plain" style:family="graphic"><style:graphic-properties draw:fill="none" draw:stroke="none"/></style:style>
</office:automatic-styles>
<office:body><office:presentation>{body}</office:presentation></office:body></office:document>
"#
    )
}

/// Converts `source` (flat XML named `name`) with the host's LibreOffice
/// to `target` (`docx`, `xlsx`, `pptx`, `odt`, `pdf`, or
/// `ext:Filter Name`); returns the new file's bytes.
pub fn convert(dir: &Path, name: &str, source: &[u8], target: &str) -> Vec<u8> {
    let src = dir.join(name);
    std::fs::write(&src, source).unwrap();
    let out = dir.join(format!("out-{}", target.split(':').next().unwrap()));
    std::fs::create_dir_all(&out).unwrap();
    let run = Command::new("soffice")
        .arg("--headless")
        .arg(format!(
            "-env:UserInstallation=file://{}",
            dir.join("host-profile").display()
        ))
        .args(["--convert-to", target, "--outdir"])
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap();
    let stem = Path::new(name).file_stem().unwrap().to_string_lossy();
    let file = out.join(format!("{stem}.{}", target.split(':').next().unwrap()));
    std::fs::read(&file).unwrap_or_else(|e| {
        panic!(
            "host LibreOffice made no {}: {e}: {}{}",
            file.display(),
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        )
    })
}

/// How many pages the host's LibreOffice makes of `bytes` (named `name`),
/// as pdfinfo counts them.
pub fn host_page_count(dir: &Path, name: &str, bytes: &[u8]) -> u32 {
    let sub = dir.join(format!("host-{name}"));
    std::fs::create_dir_all(&sub).unwrap();
    let pdf = convert(&sub, name, bytes, "pdf");
    let path = sub.join("host.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = Command::new("pdfinfo").arg(&path).output().unwrap();
    let info = String::from_utf8_lossy(&out.stdout).into_owned();
    info.lines()
        .find_map(|l| l.strip_prefix("Pages:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("pdfinfo: {info}"))
}

/// An `office:scripts` element: a Basic macro bound to the document's
/// load event that would write `path`.
pub fn load_macro(path: &str) -> String {
    format!(
        r#"<office:scripts><office:script script:language="ooo:Basic"><ooo:libraries><ooo:library-embedded ooo:name="Standard"><ooo:module ooo:name="Module1"><ooo:source-code>Sub Main
  Dim n As Integer
  n = FreeFile
  Open "{path}" For Output As #n
  Print #n, "the macro ran"
  Close #n
End Sub
</ooo:source-code></ooo:module></ooo:library-embedded></ooo:libraries></office:script>
<office:event-listeners><script:event-listener script:language="ooo:script" script:event-name="dom:load" xlink:href="vnd.sun.star.script:Standard.Module1.Main?language=Basic&amp;location=document" xlink:type="simple"/></office:event-listeners></office:scripts>"#
    )
}
