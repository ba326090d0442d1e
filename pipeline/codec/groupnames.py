"""Band group names and the stream file names they become.

A band group's name becomes its stream file names (``<name>.mkv``, ``<name>.0.mkv``) and,
dots mapped to '_', TACO child ids: names given by a recipe or the API are checked here,
names made from channel names are made unique here, and a plan's stream files are checked
to be plain file names no two of which are one TACO child.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from pipeline.confine import safe_name
from pipeline.errors import InvalidCubeError, UnsafePathError

# a plain identifier, nothing a path could read as a folder
GROUP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
GROUP_NAME_MAX = 48


def group_name_problem(name: object) -> str | None:
    """What is wrong with a band group's name given by a recipe or the API, or None."""
    if not isinstance(name, str):
        return f"{name!r} is not a string"
    if len(name) > GROUP_NAME_MAX:
        return f"{name[:20]!r}... is {len(name)} characters long (at most {GROUP_NAME_MAX})"
    if not GROUP_NAME.fullmatch(name):
        return (
            f"{name!r} is not a plain identifier: a letter, then letters, digits, '_' or '-' "
            "(the name becomes stream file names)"
        )
    return None


def taco_key(filename: str) -> str:
    """A file's TACO child id (taco.staged.child_id: dots -> '_'), case-folded: two files
    with the same key would be one child of a sample (and one file on a case-insensitive
    disk)."""
    return filename.replace(".", "_").casefold()


def check_group_names(names: Sequence[str | None], where: str = "band group") -> None:
    """Every given name a plain identifier, none repeated once mapped to a TACO child id."""
    seen: dict[str, str] = {}
    for name in names:
        if name is None:
            continue
        problem = group_name_problem(name)
        if problem:
            raise InvalidCubeError(f"{where} name {problem}")
        key = taco_key(name)
        if key in seen:
            other = seen[key]
            same = "is given twice" if other == name else f"and {other!r} name the same files"
            raise InvalidCubeError(f"{where} name {name!r} {same} (names must differ)")
        seen[key] = name


def group_name(names: Sequence[str], taken: set[str]) -> str:
    base = "_".join(re.sub(r"[^A-Za-z0-9]+", "", n) or "band" for n in names)[:48] or "stream"
    name, i = base.lower(), 1
    folded = {taco_key(t) for t in taken}  # a recipe's "RGB" takes "rgb" too
    while taco_key(name) in folded:
        name, i = f"{base.lower()}{i}", i + 1
    taken.add(name)
    return name


def check_stream_files(files: Iterable[tuple[str, str]]) -> None:
    """Every stream file, given as (group name, file name), a plain file name (names from
    data go through confine.safe_name) and no two the same TACO child: ``a.0.mkv`` and
    ``a_0.mkv`` would be one."""
    seen: dict[str, str] = {}
    for group, file in files:
        try:
            safe_name(file, f"band group {group!r}: stream file")
        except UnsafePathError as exc:
            raise InvalidCubeError(str(exc)) from None
        key = taco_key(file)
        if key in seen:
            raise InvalidCubeError(
                f"band group {group!r}: stream file {file!r} and {seen[key]!r} would be "
                "one TACO child (dots read as '_'); rename the group"
            )
        seen[key] = file
