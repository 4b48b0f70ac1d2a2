"""Upload archives read under caps: streamed in chunks into scratch files, never trusting a zip header's sizes."""
from __future__ import annotations

import datetime as dt
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO


MAX_UPLOAD_BYTES = 50 * 1024 * 1024        # one file as read (a notebook is far smaller)
MAX_SUBMISSION_BYTES = 200 * 1024 * 1024   # all files read from one submission's archives
MAX_EXPORT_BYTES = 4 * 1024 * 1024 * 1024  # all files read from one LMS export
MAX_ENTRIES = 1000                         # entries in one uploaded zip
MAX_EXPORT_ENTRIES = 100_000               # entries in one LMS export zip
MAX_DEPTH = 2                              # zips in zips: an uploaded zip, and one zip inside it
CHUNK = 1024 * 1024
SKIP_PARTS = {"__MACOSX", ".ipynb_checkpoints", "__pycache__"}
class CapExceeded(ValueError):
    """A file or a zip hit one of the caps above (that file is not read)."""


# What a damaged archive entry raises as it is read (a bad CRC, corrupt deflate data, a truncated file,
# an unsupported method or an encrypted entry): it costs only that file.
UNREADABLE = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, RuntimeError, NotImplementedError)


def entry_time(info: zipfile.ZipInfo, fallback: float, tz: dt.tzinfo | None = None) -> float:
    """An entry's DOS time (local, or in ``tz``) as seconds, or ``fallback`` where it is no date
    (zeroed: month 0, day 0)."""
    try:
        return dt.datetime(*info.date_time, tzinfo=tz).timestamp()
    except (ValueError, OverflowError):
        return fallback


def shown(text: str) -> str:
    """Text for the staff terminal: control and format characters (ANSI/OSC escapes, bidi overrides,
    newlines in a file name) written as escapes, so a file name cannot forge report lines."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


class BudgetExceeded(CapExceeded):
    """A submission or an export hit its cap on unpacked bytes (nothing more of it is read)."""


def _mb(n: int) -> str:
    return f"{n / (1 << 20):g} MB"


@dataclass
class Budget:
    """Bytes a submission (or an export) may still unpack."""
    left: int
    what: str = "submission"
    parent: "Budget | None" = None  # a submission's budget draws on its export's too
    cap: int = 0

    def __post_init__(self):
        self.cap = self.cap or self.left

    def take(self, n: int) -> None:
        if self.parent is not None:
            self.parent.take(n)
        self.left -= n
        if self.left < 0:
            raise BudgetExceeded(f"the {self.what} unpacks to more than {_mb(self.cap)} (the cap on a {self.what})")


def copy_capped(src: BinaryIO, dst: BinaryIO, cap: int = MAX_UPLOAD_BYTES, budget: Budget | None = None) -> int:
    """Copy in chunks; stop as soon as more than ``cap`` bytes (or the budget) have been read."""
    n = 0
    while True:
        chunk = src.read(min(CHUNK, cap + 1 - n))
        if not chunk:
            return n
        n += len(chunk)
        if budget is not None:
            budget.take(len(chunk))
        if n > cap:
            raise CapExceeded(f"larger than {_mb(cap)} (the cap on one file)")
        dst.write(chunk)


def open_zip(fileobj, max_entries: int = MAX_ENTRIES) -> zipfile.ZipFile:
    """A ZipFile whose central directory was sized before it was read (zipfile reads it whole)."""
    try:
        end = zipfile._EndRecData(fileobj)  # private, but the only way to size the directory first
    except (AttributeError, OSError):
        end = None
    if end and (end[zipfile._ECD_ENTRIES_TOTAL] > max_entries or end[zipfile._ECD_SIZE] > max_entries * 1024):
        raise CapExceeded(f"more than {max_entries} entries (the cap on entries in one zip)")
    zf = zipfile.ZipFile(fileobj)
    if len(zf.infolist()) > max_entries:
        zf.close()
        raise CapExceeded(f"more than {max_entries} entries (the cap on entries in one zip)")
    return zf



# -- the shared matcher --------------------------------------------------------------------
# -- the shared matcher --------------------------------------------------------------------
