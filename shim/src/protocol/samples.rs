//! One of every message, for the protocol's round-trip tests and for the
//! fuzz seed corpus (`tests/tests/fuzz_regressions.rs`), so that a new
//! message reaches both.

use super::*;

/// A small valid frame.
pub fn frame() -> Frame {
    Frame {
        page: 2,
        width: 10,
        height: 8,
        rect: Rect {
            x: 3,
            y: 4,
            w: 2,
            h: 3,
        },
        format: PixelFormat::Rgba8,
        pixels: (0..24).collect(),
    }
}

/// An `OpenFile` task header.
pub fn task() -> Task {
    Task {
        id: 7,
        kind: TaskKind::OpenFile {
            name: "report.pdf".into(),
            mime_hint: Some("application/pdf".into()),
            size: 1234,
        },
        limits: Limits::default(),
        safe_copy: None,
        live: false,
    }
}

/// A safe-copy page's print data with one OCR word.
pub fn page_print() -> PagePrint {
    PagePrint {
        task: 7,
        page: 0,
        dpi: 150,
        words: vec![OcrWord {
            x: 10,
            y: 20,
            w: 60,
            h: 14,
            text: "Grüße".into(),
        }],
    }
}

/// Every guest message kind.
pub fn guest_messages() -> Vec<GuestMessage> {
    vec![
        GuestMessage::Ready(Ready {
            shim_version: "0.1.0".into(),
            capabilities: vec![Capability::Pdf, Capability::Terminal],
        }),
        GuestMessage::Accepted { task: 7 },
        GuestMessage::PageInfo { task: 7, count: 3 },
        GuestMessage::Frame(frame()),
        GuestMessage::ExportOffer(ExportOffer {
            id: 0,
            name: "page-1.png".into(),
            size: 99,
            sha256: [0xab; 32],
            mime: "image/png".into(),
        }),
        GuestMessage::ExportChunk {
            id: 0,
            offset: 0,
            data: vec![1, 2, 3],
        },
        GuestMessage::ExportEnd { id: 0 },
        GuestMessage::ProgramExited {
            code: Some(0),
            signal: None,
        },
        GuestMessage::Done {
            task: 7,
            status: TaskStatus::Failed("bad xref".into()),
        },
        GuestMessage::Log {
            level: LogLevel::Info,
            text: "hello".into(),
        },
        GuestMessage::EgressOpen {
            host: "example.org".into(),
            port: 443,
        },
        GuestMessage::EgressSend {
            data: vec![0x16, 3, 1, 0, 4],
        },
        GuestMessage::EgressRecv { max: 16384 },
        GuestMessage::EgressClose,
        GuestMessage::StreamOpen {
            stream: 3,
            host: "example.org".into(),
            port: 443,
        },
        GuestMessage::StreamSend {
            stream: 3,
            data: vec![0x16, 3, 1],
        },
        GuestMessage::StreamPoll { wait_ms: 20 },
        GuestMessage::StreamClose { stream: 3 },
        GuestMessage::Location {
            url: "https://example.org/".into(),
            title: "Example Domain".into(),
        },
        GuestMessage::IdentityApplied(IdentityApplied {
            random_digest: [0xd1; 32],
            clock_unix_ns: 1_795_000_000_000_000_000,
        }),
        GuestMessage::PagePrint(page_print()),
    ]
}

/// Every host message kind.
pub fn host_messages() -> Vec<HostMessage> {
    vec![
        HostMessage::Task(task()),
        HostMessage::Task(Task {
            safe_copy: Some(SafeCopy {
                ocr: Some("eng+deu".into()),
            }),
            ..task()
        }),
        HostMessage::Task(Task {
            id: 8,
            kind: TaskKind::RunProgram {
                size: 10,
                args: vec!["-v".into()],
            },
            limits: Limits::default(),
            safe_copy: None,
            live: false,
        }),
        HostMessage::Task(Task {
            id: 9,
            kind: TaskKind::OpenUri {
                uri: "https://example.org/".into(),
                now_unix_secs: 1_795_000_000,
                extra_roots: vec![ByteBuf::from(vec![0x30, 0x82, 0, 1])],
            },
            limits: Limits::default(),
            safe_copy: None,
            live: false,
        }),
        HostMessage::TaskData {
            offset: 0,
            data: vec![9; 100],
        },
        HostMessage::Input(InputEvent::Key(KeyEvent {
            key: Key::Char('q'),
            modifiers: Modifiers {
                ctrl: true,
                ..Modifiers::default()
            },
        })),
        HostMessage::Input(InputEvent::Text("ls\n".into())),
        HostMessage::Input(InputEvent::Scroll { dx: 0, dy: -3 }),
        HostMessage::Input(InputEvent::PageChange { page: 1 }),
        HostMessage::Input(InputEvent::Resize {
            width: 800,
            height: 600,
        }),
        HostMessage::Input(InputEvent::Button {
            page: 0,
            x: 120,
            y: 48,
            button: MouseButton::Left,
            down: true,
        }),
        HostMessage::Input(InputEvent::Motion {
            page: 0,
            x: 121,
            y: 50,
        }),
        HostMessage::FetchExport { id: 0 },
        HostMessage::FlattenExport {
            id: 1,
            safe_copy: SafeCopy { ocr: None },
        },
        HostMessage::Shutdown,
        HostMessage::Egress(EgressReply::Connected),
        HostMessage::Egress(EgressReply::Data(vec![0x17, 3, 3, 0, 1, 9])),
        HostMessage::Egress(EgressReply::Data(Vec::new())),
        HostMessage::Egress(EgressReply::Refused("example.net:80 is not allowed".into())),
        HostMessage::Egress(EgressReply::Failed("connection refused".into())),
        HostMessage::Stream(StreamReply::Opened {
            stream: 3,
            outcome: EgressReply::Connected,
        }),
        HostMessage::Stream(StreamReply::Data(vec![
            StreamData {
                stream: 3,
                data: vec![0x17, 3, 3],
                end: false,
            },
            StreamData {
                stream: 4,
                data: Vec::new(),
                end: true,
            },
        ])),
        HostMessage::Identity(Identity {
            seed: [0x5e; 32],
            clock_unix_ns: 1_795_000_000_000_000_000,
            task: 7,
        }),
    ]
}
