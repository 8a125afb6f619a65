//! A macro-enabled Word document made from nothing: the OOXML parts and a
//! VBA project (`word/vbaProject.bin`, an OLE2 file) whose `AutoOpen` and
//! `Document_Open` write a file, laid out as [MS-OVBA] describes, with its
//! streams in the format's compression (literal tokens only).

use std::io::{Cursor, Write};

/// MS-OVBA compression: a container of chunks of at most 4096 bytes, each
/// written as literal tokens (a flag byte of 0 before every 8 bytes).
fn ovba_compress(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x01];
    for chunk in data.chunks(4096) {
        let mut body = Vec::new();
        for group in chunk.chunks(8) {
            body.push(0);
            body.extend_from_slice(group);
        }
        // Size less 3 in bits 0-11, signature 0b011 in 12-14, compressed flag.
        let header = u16::try_from(body.len() + 2 - 3).unwrap() | 0x3000 | 0x8000;
        out.extend_from_slice(&header.to_le_bytes());
        out.extend(body);
    }
    out
}

fn record(out: &mut Vec<u8>, id: u16, data: &[u8]) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
    out.extend_from_slice(data);
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// The `dir` stream of a project with one standard module, `Module1`.
fn dir_stream() -> Vec<u8> {
    let mut d = Vec::new();
    record(&mut d, 0x0001, &1u32.to_le_bytes()); // SYSKIND: win32
    record(&mut d, 0x0002, &0x409u32.to_le_bytes()); // LCID
    record(&mut d, 0x0014, &0x409u32.to_le_bytes()); // LCIDINVOKE
    record(&mut d, 0x0003, &1252u16.to_le_bytes()); // CODEPAGE
    record(&mut d, 0x0004, b"Project"); // NAME
    record(&mut d, 0x0005, b""); // DOCSTRING
    record(&mut d, 0x0040, b"");
    record(&mut d, 0x0006, b""); // HELPFILEPATH
    record(&mut d, 0x003d, b"");
    record(&mut d, 0x0007, &0u32.to_le_bytes()); // HELPCONTEXT
    record(&mut d, 0x0008, &0u32.to_le_bytes()); // LIBFLAGS
                                                 // VERSION: its size field is 4, then 6 bytes follow.
    d.extend_from_slice(&0x0009u16.to_le_bytes());
    d.extend_from_slice(&4u32.to_le_bytes());
    d.extend_from_slice(&1u32.to_le_bytes());
    d.extend_from_slice(&0u16.to_le_bytes());
    record(&mut d, 0x000c, b""); // CONSTANTS
    record(&mut d, 0x003c, b"");
    record(&mut d, 0x000f, &1u16.to_le_bytes()); // MODULES: one
    record(&mut d, 0x0013, &0xffffu16.to_le_bytes()); // COOKIE
    record(&mut d, 0x0019, b"Module1"); // MODULENAME
    record(&mut d, 0x0047, &utf16("Module1"));
    record(&mut d, 0x001a, b"Module1"); // STREAMNAME
    record(&mut d, 0x0032, &utf16("Module1"));
    record(&mut d, 0x001c, b""); // DOCSTRING
    record(&mut d, 0x0048, b"");
    record(&mut d, 0x0031, &0u32.to_le_bytes()); // OFFSET: source at 0
    record(&mut d, 0x001e, &0u32.to_le_bytes()); // HELPCONTEXT
    record(&mut d, 0x002c, &0xffffu16.to_le_bytes()); // COOKIE
    record(&mut d, 0x0021, b""); // TYPE: procedural
    record(&mut d, 0x002b, b""); // module end
    record(&mut d, 0x0010, b""); // dir end
    d
}

/// `word/vbaProject.bin`: `AutoOpen` and `Document_Open` write `path`.
fn vba_project(path: &str) -> Vec<u8> {
    let write = format!(
        "    Open \"{path}\" For Output As #1\r\n    Print #1, \"the macro ran\"\r\n    Close #1\r\n"
    );
    let source = format!(
        "Attribute VB_Name = \"Module1\"\r\nSub AutoOpen()\r\n{write}End Sub\r\n\
         Sub Document_Open()\r\n{write}End Sub\r\n"
    );
    let project = "ID=\"{00000000-0000-0000-0000-000000000000}\"\r\nModule=Module1\r\n\
                   Name=\"Project\"\r\nHelpContextID=\"0\"\r\nVersionCompatible32=\"393222000\"\r\n\
                   \r\n[Host Extender Info]\r\n&H00000001={3832D640-CF90-11CF-8E43-00A0C911005A};VBE;&H00000000\r\n";
    let mut cfb = cfb::CompoundFile::create(Cursor::new(Vec::new())).unwrap();
    cfb.create_storage("/VBA").unwrap();
    let mut put = |name: &str, data: &[u8]| {
        let mut s = cfb.create_stream(name).unwrap();
        s.write_all(data).unwrap();
    };
    put("/PROJECT", project.as_bytes());
    put(
        "/VBA/_VBA_PROJECT",
        &[0xcc, 0x61, 0xff, 0xff, 0x00, 0x00, 0x00],
    );
    put("/VBA/dir", &ovba_compress(&dir_stream()));
    put("/VBA/Module1", &ovba_compress(source.as_bytes()));
    cfb.flush().unwrap();
    cfb.into_inner().into_inner()
}

/// A .docm showing `text`, whose VBA project would write `path` on open.
pub fn docm_with_auto_macro(text: &str, path: &str) -> Vec<u8> {
    let parts: [(&str, Vec<u8>); 5] = [
        (
            "[Content_Types].xml",
            br#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Default Extension="bin" ContentType="application/vnd.ms-office.vbaProject"/><Override PartName="/word/document.xml" ContentType="application/vnd.ms-word.document.macroEnabled.main+xml"/></Types>"#
                .to_vec(),
        ),
        (
            "_rels/.rels",
            br#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>"#
                .to_vec(),
        ),
        (
            "word/document.xml",
            format!(
                r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body><w:p><w:r><w:rPr><w:sz w:val="44"/></w:rPr><w:t>{text}</w:t></w:r></w:p></w:body></w:document>"#
            )
            .into_bytes(),
        ),
        (
            "word/_rels/document.xml.rels",
            br#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.microsoft.com/office/2006/relationships/vbaProject" Target="vbaProject.bin"/></Relationships>"#
                .to_vec(),
        ),
        ("word/vbaProject.bin", vba_project(path)),
    ];
    let mut out = Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in parts {
        zip.start_file(name, opts).unwrap();
        zip.write_all(&data).unwrap();
    }
    zip.finish().unwrap();
    out.into_inner()
}
