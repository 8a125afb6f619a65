"""Vitrine for Nautilus: "Open safely" and "Save a safe copy" in the file
context menu.

"Open safely" runs `vitrine open FILE` for each selected local file, so the
file is opened inside a throwaway Vitrine micro-VM instead of on the
desktop. "Save a safe copy" runs `vitrine convert FILE...`: each file is
rebuilt beside it as NAME-safe.pdf from its pages' pixels (with OCR text
when the profile says so).
Works with nautilus-python's API 4.0 (Nautilus 43+) and falls back to 3.0.
"""

import subprocess
from urllib.parse import unquote, urlparse

import gi

try:
    gi.require_version("Nautilus", "4.0")
except ValueError:
    gi.require_version("Nautilus", "3.0")

from gi.repository import GObject, Nautilus  # noqa: E402

# The installer writes the absolute path of the `vitrine` CLI here.
VITRINE = "@VITRINE@"


def local_path(file_info):
    """The local path of a Nautilus file, or None for remote/virtual ones."""
    uri = file_info.get_uri()
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    return unquote(parsed.path)


def commands_for(paths):
    """One `vitrine open PATH` command per selected file."""
    return [[VITRINE, "open", path] for path in paths]


def safe_copy_command(paths):
    """One `vitrine convert` for the whole selection: one VM per file."""
    return [VITRINE, "convert", *paths]


class VitrineMenuProvider(GObject.GObject, Nautilus.MenuProvider):
    """Adds "Open safely" for a selection of regular local files."""

    def get_file_items(self, *args):
        # API 4.0 passes (files); 3.0 passes (window, files).
        files = args[-1]
        paths = []
        for file_info in files:
            if file_info.is_directory():
                return []
            path = local_path(file_info)
            if path is None:
                return []
            paths.append(path)
        if not paths:
            return []
        item = Nautilus.MenuItem(
            name="Vitrine::OpenSafely",
            label="Open safely",
            tip="Open in a throwaway Vitrine sandbox",
            icon="security-high",
        )
        item.connect("activate", self.on_activate, paths)
        copy = Nautilus.MenuItem(
            name="Vitrine::SaveSafeCopy",
            label="Save a safe copy",
            tip="Rebuild as a clean PDF from its pixels",
            icon="document-save",
        )
        copy.connect("activate", self.on_safe_copy, paths)
        return [item, copy]

    def on_activate(self, _item, paths):
        for command in commands_for(paths):
            # Detached: the sandbox outlives the menu callback.
            subprocess.Popen(command, start_new_session=True)

    def on_safe_copy(self, _item, paths):
        subprocess.Popen(safe_copy_command(paths), start_new_session=True)
