"""CacheFolder: files under a cache root that no link can redirect and no other user can
write.

Every path under the root is opened one folder at a time from a descriptor of the root
(``openat`` with ``O_NOFOLLOW``), so a link anywhere below it, a folder or a file
replaced by one, is refused rather than followed. Files are opened ``O_NONBLOCK`` and
checked with ``fstat`` to be regular files (a FIFO or a device named like a segment is
refused, never read); removals are ``unlinkat`` relative to the folder that holds the
name, and whole folders are removed with ``os.fwalk``, which never leaves the tree.

Trust, as ssh trusts ``~/.ssh``: the root and every folder and file under it must belong
to this user and be writable by no one else; the folders above the root must belong to
this user or root and be writable by no one else unless sticky (``/tmp``). A folder
shared on purpose is allowed with ``trusted_group``: then folders and files of that
group may also be written by its members, and belong to any of them. Anything else
raises :class:`UntrustedFolderError`.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import stat
from collections.abc import Iterator
from typing import NoReturn

from netcache.errors import UntrustedFolderError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def group_id(trusted_group: str | int | None) -> int | None:
    """The id of ``trusted_group`` (a name or a number), or None; raises naming it."""
    if trusted_group is None:
        return None
    if isinstance(trusted_group, bool) or not isinstance(trusted_group, (str, int)):
        raise TypeError(f"trusted_group={trusted_group!r} must be None, a group name or a gid")
    if isinstance(trusted_group, int):
        return trusted_group
    try:
        return grp.getgrnam(trusted_group).gr_gid
    except KeyError:
        raise ValueError(f"trusted_group={trusted_group!r} names no group here") from None


class CacheFolder:
    """A root folder, held open, and the files under it.

    Thread-safe: it holds no state but the root's descriptor, closed when the object is
    collected (never explicitly, so that no thread can use a number reused by another
    file).
    """

    def __init__(
        self, root: str, sub: str = "", trusted_gid: int | None = None, create: bool = True
    ) -> None:
        #: the user's folder, as the operating system resolves it (a link given as the
        #: root itself is the user's own choice, and is resolved once here)
        self.root = os.path.realpath(os.path.abspath(os.path.expanduser(root)))
        self.path = os.path.join(self.root, sub) if sub else self.root
        self._sub = sub
        self.trusted_gid = trusted_gid
        self._uid = os.geteuid()
        self._folder_mode = 0o2770 if trusted_gid is not None else 0o700
        self.file_mode = 0o660 if trusted_gid is not None else 0o600
        self._fd = self._open_root(create)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            os.close(fd)

    # -- trust ---------------------------------------------------------------------------

    def _open_root(self, create: bool) -> int:
        """Open ``root/sub``, making missing folders owner-only (if ``create``, else
        ``FileNotFoundError``); every folder on the way is checked (those above ``root``
        by the rules for parents)."""
        above = [p for p in self.root.split("/") if p]
        parts = above + [p for p in self._sub.split("/") if p]
        fd = os.open("/", _DIR_FLAGS)
        try:
            for depth, name in enumerate(parts):
                inside = depth >= len(above) - 1
                where = "/" + "/".join(parts[: depth + 1])
                child, _ = self._open_child(fd, name, create, inside=inside, where=where)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check(self, st: os.stat_result, where: str, inside: bool) -> None:
        """Raise unless ``st`` (a folder or file at ``where``) may be trusted: ``inside``
        the root, by the rules for the root's content, else those for its parents."""
        group = self.trusted_gid is not None and st.st_gid == self.trusted_gid
        if inside:
            owner_ok = st.st_uid == self._uid or group
            writable = st.st_mode & (0o002 if group else 0o022)
        else:
            owner_ok = st.st_uid in (0, self._uid) or group
            writable = st.st_mode & (0o002 if group else 0o022) and not st.st_mode & stat.S_ISVTX
        if not owner_ok:
            raise UntrustedFolderError(
                f"{where} belongs to user id {st.st_uid}, not to this user ({self._uid}): "
                "another user could plant the bytes this cache serves; use a folder of your "
                "own, or trusted_group= for a folder shared on purpose"
            )
        if writable:
            raise UntrustedFolderError(
                f"{where} can be written by other users (mode {stat.filemode(st.st_mode)}): "
                "they could plant the bytes this cache serves; chmod go-w it, or use "
                "trusted_group= for a folder shared on purpose"
            )

    def _open_child(self, parent: int, name: str, create: bool, inside: bool = True,
                    where: str = "") -> tuple[int, bool]:  # fmt: skip
        """Open folder ``name`` of ``parent`` (made if missing and ``create``); returns
        its descriptor and whether this call made it."""
        made = False
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(name, self._folder_mode, dir_fd=parent)
                made = True
            except FileExistsError:
                pass
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            _raise_refused(exc, where or name, parent, name)
        try:
            st = os.fstat(fd)
            if made and stat.S_IMODE(st.st_mode) != self._folder_mode:
                os.fchmod(fd, self._folder_mode)  # the umask took group bits away
                st = os.fstat(fd)
            self._check(st, where if where.startswith("/") else os.path.join(self.path, where),
                        inside)  # fmt: skip
        except BaseException:
            os.close(fd)
            raise
        return fd, made

    # -- folders -------------------------------------------------------------------------

    def open_folder(self, rel: str, create: bool = False) -> tuple[int, bool]:
        """A descriptor of folder ``rel`` (relative to the root, "" for the root itself)
        and whether this call made it; missing folders are made if ``create``, else
        ``FileNotFoundError``."""
        fd = os.dup(self._fd)
        made = False
        done = ""
        try:
            for name in (p for p in rel.split("/") if p):
                done = f"{done}/{name}" if done else name
                child, made = self._open_child(fd, name, create, where=done)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd, made

    def listdir(self, rel: str) -> list[str]:
        """Names in folder ``rel``; empty if it is missing."""
        try:
            fd, _ = self.open_folder(rel)
        except FileNotFoundError:
            return []
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def walk(self) -> Iterator[tuple[str, list[str], int]]:
        """(folder relative to the root, names of its files, its descriptor) for every
        folder under the root, never through a link; folders failing the trust check
        raise."""
        for top, dirs, files, fd in os.fwalk(".", dir_fd=self._fd):
            rel = top[2:] if top.startswith("./") else ""
            self._check(os.fstat(fd), os.path.join(self.path, rel), inside=True)
            links = [d for d in dirs if stat.S_ISLNK(os.lstat(d, dir_fd=fd).st_mode)]
            files.extend(links)  # a link to a folder is a name to remove, not to enter
            dirs[:] = [d for d in dirs if d not in links]
            yield rel, files, fd

    # -- files ---------------------------------------------------------------------------

    def open_file(self, rel: str, flags: int, create_folder: bool = False) -> tuple[int, bool]:
        """A descriptor of regular file ``rel`` opened with ``flags`` (never through a
        link, never a FIFO or device) and whether its folder was made by this call."""
        folder, name = os.path.split(rel)
        dir_fd, made = self.open_folder(folder, create_folder)
        try:
            return self.open_in(dir_fd, name, flags, rel), made
        finally:
            os.close(dir_fd)

    def open_in(self, dir_fd: int, name: str, flags: int, where: str = "") -> int:
        """``open_file`` for a name in a folder already open."""
        try:
            fd = os.open(name, flags | _FILE_FLAGS, self.file_mode, dir_fd=dir_fd)
        except OSError as exc:
            _raise_refused(exc, where or name, dir_fd, name)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UntrustedFolderError(f"{where or name} is not a regular file")
            self._check(st, os.path.join(self.path, where or name), inside=True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read_small(self, rel: str, cap: int) -> bytes | None:
        """The bytes of regular file ``rel`` if it holds at most ``cap``; None if it is
        missing; ``UntrustedFolderError`` if it is larger or not a regular file."""
        try:
            fd, _ = self.open_file(rel, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            if os.fstat(fd).st_size > cap:
                raise UntrustedFolderError(f"{rel} is larger than {cap} bytes")
            blob = os.pread(fd, cap + 1, 0)
        finally:
            os.close(fd)
        if len(blob) > cap:
            raise UntrustedFolderError(f"{rel} is larger than {cap} bytes")
        return blob

    def replace(self, dir_fd: int, tmp: str, name: str) -> None:
        """Rename ``tmp`` over ``name`` within one folder (a link named ``name`` is
        replaced, never followed)."""
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def remove(self, rel: str) -> None:
        """Remove whatever stands at ``rel`` (file, link, FIFO or folder tree); absent
        is fine."""
        folder, name = os.path.split(rel)
        try:
            dir_fd, _ = self.open_folder(folder)
        except FileNotFoundError:
            return
        try:
            remove_at(dir_fd, name)
        finally:
            os.close(dir_fd)


def remove_at(dir_fd: int, name: str) -> None:
    """Remove ``name`` in folder ``dir_fd``, whatever it is; a folder with all it holds,
    never leaving it through a link. Absent is fine."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except FileNotFoundError:
        return
    except (IsADirectoryError, PermissionError):  # Linux says EISDIR, macOS EPERM
        pass
    for _, dirs, files, fd in os.fwalk(name, dir_fd=dir_fd, topdown=False):
        for entry in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry, dir_fd=fd)
        for entry in dirs:
            try:
                os.rmdir(entry, dir_fd=fd)
            except NotADirectoryError:  # a link to a folder: the link goes
                os.unlink(entry, dir_fd=fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(name, dir_fd=dir_fd)


def _raise_refused(exc: OSError, where: str, dir_fd: int, name: str) -> NoReturn:
    """Raise ``exc``; a link (or a FIFO without a writer, ``ENXIO``) as
    :class:`UntrustedFolderError`. A regular file where a folder should be stays
    ``NotADirectoryError``."""
    link = exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO)
    if exc.errno == errno.ENOTDIR:
        with contextlib.suppress(OSError):
            link = stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    if link:
        raise UntrustedFolderError(
            f"{where} is a link or not what it should be ({exc.strerror})"
        ) from exc
    raise exc
