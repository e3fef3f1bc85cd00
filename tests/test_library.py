"""runtime/library.py: the one place a component is built with its library, and the one
place the libraries' own output is held back."""

from __future__ import annotations

import importlib
import logging
import types
import warnings

import pytest
import torch

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.runtime.library import LibraryMissing, Pretrained, held, pretrained_kwargs
from bigmodel_cli.sizes import DTYPES


def test_held_keeps_the_libraries_lines_and_gives_their_loggers_back(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("torchao")
    before = (list(logger.handlers), logger.propagate)
    with held() as kept:
        logger.warning("Failed to load %s", "_C.so")
        logging.getLogger("torch.utils._pytree").warning("deprecated")
        warnings.warn("careful", DeprecationWarning, stacklevel=1)
    assert kept.lines[:2] == [
        "torchao: warning: Failed to load _C.so",
        "torch.utils._pytree: warning: deprecated",
    ]
    assert kept.lines[2].startswith("DeprecationWarning: careful")
    assert (list(logger.handlers), logger.propagate) == before
    assert capfd.readouterr().err == "" and caplog.records == []  # nothing went on
    logger.warning("after")  # given back: it propagates again
    assert [r.getMessage() for r in caplog.records] == ["after"]


def test_an_error_leaving_held_carries_what_the_libraries_said() -> None:
    with pytest.raises(BigmodelError) as err, held():
        logging.getLogger("diffusers").warning("Unable to import")
        raise BigmodelError("failed")
    assert err.value.warnings == ("diffusers: warning: Unable to import",)


def test_from_pretrained_arguments_name_the_dtype_as_each_library_does() -> None:
    how = Pretrained({"": "cpu"}, DTYPES["F16"], "fp16", "/tmp/off")
    new = types.SimpleNamespace(__name__="transformers", __version__="4.56.0")
    old = types.SimpleNamespace(__name__="transformers", __version__="4.55.2")
    diffusers = types.SimpleNamespace(__name__="diffusers", __version__="0.42.1")
    assert pretrained_kwargs(new, how) == {
        "device_map": {"": "cpu"},
        "offload_folder": "/tmp/off",
        "dtype": torch.float16,
        "variant": "fp16",
    }
    assert "torch_dtype" in pretrained_kwargs(old, how)
    assert "torch_dtype" in pretrained_kwargs(diffusers, how)
    assert pretrained_kwargs(diffusers, Pretrained()) == {}


def test_a_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from bigmodel_cli.runtime import library

    monkeypatch.setattr(library.importlib, "import_module", _no_module)
    with pytest.raises(
        LibraryMissing, match=r"needs the diffusers library.*bigmodel-cli\[diffusers\]"
    ):
        library.import_library("diffusers")


_IMPORT = importlib.import_module


def _no_module(name: str, package: str | None = None) -> types.ModuleType:
    if name.split(".")[0] == "diffusers":
        raise ImportError(name)
    return _IMPORT(name, package)
