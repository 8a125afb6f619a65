//! Installs and uninstalls the desktop integration: the "Open safely"
//! handler, the file-manager actions (Nautilus, Dolphin on Plasma 5 and 6,
//! Thunar, Nemo), the D-Bus activation file and the systemd user unit.
//!
//! Every path written is recorded in a manifest, so `uninstall` removes
//! exactly what `install` added: the files and folders it created, and its
//! one action inside Thunar's shared uca.xml, which it merges into rather
//! than overwrites.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::thunar;

/// The "Open safely" handler: files and http(s) links.
const OPEN_DESKTOP: &str = include_str!("../../desktop/vitrine-open.desktop");
/// The "Run in a sandbox" handler: executables and scripts.
const RUN_DESKTOP: &str = include_str!("../../desktop/vitrine-run.desktop");
/// Nautilus (nautilus-python) extension.
const NAUTILUS_PY: &str = include_str!("../../desktop/nautilus/vitrine_nautilus.py");
/// Dolphin service menu, the same file for Plasma 5 and 6.
const DOLPHIN_MENU: &str = include_str!("../../desktop/dolphin/vitrine-open.desktop");
/// Nemo action.
const NEMO_ACTION: &str = include_str!("../../desktop/nemo/vitrine-open.nemo_action");
/// Nemo's "Save a safe copy" action.
const NEMO_SAFE_COPY: &str = include_str!("../../desktop/nemo/vitrine-safe-copy.nemo_action");
/// The `<action>` merged into Thunar's uca.xml.
pub const THUNAR_ACTION: &str = include_str!("../../desktop/thunar/uca-action.xml");
/// Thunar action id, how uninstall finds its action again.
pub const THUNAR_UNIQUE_ID: &str = "vitrine-open-safely";
/// Thunar's "Save a safe copy" `<action>`.
pub const THUNAR_SAFE_COPY: &str = include_str!("../../desktop/thunar/uca-safe-copy.xml");
/// Its id.
pub const THUNAR_SAFE_COPY_ID: &str = "vitrine-save-safe-copy";
/// Every action Vitrine keeps in uca.xml, by id.
const THUNAR_ACTIONS: [(&str, &str); 2] = [
    (THUNAR_UNIQUE_ID, THUNAR_ACTION),
    (THUNAR_SAFE_COPY_ID, THUNAR_SAFE_COPY),
];

/// The D-Bus activation file and systemd user unit (the daemon's own files,
/// read from the source folder at install time).
const DBUS_SERVICE: &str = "org.vitrine.Sandbox1.service";
const SYSTEMD_UNIT: &str = "vitrined.service";

const MANIFEST: &str = "vitrine/desktop-install.manifest";

/// Why installing or uninstalling failed.
#[derive(Debug, thiserror::Error)]
pub enum DesktopError {
    /// A file or folder could not be read or written.
    #[error("{path}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file that Vitrine did not install is in the way.
    #[error("{0} exists and was not installed by Vitrine; move it away first")]
    NotOurs(PathBuf),
    /// A program path that cannot go into Exec= lines unquoted.
    #[error("program path {0:?} has characters that desktop files cannot carry (use a path of letters, digits and /._+-)")]
    UnsafeProgramPath(PathBuf),
    /// A target path with a newline cannot be recorded in the manifest.
    #[error("target path {0:?} contains a newline")]
    UnsafeTargetPath(PathBuf),
    /// Thunar's uca.xml is not what Thunar writes.
    #[error("Thunar actions {path}")]
    Thunar {
        /// uca.xml.
        path: PathBuf,
        /// Cause.
        #[source]
        source: thunar::ThunarError,
    },
}

/// Where the integration goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    /// `$XDG_DATA_HOME` (`~/.local/share`), or `PREFIX/share`.
    pub data_dir: PathBuf,
    /// `$XDG_CONFIG_HOME` (`~/.config`), or `PREFIX/etc/xdg`.
    pub config_dir: PathBuf,
    /// Where D-Bus looks for activatable services.
    pub dbus_services_dir: PathBuf,
    /// Where systemd looks for user units.
    pub systemd_user_dir: PathBuf,
}

impl Targets {
    /// A user's own install under `home`, honouring XDG_DATA_HOME and
    /// XDG_CONFIG_HOME when `xdg` carries them (absolute paths only).
    pub fn for_home(home: &Path, xdg_data: Option<&Path>, xdg_config: Option<&Path>) -> Targets {
        let data_dir = xdg_data
            .filter(|p| p.is_absolute())
            .map_or_else(|| home.join(".local/share"), Path::to_path_buf);
        let config_dir = xdg_config
            .filter(|p| p.is_absolute())
            .map_or_else(|| home.join(".config"), Path::to_path_buf);
        Targets {
            dbus_services_dir: data_dir.join("dbus-1/services"),
            systemd_user_dir: config_dir.join("systemd/user"),
            data_dir,
            config_dir,
        }
    }

    /// A system-wide install under `prefix` (for packagers).
    pub fn for_prefix(prefix: &Path) -> Targets {
        let data_dir = prefix.join("share");
        Targets {
            dbus_services_dir: data_dir.join("dbus-1/services"),
            systemd_user_dir: prefix.join("lib/systemd/user"),
            config_dir: prefix.join("etc/xdg"),
            data_dir,
        }
    }

    /// The handler's .desktop file.
    pub fn desktop_file(&self) -> PathBuf {
        self.data_dir.join("applications/vitrine-open.desktop")
    }

    /// The executables' handler .desktop file.
    pub fn run_desktop_file(&self) -> PathBuf {
        self.data_dir.join("applications/vitrine-run.desktop")
    }

    /// The Nautilus extension.
    pub fn nautilus_extension(&self) -> PathBuf {
        self.data_dir
            .join("nautilus-python/extensions/vitrine_nautilus.py")
    }

    /// Dolphin's service menu on Plasma 5.
    pub fn dolphin_plasma5(&self) -> PathBuf {
        self.data_dir
            .join("kservices5/ServiceMenus/vitrine-open.desktop")
    }

    /// Dolphin's service menu on Plasma 6.
    pub fn dolphin_plasma6(&self) -> PathBuf {
        self.data_dir.join("kio/servicemenus/vitrine-open.desktop")
    }

    /// Thunar's custom actions (shared with the user's own).
    pub fn thunar_uca(&self) -> PathBuf {
        self.config_dir.join("Thunar/uca.xml")
    }

    /// The Nemo action.
    pub fn nemo_action(&self) -> PathBuf {
        self.data_dir.join("nemo/actions/vitrine-open.nemo_action")
    }

    /// Nemo's "Save a safe copy" action.
    pub fn nemo_safe_copy(&self) -> PathBuf {
        self.data_dir
            .join("nemo/actions/vitrine-safe-copy.nemo_action")
    }

    /// The D-Bus activation file.
    pub fn dbus_service(&self) -> PathBuf {
        self.dbus_services_dir.join(DBUS_SERVICE)
    }

    /// The systemd user unit.
    pub fn systemd_unit(&self) -> PathBuf {
        self.systemd_user_dir.join(SYSTEMD_UNIT)
    }

    fn manifest(&self) -> PathBuf {
        self.data_dir.join(MANIFEST)
    }
}

/// What to install, and with which programs.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Where.
    pub targets: Targets,
    /// The `vitrine` CLI that every action runs.
    pub vitrine: PathBuf,
    /// The `vitrined` daemon, for the D-Bus and systemd files.
    pub vitrined: PathBuf,
    /// Folder holding `org.vitrine.Sandbox1.service` and `vitrined.service`.
    pub service_files: PathBuf,
}

/// One thing install or uninstall did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A file written.
    Wrote(PathBuf),
    /// The action merged into (or taken out of) a shared file.
    Merged(PathBuf),
    /// A file or folder removed.
    Removed(PathBuf),
    /// Not installed, and why.
    Skipped {
        /// What was not installed.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Wrote(p) => write!(f, "wrote   {}", p.display()),
            Change::Merged(p) => write!(f, "merged  {}", p.display()),
            Change::Removed(p) => write!(f, "removed {}", p.display()),
            Change::Skipped { path, reason } => {
                write!(f, "skipped {} ({reason})", path.display())
            }
        }
    }
}

/// The folder of the daemon's own desktop files in this source tree.
pub fn default_service_files() -> PathBuf {
    std::env::var_os("VITRINE_DESKTOP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("desktop"))
}

/// What install recorded: files and folders it created, files it merged into.
#[derive(Debug, Default)]
struct Manifest {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    merged: Vec<PathBuf>,
}

impl Manifest {
    fn load(path: &Path) -> Result<Manifest, DesktopError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Manifest::default()),
            Err(source) => {
                return Err(DesktopError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let mut m = Manifest::default();
        for line in text.lines() {
            let (kind, p) = line.split_once('\t').unwrap_or(("", line));
            let p = PathBuf::from(p);
            match kind {
                "file" => m.files.push(p),
                "dir" => m.dirs.push(p),
                "merged" => m.merged.push(p),
                _ => {}
            }
        }
        Ok(m)
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (kind, list) in [
            ("dir", &self.dirs),
            ("file", &self.files),
            ("merged", &self.merged),
        ] {
            for p in list {
                out.push_str(&format!("{kind}\t{}\n", p.display()));
            }
        }
        out
    }

    fn save(&self, path: &Path) -> Result<(), DesktopError> {
        write_file(path, &self.render(), Some(0o644))
    }

    fn add(list: &mut Vec<PathBuf>, p: &Path) {
        if !list.iter().any(|q| q == p) {
            list.push(p.to_path_buf());
        }
    }
}

/// Installs everything; safe to run again (it updates its own files).
pub fn install(opts: &InstallOptions) -> Result<Vec<Change>, DesktopError> {
    let vitrine = program_path(&opts.vitrine)?;
    let vitrined = program_path(&opts.vitrined)?;
    let t = &opts.targets;
    let manifest_path = t.manifest();
    let mut manifest = Manifest::load(&manifest_path)?;
    let mut changes = Vec::new();
    // Refuse before writing anything, so a refusal leaves no half install.
    for path in [
        t.desktop_file(),
        t.run_desktop_file(),
        t.nautilus_extension(),
        t.dolphin_plasma5(),
        t.dolphin_plasma6(),
        t.nemo_action(),
        t.nemo_safe_copy(),
        t.dbus_service(),
        t.systemd_unit(),
    ] {
        check_target(&path)?;
        if path.exists() && !manifest.files.contains(&path) {
            return Err(DesktopError::NotOurs(path));
        }
    }
    // The manifest is saved after every step, so even a failure half-way
    // leaves a record that uninstall can follow.
    create_dirs(&manifest_path, &mut manifest)?;
    manifest.save(&manifest_path)?;

    let exec = |template: &str| template.replace("@VITRINE@", &vitrine);
    let files: Vec<(PathBuf, String, u32)> = vec![
        (t.desktop_file(), exec(OPEN_DESKTOP), 0o644),
        (t.run_desktop_file(), exec(RUN_DESKTOP), 0o644),
        (t.nautilus_extension(), exec(NAUTILUS_PY), 0o644),
        (t.dolphin_plasma5(), exec(DOLPHIN_MENU), 0o644),
        // Plasma 6 only runs service menus that are executable.
        (t.dolphin_plasma6(), exec(DOLPHIN_MENU), 0o755),
        (t.nemo_action(), exec(NEMO_ACTION), 0o644),
        (t.nemo_safe_copy(), exec(NEMO_SAFE_COPY), 0o644),
    ];
    for (path, content, mode) in &files {
        write_ours(path, content, *mode, &mut manifest)?;
        manifest.save(&manifest_path)?;
        changes.push(Change::Wrote(path.clone()));
    }

    for (name, target) in [
        (DBUS_SERVICE, t.dbus_service()),
        (SYSTEMD_UNIT, t.systemd_unit()),
    ] {
        let source = opts.service_files.join(name);
        match fs::read_to_string(&source) {
            Ok(text) => {
                let text = point_exec_at(&text, &vitrined).replace("@VITRINE@", &vitrine);
                write_ours(&target, &text, 0o644, &mut manifest)?;
                manifest.save(&manifest_path)?;
                changes.push(Change::Wrote(target));
            }
            Err(e) => changes.push(Change::Skipped {
                path: target,
                reason: format!("{}: {e}", source.display()),
            }),
        }
    }

    let uca = t.thunar_uca();
    let existed = uca.exists();
    let mut merged = if existed { Some(read(&uca)?) } else { None };
    for (id, template) in THUNAR_ACTIONS {
        let action = template.replace("@VITRINE@", &xml_escape(&vitrine));
        merged = Some(
            thunar::merge(merged.as_deref(), id, &action).map_err(|source| {
                DesktopError::Thunar {
                    path: uca.clone(),
                    source,
                }
            })?,
        );
    }
    let merged = merged.unwrap_or_default();
    if existed && !manifest.files.contains(&uca) {
        // The user's own file: add our action, keep theirs and its mode.
        write_file(&uca, &merged, None)?;
        Manifest::add(&mut manifest.merged, &uca);
        changes.push(Change::Merged(uca));
    } else {
        write_ours(&uca, &merged, 0o644, &mut manifest)?;
        changes.push(Change::Wrote(uca));
    }

    manifest.save(&manifest_path)?;
    Ok(changes)
}

/// Removes exactly what [`install`] added. Without a manifest it does nothing.
pub fn uninstall(targets: &Targets) -> Result<Vec<Change>, DesktopError> {
    let manifest_path = targets.manifest();
    let manifest = Manifest::load(&manifest_path)?;
    let mut changes = Vec::new();
    for file in manifest.files.iter().chain(&manifest.merged) {
        let created = manifest.files.contains(file);
        if file.ends_with("Thunar/uca.xml") {
            let Ok(text) = fs::read_to_string(file) else {
                continue;
            };
            let (mut rest, mut left) = (text, 0);
            for (id, _) in THUNAR_ACTIONS {
                (rest, left) =
                    thunar::remove(&rest, id).map_err(|source| DesktopError::Thunar {
                        path: file.clone(),
                        source,
                    })?;
            }
            // A file we created goes once no other action lives in it; a
            // file the user had, or has since added to, keeps the rest.
            if !(created && left == 0) {
                write_file(file, &rest, None)?;
                changes.push(Change::Merged(file.clone()));
                continue;
            }
        }
        if !created {
            continue;
        }
        match fs::remove_file(file) {
            Ok(()) => changes.push(Change::Removed(file.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DesktopError::Io {
                    path: file.clone(),
                    source,
                })
            }
        }
    }
    if let Err(source) = fs::remove_file(&manifest_path) {
        if source.kind() != std::io::ErrorKind::NotFound {
            return Err(DesktopError::Io {
                path: manifest_path,
                source,
            });
        }
    }
    // Deepest first; a folder the user has put things into stays.
    let mut dirs = manifest.dirs.clone();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in dirs {
        if fs::remove_dir(&dir).is_ok() {
            changes.push(Change::Removed(dir));
        }
    }
    Ok(changes)
}

/// Writes a file that Vitrine owns: refuses to replace someone else's.
fn write_ours(
    path: &Path,
    content: &str,
    mode: u32,
    manifest: &mut Manifest,
) -> Result<(), DesktopError> {
    check_target(path)?;
    if path.exists() && !manifest.files.iter().any(|p| p == path) {
        return Err(DesktopError::NotOurs(path.to_path_buf()));
    }
    create_dirs(path, manifest)?;
    write_file(path, content, Some(mode))?;
    Manifest::add(&mut manifest.files, path);
    Ok(())
}

/// Creates the missing parents of `path`, recording each one made.
fn create_dirs(path: &Path, manifest: &mut Manifest) -> Result<(), DesktopError> {
    check_target(path)?;
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    let missing: Vec<&Path> = parent.ancestors().take_while(|a| !a.exists()).collect();
    for dir in missing.into_iter().rev() {
        fs::create_dir(dir).map_err(|source| DesktopError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Manifest::add(&mut manifest.dirs, dir);
    }
    Ok(())
}

/// Writes through a temporary file and rename, so a crash leaves the old
/// file or the new one. `mode` None keeps the existing file's mode.
fn write_file(path: &Path, content: &str, mode: Option<u32>) -> Result<(), DesktopError> {
    let io = |source| DesktopError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mode = match mode {
        Some(m) => m,
        None => fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".vitrine-")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(content.as_bytes()).map_err(io)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

fn read(path: &Path) -> Result<String, DesktopError> {
    fs::read_to_string(path).map_err(|source| DesktopError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn check_target(path: &Path) -> Result<(), DesktopError> {
    if path.as_os_str().as_encoded_bytes().contains(&b'\n') {
        return Err(DesktopError::UnsafeTargetPath(path.to_path_buf()));
    }
    Ok(())
}

/// A program path that Exec= lines, Python and XML can all carry as is.
fn program_path(path: &Path) -> Result<String, DesktopError> {
    let s = path.to_str().unwrap_or("");
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '+' | '-'));
    if !safe {
        return Err(DesktopError::UnsafeProgramPath(path.to_path_buf()));
    }
    Ok(s.to_owned())
}

/// The daemon's files name `vitrined` by an install path (`/usr/bin/vitrined`)
/// or `@VITRINED@`: both become the daemon actually being installed.
fn point_exec_at(text: &str, vitrined: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let rewritten = ["Exec=", "ExecStart="].iter().find_map(|key| {
            let rest = line.strip_prefix(key)?;
            let program = rest.split_whitespace().next()?;
            (program == "@VITRINED@" || program.ends_with("/vitrined"))
                .then(|| format!("{key}{}", rest.replacen(program, vitrined, 1)))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
    }
    out.replace("@VITRINED@", vitrined)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_paths_with_spaces_or_quotes_are_refused() {
        assert!(program_path(Path::new("/usr/bin/vitrine")).is_ok());
        for bad in ["/opt/my apps/vitrine", "/x/\"v", "/x/$HOME", "", "/x/v;rm"] {
            assert!(matches!(
                program_path(Path::new(bad)),
                Err(DesktopError::UnsafeProgramPath(_))
            ));
        }
    }

    #[test]
    fn home_targets_honour_absolute_xdg_dirs_only() {
        let t = Targets::for_home(
            Path::new("/h"),
            Some(Path::new("rel")),
            Some(Path::new("/c")),
        );
        assert_eq!(t.data_dir, Path::new("/h/.local/share"));
        assert_eq!(t.thunar_uca(), Path::new("/c/Thunar/uca.xml"));
        assert_eq!(
            t.systemd_unit(),
            Path::new("/c/systemd/user/vitrined.service")
        );
        assert_eq!(
            t.dbus_service(),
            Path::new("/h/.local/share/dbus-1/services/org.vitrine.Sandbox1.service")
        );
    }

    #[test]
    fn daemon_files_point_at_the_installed_vitrined() {
        let unit = "[Service]\nExecStart=/usr/bin/vitrined --flag\nExecStop=/bin/kill x\n";
        assert_eq!(
            point_exec_at(unit, "/opt/v/vitrined"),
            "[Service]\nExecStart=/opt/v/vitrined --flag\nExecStop=/bin/kill x\n"
        );
        let dbus = "[D-BUS Service]\nExec=@VITRINED@\nSystemdService=vitrined.service\n";
        assert_eq!(
            point_exec_at(dbus, "/o/vitrined"),
            "[D-BUS Service]\nExec=/o/vitrined\nSystemdService=vitrined.service\n"
        );
    }

    #[test]
    fn templates_carry_the_placeholder_they_are_filled_with() {
        for t in [
            OPEN_DESKTOP,
            NAUTILUS_PY,
            DOLPHIN_MENU,
            NEMO_ACTION,
            NEMO_SAFE_COPY,
            THUNAR_ACTION,
            THUNAR_SAFE_COPY,
        ] {
            assert!(t.contains("@VITRINE@"));
        }
        for (id, action) in THUNAR_ACTIONS {
            assert!(action.contains(id));
        }
    }
}
