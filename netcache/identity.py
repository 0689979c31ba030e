"""Names for remote files that are safe to write down.

A cached file is named by a hash of its target's identity and its path, so no URL ever
becomes a file name (no path traversal) and no secret is ever written in readable form.
Options that change which bytes a path means (endpoint, bucket, version, ...) take part
in the identity; options that only authenticate (keys, tokens, passwords) do not, so two
users of the same data share pages and no credential is hashed onto disk.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fsspec import AbstractFileSystem

_SECRET = re.compile(r"key|secret|token|passw|credential|session|auth|cookie", re.IGNORECASE)


def is_secret_option(name: str) -> bool:
    """Whether an option name looks like it carries a credential."""
    return bool(_SECRET.search(name))


def public_options(options: Any) -> Any:
    """``options`` with every secret-looking entry removed, recursively."""
    if isinstance(options, dict):
        return {
            str(k): public_options(v) for k, v in options.items() if not is_secret_option(str(k))
        }
    if isinstance(options, (list, tuple)):
        return [public_options(v) for v in options]
    if options is None or isinstance(options, (str, int, float, bool)):
        return options
    # Objects (sessions, clients, callables) have no stable text across processes.
    return f"<{type(options).__qualname__}>"


def target_identity(fs: AbstractFileSystem) -> str:
    """A stable digest of what ``fs`` is, without its secrets or the current thread."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    description = {
        "protocol": protocol,
        "class": f"{type(fs).__module__}.{type(fs).__qualname__}",
        "args": public_options(list(getattr(fs, "storage_args", ()))),
        "options": public_options(dict(getattr(fs, "storage_options", {}))),
    }
    return digest(json.dumps(description, sort_keys=True))


def file_id(target: str, path: str) -> str:
    """The name of one remote file in the cache: a digest of target identity and path."""
    return digest(f"{target}\0{path}")


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (``redact_url``): for messages that quote
    another library's error, which may hold the URL whole."""
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def describe_error(exc: BaseException) -> str:
    """``exc`` as a message may show it: its type and its text, URLs redacted (never its
    ``repr``, which holds them whole)."""
    return f"{type(exc).__name__}: {redact_text(str(exc))}"


def redact_url(path: str) -> str:
    """``path`` without userinfo, query string and fragment, for metadata, logs and reprs."""
    parts = urlsplit(path)
    if not parts.scheme or not parts.netloc:
        return path.split("?", 1)[0]
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
