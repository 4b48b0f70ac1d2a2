"""LMS export formats: Gradescope's "Export Submissions" zip (with its metadata) and Canvas's "Download Submissions" zip."""
from __future__ import annotations

import datetime as dt
import functools
import io
import os
import re
import zipfile
from dataclasses import dataclass

from attnkit import ids
from attnkit.lms.archives import SKIP_PARTS, CapExceeded, copy_capped, entry_time
from attnkit.lms.matching import Upload


CANVAS_RE = (r"^(?P<name>[^_/]+?)(?P<late>_late)?_(?P<student_id>\d+)_(?P<submission_id>\d+)_"
             r"(?P<file_id>[^/]+)$")
@dataclass
class Person:
    student_id: str
    name: str = ""
    email: str = ""
    lms_user_id: str = ""
    lms_id: str = ""           # the id the LMS gave (student_id is it, mapped to the id rule)


@dataclass
class Submission:
    key: str                   # the export's folder (Gradescope) or '<user id>' (Canvas)
    people: list               # [Person] (several for a Gradescope group submission)
    uploads: list              # [Upload]
    when: dt.datetime
    late: bool = False


def _gradescope_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    # Gradescope writes Ruby objects (``!ruby/object:BigDecimal``) for scores: read them as text.
    def unknown(loader, suffix, node):
        if isinstance(node, yaml.ScalarNode):
            return loader.construct_scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_mapping(node, deep=True)

    Loader.add_multi_constructor("!", unknown)
    return Loader


def _key(d: dict, name: str):
    """A Gradescope YAML key, written ``:name:`` (a Ruby symbol) or plain."""
    for k in (f":{name}", name, f":{name}:"):
        if k in d:
            return d[k]
    return None


def _when(value) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, str) and value.strip():
        text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip())   # nanoseconds -> microseconds
        text = re.sub(r"\s+([+-]\d\d:?\d\d|UTC|Z)$", r"\1", text).replace("UTC", "+00:00").replace("Z", "+00:00")
        parsed = dt.datetime.fromisoformat(text)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
    raise ValueError(f"no submission time ({value!r})")


def parse_gradescope_metadata(text: str, problems: list | None = None) -> dict:
    """``submission_metadata.yml`` -> {folder: {"people": [Person], "when": datetime}}.

    The student id is the SID, or the email where the SID is empty. A submitter with neither is
    left out with a line in ``problems`` (a submission left with nobody too); raised without it."""
    import yaml

    try:
        data = yaml.load(text, Loader=_gradescope_loader())
    except yaml.YAMLError as exc:
        raise ValueError(f"submission_metadata.yml is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("submission_metadata.yml: expected one entry per submission folder")
    out = {}
    for folder, entry in data.items():
        if not isinstance(entry, dict):
            raise ValueError(f"submission_metadata.yml: entry {folder!r} is not a mapping")
        people, nameless = [], 0
        for s in _key(entry, "submitters") or []:
            sid = str(_key(s, "sid") or "").strip()
            email = str(_key(s, "email") or "").strip()
            if not (sid or email):
                why = f"submission_metadata.yml: a submitter of {folder!r} has neither SID nor email"
                if problems is None:
                    raise ValueError(why)
                problems.append(f"{why} ({str(_key(s, 'name') or '').strip()!r}): not collected "
                                f"(give them an SID or email in Gradescope)")
                nameless += 1
                continue
            people.append(Person(ids.from_lms(sid or email), str(_key(s, "name") or "").strip(), email,
                                 lms_id=sid or email))
        if not people and nameless:
            continue  # said above
        if not people:
            raise ValueError(f"submission_metadata.yml: {folder!r} names no submitters")
        out[str(folder)] = {"people": people, "when": _when(_key(entry, "created_at"))}
    return out


def _split_top(names: list[str]) -> str:
    """The folder every entry of an export sits in ('' if none): exports are sometimes re-zipped."""
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    if len(tops) == 1 and all("/" in n for n in names):
        return next(iter(tops)) + "/"
    return ""


def _entries(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    return [i for i in zf.infolist() if not i.is_dir() and not SKIP_PARTS & set(i.filename.split("/"))]


def read_gradescope_export(zf: zipfile.ZipFile, problems: list | None = None) -> list[Submission]:
    infos = _entries(zf)
    prefix = _split_top([i.filename for i in infos])
    meta_name = prefix + "submission_metadata.yml"
    try:
        with zf.open(meta_name) as src:
            text = io.BytesIO()
            copy_capped(src, text)
    except KeyError:
        raise ValueError("not a Gradescope export: no submission_metadata.yml at its top") from None
    except CapExceeded as exc:
        raise ValueError(f"submission_metadata.yml: {exc}") from None
    meta = parse_gradescope_metadata(text.getvalue().decode("utf-8", errors="replace"), problems)
    subs = []
    for folder, entry in meta.items():
        inside = prefix + folder + "/"
        # read later, in chunks and capped, and only if a notebook or a zip
        uploads = [Upload(i.filename[len(inside):], None, entry["when"].timestamp(),
                          opener=functools.partial(zf.open, i))
                   for i in infos if i.filename.startswith(inside)]
        subs.append(Submission(folder, entry["people"], uploads, entry["when"]))
    return subs


def read_canvas_export(zf: zipfile.ZipFile, mtime: float | None = None) -> tuple[list[Submission], list[str]]:
    """Canvas names every file ``<name>[_late]_<user id>_<submission id>_<original name>``;
    nbgrader's FileNameCollectorPlugin reads those names with CANVAS_RE. Returns the
    submissions (one per student) and the files that are not Canvas-named. An entry with no
    date (zeroed) takes ``mtime`` (the export's; now if not given)."""
    import time

    fallback = time.time() if mtime is None else mtime
    from nbgrader.plugins import FileNameCollectorPlugin

    plugin = FileNameCollectorPlugin(named_regexp=CANVAS_RE, valid_ext=[".ipynb", ".zip", ".IPYNB", ".ZIP"])
    per_user: dict[str, Submission] = {}
    stray = []
    for info in _entries(zf):
        base = info.filename.rsplit("/", 1)[-1]
        found = plugin.collect(base) if os.path.splitext(base)[1] in plugin.valid_ext else None
        if not found:
            stray.append(info.filename)
            continue
        # Canvas stamps entries with the upload time (in UTC)
        when = dt.datetime.fromtimestamp(entry_time(info, fallback, dt.timezone.utc), dt.timezone.utc)
        sub = per_user.setdefault(found["student_id"], Submission(
            found["student_id"], [Person(found["student_id"], found["name"], lms_user_id=found["student_id"])],
            [], when))
        # the attachment id orders two uploads made within the same zip second
        sub.uploads.append(Upload(found["file_id"], None, when.timestamp(), int(found["submission_id"]),
                                  opener=functools.partial(zf.open, info)))
        sub.when = max(sub.when, when)
        sub.late = sub.late or bool(found["late"])
    return list(per_user.values()), stray
