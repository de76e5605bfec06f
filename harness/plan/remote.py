"""Reading manifest files at URIs: bounded in time and size, and one line when it cannot be done.

A location such as ``gs://bucket/a.png`` is read through fsspec. Three things used to go wrong: without the
scheme's package (gcsfs for gs://) pyarrow's own filesystem was tried and waited minutes for cloud credentials;
an unreachable host hung or was reported as "file not found"; a slow server held a check forever. Now:

* a scheme whose fsspec implementation is not installed is refused at once, naming the package to install;
* for http(s) the host is first reached with a plain TCP connection, so "cannot reach host" and "file not
  found" (an HTTP 404) are told apart;
* the whole read runs in a daemon thread bounded by :data:`REMOTE_TIMEOUT_SECONDS` and :data:`MAX_REMOTE_BYTES`
  (the file comes back in memory, so later reads cannot hang either).
"""

from __future__ import annotations

import io
import os
import socket
import threading
from typing import Any
from urllib.parse import urlparse

REMOTE_TIMEOUT_SECONDS = float(os.environ.get("CLIC_REMOTE_TIMEOUT", "30"))
CONNECT_TIMEOUT_SECONDS = 5.0
MAX_REMOTE_BYTES = 1 << 30
# The package that gives fsspec each scheme (fsspec's own registry names the class, not the pip package).
SCHEME_PACKAGES = {
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "s3": "s3fs",
    "s3a": "s3fs",
    "az": "adlfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
    "adl": "adlfs",
    "http": "aiohttp",
    "https": "aiohttp",
    "hf": "huggingface_hub",
    "sftp": "paramiko",
    "ssh": "paramiko",
    "oci": "ocifs",
    "hdfs": "pyarrow",
    "dropbox": "dropboxdrivefs",
}


class RemoteError(OSError):
    """A remote location that cannot be read; ``str()`` is one line (the caller adds the location)."""


def missing_package(scheme: str) -> str | None:
    """None when fsspec can open ``scheme://``, else the problem naming the package to install."""
    try:
        import fsspec

        fsspec.get_filesystem_class(scheme)
    except ImportError:
        package = SCHEME_PACKAGES.get(scheme, f"the fsspec implementation of {scheme}://")
        return f"{scheme}:// needs the {package} package, which is not installed (pip install {package})"
    except ValueError:
        return f"URL scheme {scheme!r} is not known to fsspec"
    return None


def unreachable(host: str, port: int, timeout: float) -> str | None:
    """None when ``host:port`` accepts a TCP connection within ``timeout`` seconds, else why not, in words
    ("unknown host name", "Connection refused within 5 s", ...)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror:
        return "unknown host name"
    except OSError as err:
        reason = "no answer" if isinstance(err, socket.timeout) else (err.strerror or type(err).__name__)
        return f"{reason} within {timeout:g} s"


def _check_host(location: str) -> None:
    parsed = urlparse(location)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    problem = unreachable(host, port, CONNECT_TIMEOUT_SECONDS)
    if problem == "unknown host name":
        raise RemoteError(f"cannot reach host {host!r}: unknown host name")
    if problem is not None:
        raise RemoteError(f"cannot reach host {host}:{port} ({problem})")


def _read(location: str) -> bytes:
    import fsspec

    with fsspec.open(location, "rb").open() as handle:
        data = handle.read(MAX_REMOTE_BYTES + 1)
    if len(data) > MAX_REMOTE_BYTES:
        raise RemoteError(f"larger than {MAX_REMOTE_BYTES >> 20} MB, the limit for one manifest file")
    return data


def read_remote(location: str, timeout: float | None = None) -> io.BytesIO:
    """The bytes at ``location`` (a URI fsspec can open), or RemoteError / FileNotFoundError in one line."""
    timeout = REMOTE_TIMEOUT_SECONDS if timeout is None else timeout
    scheme = location.split("://", 1)[0].lower()
    problem = missing_package(scheme)
    if problem is not None:
        raise RemoteError(problem)
    if scheme in ("http", "https"):
        _check_host(location)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["data"] = _read(location)
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    worker = threading.Thread(target=work, name=f"read {location}", daemon=True)  # daemon: never blocks exit
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise RemoteError(f"no answer within {timeout:g} s (set CLIC_REMOTE_TIMEOUT to wait longer)")
    error = outcome.get("error")
    if isinstance(error, FileNotFoundError):
        raise FileNotFoundError(location)
    if error is not None:
        raise RemoteError(f"cannot read ({type(error).__name__}: {' '.join(str(error).split())[:200]})")
    return io.BytesIO(outcome["data"])
