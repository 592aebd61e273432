"""Finding input files, reading them in blocks, and writing output durably."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bulkinfer.errors import BulkinferError, InputError

READ_BLOCK_BYTES = 1 << 20
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class InputFile:
    index: int
    path: Path
    name: str
    """Path relative to the input location; the output file is ``<name>.out``."""
    size: int
    mtime_ns: int = 0

    @property
    def fingerprint(self) -> str:
        """Changes when the file does: a resumed job must read the same records."""
        return f"{self.size}:{self.mtime_ns}"


def list_inputs(location: Path, within: Path | None = None) -> list[InputFile]:
    """The ``.jsonl`` files at a location: the file itself, or every one under a folder, sorted.

    With ``within`` (a local bucket's folder), a file that resolves outside it, through a symbolic link,
    is refused: a bucket must not serve files from elsewhere on the machine.
    """
    if not location.exists():
        raise InputError(f"input not found: {location}")
    if location.is_file():
        if location.suffix != ".jsonl":
            raise InputError(f"input {location} is not a .jsonl file")
        files = [_input(0, location, location.name)]
    else:
        paths = sorted(p for p in location.rglob("*.jsonl") if p.is_file() and not _hidden(p, location))
        if not paths:
            raise InputError(f"no .jsonl file under {location}")
        files = [_input(i, p, p.relative_to(location).as_posix()) for i, p in enumerate(paths)]
    if within is not None:
        _refuse_escapes(files, within)
    return files


def _refuse_escapes(files: list[InputFile], within: Path) -> None:
    inside = within.resolve()  # the bucket folder may itself be a link
    for file in files:
        if not file.path.resolve().is_relative_to(inside):
            raise InputError(f"{file.name}: a symbolic link to outside its bucket is not read")


def _input(index: int, path: Path, name: str) -> InputFile:
    stat = path.stat()
    return InputFile(index, path, name, stat.st_size, stat.st_mtime_ns)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def read_blocks(
    path: Path, block_bytes: int = READ_BLOCK_BYTES, start: int = 0, end: int | None = None
) -> Iterator[bytes]:
    """A file's bytes in blocks (those from ``start`` up to ``end`` only, where given), without the
    byte-order mark some editors put before UTF-8 text."""
    left = None if end is None else end - start
    try:
        with path.open("rb") as f:
            f.seek(start)
            first = f.read(_upto(max(block_bytes, len(UTF8_BOM)), left))
            if left is not None:
                left -= len(first)
            if start == 0:
                first = first.removeprefix(UTF8_BOM)
            if first:
                yield first
            while block := f.read(_upto(block_bytes, left)):
                if left is not None:
                    left -= len(block)
                yield block
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc


def _upto(size: int, left: int | None) -> int:
    return size if left is None else max(0, min(size, left))


class DiskFull(BulkinferError):
    """No space is left on a filesystem bulkinfer writes to."""

    def __init__(self, folder: Path, message: str | None = None) -> None:
        self.folder = folder
        free = free_mb(folder)
        free_text = "?" if free is None else f"{free:,}"
        super().__init__(
            message or f"disk full: no space left on the filesystem of {folder} ({free_text} MB free)"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (DiskFull, (self.folder, str(self)))


def free_mb(folder: Path) -> int | None:
    """Free space, in MB, on the filesystem holding ``folder`` (or its nearest existing parent)."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free // (1 << 20)
            except OSError:
                return None
    return None


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


TEMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """Where `write_durably` writes ``path`` before renaming it: a hidden sibling."""
    return path.with_name(f".{path.name}{TEMP_SUFFIX}")


def write_durably(path: Path, parts: Iterable[bytes]) -> None:
    """Write a file so that after a crash it is either whole or absent (temp file, fsync, rename).

    The temp file is removed whatever stops the write (an error, an interrupt); a full disk raises
    `DiskFull` naming the folder.
    """
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException as exc:
        remove_quietly(tmp)
        if is_disk_full(exc):
            raise DiskFull(path.parent) from exc
        raise
    fsync_dir(path.parent)


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete the temp files `write_durably` left under ``folder`` when its process was killed."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for tmp in folder.rglob(f".*{TEMP_SUFFIX}"):
            if tmp.is_file():
                remove_quietly(tmp)
                removed.append(tmp)
    return removed


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
