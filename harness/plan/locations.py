"""Where a manifest's paths point: local paths relative to the manifest's folder, or URIs that fsspec can open.
Resolution refuses paths that leave the folder (also through a symlink) unless ``allow_outside``; a scheme
whose package is missing is refused at once, naming it; remote reads are bounded (:mod:`harness.plan.remote`)."""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import IO
from urllib.parse import unquote, urlparse

from .remote import missing_package, read_remote

URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


@dataclass(frozen=True)
class ManifestBase:
    """The manifest's folder: a local directory or a URI prefix."""

    local: str | None  # absolute directory
    uri: str | None  # "scheme://netloc/dir"

    def join(self, relative: str) -> str:
        if self.local is not None:
            return os.path.abspath(os.path.join(self.local, relative))
        scheme, rest = self.uri.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, relative))}"


def scheme_supported(scheme: str) -> bool:
    """Whether ``scheme://`` locations can be opened (local files or fsspec schemes). pyarrow's own cloud
    filesystems are not used: without credentials they wait minutes before failing."""
    scheme = scheme.lower()
    if scheme == "file":
        return True
    try:
        import fsspec
    except ImportError:
        return False
    return scheme in fsspec.available_protocols()


def escapes_folder(relative: str) -> bool:
    normalised = os.path.normpath(relative)
    return normalised == os.pardir or normalised.startswith(os.pardir + os.sep)


def _real_path(location: str, real_dirs: dict[str, str] | None) -> str:
    """``os.path.realpath(location)``, its folder's part resolved once per folder (``real_dirs``): a manifest of
    100k rows keeps its files in a few folders, and resolving every component of every path took most of
    its validation. The file itself is still followed when it is a symlink."""
    if real_dirs is None or os.path.islink(location):
        return os.path.realpath(location)
    folder, name = os.path.split(location)
    real = real_dirs.get(folder)
    if real is None:
        real = real_dirs[folder] = os.path.realpath(folder)
    return os.path.join(real, name)


def resolve_location(
    value: str, base: ManifestBase, allow_outside: bool, real_dirs: dict[str, str] | None = None
) -> tuple[str | None, str | None]:
    """(location, None) or (None, problem) for one path cell; ``real_dirs`` caches resolved folders over calls."""
    if not value.strip():
        return None, "empty path (write null for 'not given')"
    match = URI.match(value)
    if match:
        scheme = match.group(1).lower()
        if not scheme_supported(scheme):
            return (
                None,
                f"URL scheme {scheme!r} is not supported (local paths, file://, or schemes of fsspec such as s3://, gs://): {value}",
            )
        if scheme != "file":
            problem = missing_package(scheme)  # refused now, not after a wait for credentials
            return (value, None) if problem is None else (None, f"{problem}: {value}")
        local = unquote(urlparse(value).path)
        if not allow_outside:
            return (
                None,
                f"file:// URL refused, paths must be relative to the manifest's folder (allow with --allow-outside): {value}",
            )
        return os.path.abspath(local), None
    if os.path.isabs(value):
        if not allow_outside:
            return (
                None,
                f"absolute path refused, paths must be relative to the manifest's folder (allow with --allow-outside): {value}",
            )
        return os.path.abspath(value), None
    if escapes_folder(value) and not allow_outside:
        return None, f"path escapes the manifest's folder (allow with --allow-outside): {value}"
    location = base.join(value)
    if base.local is not None and not allow_outside:
        # The same containment rule for where a symlink (of the file or of a folder on the way) leads.
        real, folder = _real_path(location, real_dirs), _real_path(base.local, real_dirs)
        if real != folder and not real.startswith(folder.rstrip(os.sep) + os.sep):  # os.path.commonpath, cheaper
            return (
                None,
                f"path leads outside the manifest's folder through a symlink, to {real} (allow with --allow-outside): {value}",
            )
    return location, None


def is_uri(location: str) -> bool:
    return URI.match(location) is not None


def open_location(location: str) -> IO[bytes]:
    """Open a resolved location (local path or URI) for binary reading."""
    if not is_uri(location):
        return open(location, "rb")
    if location.lower().startswith("file://"):
        return open(unquote(urlparse(location).path), "rb")
    # Bounded in time and size; a scheme without its package is one line naming it (harness.plan.remote).
    return read_remote(location)
