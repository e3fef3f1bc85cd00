"""The names a library builds, kept on disk: planning a split model again is fast.

Asking transformers which names it builds (:func:`bigmodel_cli.runtime.library.library_names`)
imports torch and transformers and builds the model on the meta device: seconds, for an
answer that depends only on the class, the config, the stored names and the versions of
the code involved. It is kept as a JSON file under ``$HF_HOME/bigmodel/names/`` (or
``$BIGMODEL_NAMES``) named by a hash of all of those, beside the kept traces
(:mod:`.kept`). A kept file is checked on read (a regular JSON file, every field of
the right type, its stored names exactly the ones asked about, every built name one of the
model's): a damaged one is asked again, and the plan says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from bigmodel_cli.checkpoint.built_names import BuiltNames
from bigmodel_cli.formats.files import MAX_INDEX_BYTES
from bigmodel_cli.runtime.kept import (
    SCHEMA,
    installed_version,
    kept_key,
    load_kept,
    save_kept,
)

KIND = "names"
LONGEST_NAME, DEEPEST_NAME = 1000, 64  # a parameter's name: characters, dotted parts


def names_key(class_name: str | None, config: Mapping[str, Any], stored: Sequence[str]) -> str:
    """The hash naming what transformers builds from ``stored`` for this class and config."""
    return kept_key(
        library=["transformers", installed_version("transformers")],
        config=config,
        stored=hashlib.sha256("\n".join(stored).encode()).hexdigest(),
        **{"class": class_name},
    )


def kept_or_asked(key: str, stored: Sequence[str], ask: Callable[[], BuiltNames]) -> BuiltNames:
    """The kept names under ``key``; else ``ask()``'s answer, kept (a translation only),
    saying why a kept file was passed over."""
    kept, why = load_names(key, stored)
    if kept is not None:
        return kept
    found = ask()
    if not found.translated:
        return found
    save_names(key, found)
    return replace(found, repaired=why)


def load_names(key: str, stored: Sequence[str]) -> tuple[BuiltNames | None, str | None]:
    """Kept names for ``stored``, or None; and why a kept file was passed over, or None."""
    found, why = load_kept(KIND, key, lambda doc: names_problem(doc, stored), MAX_INDEX_BYTES)
    if found is None:
        return None, None if why is None else why + "; transformers asked again"
    return BuiltNames(
        library=found["library"],
        class_name=found["class"],
        built=found["built"],
        params=tuple(found["params"]),
        tied=tuple(tuple(group) for group in found["tied"]),
        no_split=tuple(found["no_split"]),
        key_mapping=found["key_mapping"],
    ), None


def save_names(key: str, names: BuiltNames) -> None:
    """Keep what the library answered."""
    save_kept(
        KIND,
        key,
        {
            "library": names.library,
            "class": names.class_name,
            "built": dict(names.built),
            "params": list(names.params),
            "tied": [list(group) for group in names.tied],
            "no_split": list(names.no_split),
            "key_mapping": dict(names.key_mapping),
        },
    )


def names_problem(doc: Mapping[str, Any], stored: Sequence[str]) -> str | None:
    """What is wrong with a kept names document for ``stored``, or None. Its form and its
    consistency are checked (types; exactly the stored names asked about; every built,
    tied and unsplit name one of the model's parameters or modules), not its truth: a file
    edited into another consistent answer is taken, as a kept trace is."""
    if type(doc.get("schema")) is not int or doc["schema"] != SCHEMA:
        return f"schema {str(doc.get('schema'))[:20]!r}, not {SCHEMA}"
    for field in ("library", "class"):
        if not isinstance(doc.get(field), str):
            return f"{field} is not text"
    for field in ("params", "no_split"):
        if not _names(doc.get(field)):
            return f"{field} is not a list of names"
    tied, mapping, built = doc.get("tied"), doc.get("key_mapping"), doc.get("built")
    if not isinstance(tied, list) or not all(_names(group) for group in tied):
        return "tied is not a list of name groups"
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        return "key_mapping is not a map of patterns"
    if not isinstance(built, dict) or list(built) != list(stored):
        return "built does not map the checkpoint's stored names"
    return _inconsistency(doc["params"], built, tied, doc["no_split"])


def _inconsistency(
    params: list[str], built: dict[str, Any], tied: list[list[str]], no_split: list[str]
) -> str | None:
    if any(len(p) > LONGEST_NAME or p.count(".") > DEEPEST_NAME for p in params):
        return "params names a parameter longer or deeper than any model's"
    known = set(params)
    modules = {p.rsplit(".", i)[0] for p in params for i in range(1, p.count(".") + 1)}
    if len(known) != len(params):
        return "params names a parameter twice"
    if not all(v is None or (isinstance(v, str) and v in known) for v in built.values()):
        return "built names a tensor the model does not have"
    if built and all(v is None for v in built.values()):
        return "built takes none of the stored tensors"
    if not all(len(g) > 1 and set(g) <= known for g in tied):
        return "tied names a parameter the model does not have"
    if not set(no_split) <= modules:
        return "no_split names a module the model does not have"
    return None


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
