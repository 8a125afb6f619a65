//! The desktop integration installed into a temporary home: every file is
//! checked with the tool its desktop reads it with (desktop-file-validate,
//! python3, an XML parser, a key-file parser, xdg-mime), and uninstall must
//! give back the home exactly as it was.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use vitrine_daemon::desktop::install::{
    self, default_service_files, Change, DesktopError, InstallOptions, Targets,
    THUNAR_SAFE_COPY_ID, THUNAR_UNIQUE_ID,
};

const VITRINE: &str = "/opt/vitrine/bin/vitrine";
const VITRINED: &str = "/opt/vitrine/bin/vitrined";

const USER_UCA: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<actions>
<action>
	<icon>utilities-terminal</icon>
	<name>Open Terminal Here</name>
	<unique-id>1700000000000000-1</unique-id>
	<command>exo-open --working-directory %f --launch TerminalEmulator</command>
	<description>Example for a custom action</description>
	<patterns>*</patterns>
	<startup-notify/>
	<directories/>
</action>
</actions>
"#;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

/// The daemon's D-Bus and systemd files from the tree when they are there,
/// else stand-ins (printed), so the installer's handling of them is tested.
fn service_files(scratch: &Path) -> PathBuf {
    let real = default_service_files();
    if real.join("org.vitrine.Sandbox1.service").exists() && real.join("vitrined.service").exists()
    {
        return real;
    }
    eprintln!(
        "NOTE: {} lacks the D-Bus/systemd files; using stand-ins for them",
        real.display()
    );
    let dir = scratch.join("service-files");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("org.vitrine.Sandbox1.service"),
        "[D-BUS Service]\nName=org.vitrine.Sandbox1\nExec=@VITRINED@\n",
    )
    .unwrap();
    fs::write(
        dir.join("vitrined.service"),
        "[Unit]\nDescription=Vitrine\n\n[Service]\nType=dbus\nBusName=org.vitrine.Sandbox1\nExecStart=@VITRINED@\n",
    )
    .unwrap();
    dir
}

fn options(home: &Path, scratch: &Path) -> InstallOptions {
    InstallOptions {
        targets: Targets::for_home(home, None, None),
        vitrine: PathBuf::from(VITRINE),
        vitrined: PathBuf::from(VITRINED),
        service_files: service_files(scratch),
    }
}

/// Every file and folder under `root`, with its mode and content.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                out.insert(path.clone(), (mode, Vec::new()));
                stack.push(path);
            } else {
                out.insert(path.clone(), (mode, fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// A desktop-entry key file: group -> key -> value, with line-precise errors.
fn parse_key_file(text: &str) -> Result<BTreeMap<String, BTreeMap<String, String>>, String> {
    let mut groups: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if groups.insert(name.to_owned(), BTreeMap::new()).is_some() {
                return Err(format!("line {}: group [{name}] twice", n + 1));
            }
            current = Some(name.to_owned());
            continue;
        }
        let group = current
            .as_ref()
            .ok_or_else(|| format!("line {}: key before any group", n + 1))?;
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: not key=value: {line}", n + 1))?;
        let map = groups.get_mut(group).unwrap();
        if map
            .insert(k.trim().to_owned(), v.trim().to_owned())
            .is_some()
        {
            return Err(format!("line {}: key {k} twice", n + 1));
        }
    }
    Ok(groups)
}

fn key_file(path: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    parse_key_file(&fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn install_writes_every_integration_file_with_the_right_exec() {
    // Arrange
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("home");
    fs::create_dir(&home).unwrap();
    let opts = options(&home, scratch.path());
    let t = &opts.targets;

    // Act
    let changes = install::install(&opts).unwrap();

    // Assert
    assert!(
        !changes.iter().any(|c| matches!(c, Change::Skipped { .. })),
        "{changes:?}"
    );
    let handler = key_file(&t.desktop_file());
    let entry = &handler["Desktop Entry"];
    assert_eq!(entry["Exec"], format!("{VITRINE} url %u"));
    for mime in [
        "x-scheme-handler/http;",
        "x-scheme-handler/https;",
        "application/pdf;",
        "image/png;",
    ] {
        assert!(entry["MimeType"].contains(mime), "MimeType lacks {mime}");
    }
    assert_eq!(handler["Desktop Action open-safely"]["Name"], "Open safely");
    assert_eq!(
        handler["Desktop Action open-safely"]["Exec"],
        format!("{VITRINE} open %f")
    );
    assert_eq!(
        handler["Desktop Action open-link-safely"]["Exec"],
        format!("{VITRINE} url %u")
    );
    assert_eq!(
        handler["Desktop Action save-safe-copy"]["Name"],
        "Save a safe copy"
    );
    assert_eq!(
        handler["Desktop Action save-safe-copy"]["Exec"],
        format!("{VITRINE} convert %F")
    );

    let runner = key_file(&t.run_desktop_file());
    let run_entry = &runner["Desktop Entry"];
    assert_eq!(run_entry["Exec"], format!("{VITRINE} run %f"));
    for mime in [
        "application/x-executable;",
        "application/x-sharedlib;",
        "application/x-shellscript;",
        "application/x-ms-dos-executable;",
        "application/vnd.appimage;",
    ] {
        assert!(
            run_entry["MimeType"].contains(mime),
            "the run handler's MimeType lacks {mime}"
        );
    }

    for menu in [t.dolphin_plasma5(), t.dolphin_plasma6()] {
        let k = key_file(&menu);
        assert_eq!(k["Desktop Entry"]["Type"], "Service");
        assert_eq!(
            k["Desktop Entry"]["Actions"],
            "vitrineOpenSafely;vitrineSaveSafeCopy;"
        );
        assert_eq!(
            k["Desktop Action vitrineOpenSafely"]["Exec"],
            format!("{VITRINE} open %f")
        );
        assert_eq!(
            k["Desktop Action vitrineSaveSafeCopy"]["Exec"],
            format!("{VITRINE} convert %F")
        );
    }
    assert!(menu_path_ends(
        &t.dolphin_plasma5(),
        "kservices5/ServiceMenus/vitrine-open.desktop"
    ));
    assert!(menu_path_ends(
        &t.dolphin_plasma6(),
        "kio/servicemenus/vitrine-open.desktop"
    ));
    let mode6 = fs::metadata(t.dolphin_plasma6())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode6 & 0o111,
        0o111,
        "Plasma 6 service menus must be executable"
    );

    let nemo = key_file(&t.nemo_action());
    assert!(menu_path_ends(
        &t.nemo_action(),
        ".local/share/nemo/actions/vitrine-open.nemo_action"
    ));
    assert_eq!(nemo["Nemo Action"]["Exec"], format!("{VITRINE} open %F"));
    assert_eq!(nemo["Nemo Action"]["Selection"], "s");
    let copy = key_file(&t.nemo_safe_copy());
    assert_eq!(copy["Nemo Action"]["Exec"], format!("{VITRINE} convert %F"));
    assert_eq!(copy["Nemo Action"]["Name"], "Save a safe copy");

    let dbus = key_file(&t.dbus_service());
    assert_eq!(dbus["D-BUS Service"]["Name"], "org.vitrine.Sandbox1");
    assert!(
        dbus["D-BUS Service"]["Exec"].starts_with(VITRINED),
        "{dbus:?}"
    );
    assert!(t
        .systemd_unit()
        .starts_with(home.join(".config/systemd/user")));
    assert!(fs::read_to_string(t.systemd_unit())
        .unwrap()
        .contains(VITRINED));
}

/// Every office type the guest's LibreOffice shows, as file managers and
/// mail clients name them.
const OFFICE_TYPES: &[&str] = &[
    "application/msword",
    "application/vnd.ms-excel",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.ms-word.document.macroEnabled.12",
    "application/vnd.ms-excel.sheet.macroEnabled.12",
    "application/vnd.ms-powerpoint.presentation.macroEnabled.12",
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
    "application/rtf",
    "text/rtf",
];

#[test]
fn office_documents_reach_the_handler_and_every_file_manager_action() {
    // Arrange
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("home");
    fs::create_dir(&home).unwrap();
    let opts = options(&home, scratch.path());
    let t = &opts.targets;

    // Act
    install::install(&opts).unwrap();

    // Assert: the handler lists each type by name.
    let handler = key_file(&t.desktop_file());
    let listed: Vec<&str> = handler["Desktop Entry"]["MimeType"]
        .split(';')
        .filter(|m| !m.is_empty())
        .collect();
    let missing: Vec<&&str> = OFFICE_TYPES
        .iter()
        .filter(|m| !listed.contains(m))
        .collect();
    assert!(
        missing.is_empty(),
        "the handler's MimeType lacks {missing:?}"
    );
    // The menus take every file, so every office type: Dolphin through
    // application/octet-stream, which every file type derives from; Nemo
    // with no Mimetypes filter; Thunar by pattern `*` over the file kinds
    // office documents fall in (RTF is text, the rest "other").
    for menu in [t.dolphin_plasma5(), t.dolphin_plasma6()] {
        assert_eq!(
            key_file(&menu)["Desktop Entry"]["MimeType"],
            "application/octet-stream;"
        );
    }
    for action in [t.nemo_action(), t.nemo_safe_copy()] {
        let nemo = key_file(&action);
        assert!(!nemo["Nemo Action"].contains_key("Mimetypes"), "{nemo:?}");
        assert_eq!(nemo["Nemo Action"]["Extensions"], "nodirs;");
    }
    let uca = fs::read_to_string(t.thunar_uca()).unwrap();
    let doc = roxmltree::Document::parse(&uca).unwrap();
    for id in [THUNAR_UNIQUE_ID, THUNAR_SAFE_COPY_ID] {
        let action = doc
            .descendants()
            .find(|n| {
                n.has_tag_name("action")
                    && n.children()
                        .any(|c| c.has_tag_name("unique-id") && c.text() == Some(id))
            })
            .unwrap_or_else(|| panic!("no Thunar action {id}: {uca}"));
        let has = |tag: &str| action.children().any(|c| c.has_tag_name(tag));
        let patterns = action
            .children()
            .find(|c| c.has_tag_name("patterns"))
            .and_then(|c| c.text());
        assert_eq!(patterns, Some("*"), "{id}");
        assert!(has("other-files") && has("text-files"), "{id}: {uca}");
    }
}

fn menu_path_ends(path: &Path, tail: &str) -> bool {
    path.to_string_lossy().ends_with(tail)
}

#[test]
fn handler_desktop_file_passes_desktop_file_validate() {
    if !have("desktop-file-validate") {
        eprintln!("SKIPPED handler_desktop_file_passes_desktop_file_validate: no desktop-file-validate (apt-get install desktop-file-utils)");
        return;
    }
    // Arrange
    let scratch = tempfile::tempdir().unwrap();
    let opts = options(scratch.path(), scratch.path());
    install::install(&opts).unwrap();

    // Act
    let out = Command::new("desktop-file-validate")
        .arg(opts.targets.desktop_file())
        .arg(opts.targets.run_desktop_file())
        .output()
        .unwrap();

    // Assert: no errors (hints are allowed, errors fail the exit status).
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "desktop-file-validate: {said}");
    assert!(!said.contains("error:"), "{said}");
}

#[test]
fn thunar_action_merges_into_the_users_file_and_keeps_their_action() {
    // Arrange
    let scratch = tempfile::tempdir().unwrap();
    let opts = options(scratch.path(), scratch.path());
    let uca = opts.targets.thunar_uca();
    fs::create_dir_all(uca.parent().unwrap()).unwrap();
    fs::write(&uca, USER_UCA).unwrap();

    // Act
    install::install(&opts).unwrap();
    install::install(&opts).unwrap(); // again: replaces, does not duplicate

    // Assert
    let text = fs::read_to_string(&uca).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("uca.xml stays well-formed");
    let actions: Vec<_> = doc
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("action"))
        .collect();
    let field = |a: &roxmltree::Node, tag: &str| {
        a.children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.text())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(actions.len(), 3);
    assert_eq!(field(&actions[0], "name"), "Open Terminal Here");
    assert_eq!(field(&actions[1], "unique-id"), THUNAR_UNIQUE_ID);
    assert_eq!(field(&actions[1], "command"), format!("{VITRINE} open %f"));
    assert_eq!(field(&actions[1], "name"), "Open safely");
    assert_eq!(field(&actions[2], "unique-id"), THUNAR_SAFE_COPY_ID);
    assert_eq!(
        field(&actions[2], "command"),
        format!("{VITRINE} convert %F")
    );
    assert_eq!(field(&actions[2], "name"), "Save a safe copy");
}

#[test]
fn uninstall_removes_exactly_what_install_added() {
    // Arrange: a home with the user's own Thunar action and other files.
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("home");
    let opts = options(&home, scratch.path());
    fs::create_dir_all(home.join(".config/Thunar")).unwrap();
    fs::write(opts.targets.thunar_uca(), USER_UCA).unwrap();
    fs::create_dir_all(home.join(".local/share/applications")).unwrap();
    fs::write(
        home.join(".local/share/applications/other.desktop"),
        "[Desktop Entry]\n",
    )
    .unwrap();
    let before = snapshot(&home);

    // Act
    install::install(&opts).unwrap();
    let during = snapshot(&home);
    let removed = install::uninstall(&opts.targets).unwrap();

    // Assert
    assert!(during.len() > before.len() + 8, "install added files");
    assert!(!removed.is_empty());
    let after = snapshot(&home);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    assert_eq!(after, before, "contents and modes restored");
    assert!(
        install::uninstall(&opts.targets).unwrap().is_empty(),
        "second uninstall is a no-op"
    );
}

#[test]
fn uninstall_keeps_a_created_uca_xml_once_the_user_adds_actions_to_it() {
    // Arrange: no uca.xml before; install creates it; the user adds one.
    let scratch = tempfile::tempdir().unwrap();
    let opts = options(scratch.path(), scratch.path());
    install::install(&opts).unwrap();
    let uca = opts.targets.thunar_uca();
    let with_ours = fs::read_to_string(&uca).unwrap();
    let user_action = "<action>\n\t<name>Mine</name>\n\t<unique-id>9-9</unique-id>\n</action>\n";
    fs::write(
        &uca,
        with_ours.replace("</actions>", &format!("{user_action}</actions>")),
    )
    .unwrap();

    // Act
    install::uninstall(&opts.targets).unwrap();

    // Assert
    let text = fs::read_to_string(&uca).unwrap();
    assert!(text.contains("<name>Mine</name>"));
    assert!(!text.contains(THUNAR_UNIQUE_ID));
    roxmltree::Document::parse(&text).unwrap();
}

#[test]
fn install_refuses_to_replace_a_file_it_did_not_install() {
    // Arrange
    let scratch = tempfile::tempdir().unwrap();
    let opts = options(scratch.path(), scratch.path());
    let theirs = opts.targets.nemo_action();
    fs::create_dir_all(theirs.parent().unwrap()).unwrap();
    fs::write(&theirs, "[Nemo Action]\nName=theirs\n").unwrap();
    let before = snapshot(scratch.path());

    // Act
    let err = install::install(&opts).unwrap_err();

    // Assert
    assert!(matches!(err, DesktopError::NotOurs(p) if p == theirs));
    assert_eq!(snapshot(scratch.path()), before, "nothing written");
}

#[test]
fn nautilus_extension_compiles_and_its_menu_runs_vitrine_open() {
    if !have("python3") {
        eprintln!("SKIPPED nautilus_extension_compiles_and_its_menu_runs_vitrine_open: no python3");
        return;
    }
    // Arrange
    let scratch = tempfile::tempdir().unwrap();
    let opts = options(scratch.path(), scratch.path());
    install::install(&opts).unwrap();
    let ext = opts.targets.nautilus_extension();
    let compiled = Command::new("python3")
        .args(["-m", "py_compile"])
        .arg(&ext)
        .status()
        .unwrap();
    assert!(compiled.success(), "py_compile failed");
    // Nautilus is not on a build host: stand-ins for gi's Nautilus/GObject
    // let the real extension code run its menu callback.
    let stub = scratch.path().join("stub");
    fs::create_dir_all(stub.join("gi/repository")).unwrap();
    fs::write(
        stub.join("gi/__init__.py"),
        "import os\nasked = []\ndef require_version(name, version):\n    asked.append(version)\n    if version == '4.0' and os.environ.get('ONLY_NAUTILUS_3'):\n        raise ValueError('Namespace Nautilus not available for version 4.0')\n",
    )
    .unwrap();
    fs::write(
        stub.join("gi/repository/__init__.py"),
        "class GObject:\n    class GObject: pass\nclass Nautilus:\n    class MenuProvider: pass\n    class MenuItem:\n        def __init__(self, **kw):\n            self.kw = kw\n            self.handlers = []\n        def connect(self, signal, fn, *args):\n            self.handlers.append((signal, fn, args))\n",
    )
    .unwrap();
    let driver = r#"
import importlib.util, json, subprocess, sys
import gi
ran = []
subprocess.Popen = lambda cmd, **kw: ran.append(cmd)
spec = importlib.util.spec_from_file_location("ext", sys.argv[1])
ext = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ext)
class F:
    def __init__(self, uri, d=False): self.uri, self.d = uri, d
    def get_uri(self): return self.uri
    def is_directory(self): return self.d
p = ext.VitrineMenuProvider()
items = p.get_file_items([F("file:///tmp/a%20b.pdf"), F("file:///tmp/c.png")])
assert [i.kw["label"] for i in items] == ["Open safely", "Save a safe copy"], items
for item in items:
    signal, fn, args = item.handlers[0]
    assert signal == "activate"
    fn(item, *args)
assert p.get_file_items(None, [F("file:///tmp/d", True)]) == []
assert p.get_file_items([F("sftp://host/x.pdf")]) == []
print(json.dumps({"ran": ran, "api": gi.asked}))
"#;

    for (only3, api) in [(false, vec!["4.0"]), (true, vec!["4.0", "3.0"])] {
        // Act
        let mut cmd = Command::new("python3");
        cmd.env("PYTHONPATH", &stub)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        if only3 {
            cmd.env("ONLY_NAUTILUS_3", "1");
        }
        let out = cmd.arg("-c").arg(driver).arg(&ext).output().unwrap();

        // Assert
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = String::from_utf8(out.stdout).unwrap();
        let want = format!(
            "{{\"ran\": [[\"{VITRINE}\", \"open\", \"/tmp/a b.pdf\"], [\"{VITRINE}\", \"open\", \"/tmp/c.png\"], [\"{VITRINE}\", \"convert\", \"/tmp/a b.pdf\", \"/tmp/c.png\"]], \"api\": {}}}",
            serde_api(&api)
        );
        assert_eq!(got.trim(), want);
    }
}

fn serde_api(v: &[&str]) -> String {
    let quoted: Vec<String> = v.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

#[test]
fn xdg_mime_can_make_the_handler_the_https_default() {
    if !have("xdg-mime") {
        eprintln!("SKIPPED xdg_mime_can_make_the_handler_the_https_default: no xdg-mime (apt-get install xdg-utils)");
        return;
    }
    // Arrange
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path();
    let opts = options(home, scratch.path());
    install::install(&opts).unwrap();
    let xdg = |args: &[&str]| {
        Command::new("xdg-mime")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_DATA_DIRS", home.join(".local/share"))
            .output()
            .unwrap()
    };

    // Act
    let set = xdg(&["default", "vitrine-open.desktop", "x-scheme-handler/https"]);
    let query = xdg(&["query", "default", "x-scheme-handler/https"]);
    let set_run = xdg(&["default", "vitrine-run.desktop", "application/x-executable"]);
    let query_run = xdg(&["query", "default", "application/x-executable"]);

    // Assert
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&query.stdout).trim(),
        "vitrine-open.desktop"
    );
    assert!(set_run.status.success());
    assert_eq!(
        String::from_utf8_lossy(&query_run.stdout).trim(),
        "vitrine-run.desktop",
        "a double-clicked executable goes to `vitrine run`"
    );
}
