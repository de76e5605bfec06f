"""Where a manifest's paths point: local paths relative to the manifest's folder, or URIs that pyarrow.fs or
fsspec can open. Resolution refuses paths that leave the folder unless ``allow_outside``."""
from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import IO
from urllib.parse import unquote, urlparse

URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# Schemes pyarrow.fs opens natively (fsspec adds many more when installed).
PYARROW_SCHEMES = frozenset({"s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"})

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
    """Whether ``scheme://`` locations can be opened (local files, pyarrow.fs or fsspec schemes)."""
    scheme = scheme.lower()
    if scheme == "file" or scheme in PYARROW_SCHEMES:
        return True
    try:
        import fsspec
    except ImportError:
        return False
    return scheme in fsspec.available_protocols()


def escapes_folder(relative: str) -> bool:
    normalised = os.path.normpath(relative)
    return normalised == os.pardir or normalised.startswith(os.pardir + os.sep)


def resolve_location(value: str, base: ManifestBase, allow_outside: bool) -> tuple[str | None, str | None]:
    """(location, None) or (None, problem) for one path cell."""
    if not value.strip():
        return None, "empty path (write null for 'not given')"
    match = URI.match(value)
    if match:
        scheme = match.group(1).lower()
        if not scheme_supported(scheme):
            return None, f"URL scheme {scheme!r} is not supported (local paths, file://, or schemes of pyarrow.fs/fsspec such as s3://, gs://): {value}"
        if scheme != "file":
            return value, None
        local = unquote(urlparse(value).path)
        if not allow_outside:
            return None, f"file:// URL refused, paths must be relative to the manifest's folder (allow with --allow-outside): {value}"
        return os.path.abspath(local), None
    if os.path.isabs(value):
        if not allow_outside:
            return None, f"absolute path refused, paths must be relative to the manifest's folder (allow with --allow-outside): {value}"
        return os.path.abspath(value), None
    if escapes_folder(value) and not allow_outside:
        return None, f"path escapes the manifest's folder (allow with --allow-outside): {value}"
    return base.join(value), None


def is_uri(location: str) -> bool:
    return URI.match(location) is not None


def open_location(location: str) -> IO[bytes]:
    """Open a resolved location (local path or URI) for binary reading."""
    if not is_uri(location):
        return open(location, "rb")
    if location.lower().startswith("file://"):
        return open(unquote(urlparse(location).path), "rb")
    try:
        import fsspec

        return fsspec.open(location, "rb").open()
    except (ImportError, ValueError):  # no fsspec implementation installed: pyarrow's own filesystems
        from pyarrow import fs as pafs

        filesystem, path = pafs.FileSystem.from_uri(location)
        return filesystem.open_input_file(path)
