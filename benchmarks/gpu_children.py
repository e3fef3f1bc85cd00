"""gpu_check's child roles (``gpu_check.py --child KIND``): the only code of the check that
imports torch, so that the parent's CUDA context never changes what `plan` detects."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

LIBRARIES = [  # (distribution, module)
    ("safetensors", "safetensors"),
    ("accelerate", "accelerate"),
    ("transformers", "transformers"),
    ("diffusers", "diffusers"),
    ("huggingface_hub", "huggingface_hub"),
    ("fastsafetensors", "fastsafetensors"),
    ("tokenizers", "tokenizers"),
    ("numpy", "numpy"),
    ("pillow", "PIL"),
    ("regex", "regex"),
    ("requests", "requests"),
    ("psutil", "psutil"),
    ("typer", "typer"),
    ("rich", "rich"),
]


def child_probe() -> dict[str, Any]:
    import ctypes
    import importlib
    import platform
    from importlib import metadata

    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
        "cudart": None,
        "libraries": {},
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            cap = torch.cuda.get_device_capability(i)
            info["gpus"].append(
                {
                    "index": i,
                    "name": torch.cuda.get_device_name(i),
                    "capability": f"{cap[0]}.{cap[1]}",
                    "free": free,
                    "total": total,
                }
            )
        try:
            with open("/proc/self/maps") as maps:
                for line in maps:
                    path = line.split()[-1] if len(line.split()) >= 6 else ""
                    if "libcudart.so" in os.path.basename(path):
                        info["cudart"] = path
                        break
        except OSError:
            pass
        if info["cudart"] is None:  # not mapped by name: the nvidia wheels beside torch
            import glob

            for folder in sys.path:
                found = sorted(
                    glob.glob(os.path.join(folder, "nvidia", "*", "lib", "libcudart.so*"))
                )
                if found:
                    info["cudart"] = found[-1]
                    break
        try:
            ctypes.CDLL("libcudart.so")
            info["cudart_plain"] = "loadable"
        except OSError as exc:
            info["cudart_plain"] = f"not loadable ({exc})"
    for dist, module in LIBRARIES:
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = None
        try:
            mod = importlib.import_module(module)
            where = os.path.dirname(os.path.dirname(getattr(mod, "__file__", "") or ""))
            state = "ok"
            version = version or getattr(mod, "__version__", None)
        except Exception as exc:  # ImportError, or a library's own version check
            state = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            where = ""
        info["libraries"][dist] = {"version": version, "where": where, "import": state}
    return info


def child_load_file(device: str, files: list[str]) -> dict[str, Any]:
    import inspect

    import torch
    from safetensors.torch import load_file

    if device != "cpu":
        torch.empty(1, device=device)  # the CUDA context is made before the clock starts
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    # on cpu (dry run) read the bytes, as bigmodel run does, rather than map them lazily
    params = inspect.signature(load_file).parameters
    kwargs = {"backend": "pread"} if device == "cpu" and "backend" in params else {}
    start = time.perf_counter()
    loaded = [load_file(f, device=device, **kwargs) for f in files]
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    nbytes = sum(t.numel() * t.element_size() for d in loaded for t in d.values())
    got: dict[str, Any] = {"seconds": seconds, "bytes": nbytes}
    if device != "cpu":
        got["allocated"] = torch.cuda.memory_allocated()
        got["peak"] = torch.cuda.max_memory_allocated()
    return got


def child_fastsafetensors(device: str, files: list[str]) -> dict[str, Any]:
    import torch

    try:
        import fastsafetensors
        from fastsafetensors import SafeTensorsFileLoader, SingleGroup
    except Exception as exc:
        return {"skip": f"not importable: {type(exc).__name__}: {exc}".splitlines()[0]}
    if device != "cpu":
        torch.empty(1, device=device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        start = time.perf_counter()
        loader = SafeTensorsFileLoader(SingleGroup(), device, nogds=True)
        loader.add_filenames({0: list(files)})
        buffer = loader.copy_files_to_device()
        tensors = [buffer.get_tensor(name) for name in loader.get_keys()]
        if device != "cpu":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    except Exception as exc:
        return {
            "error": f"fastsafetensors {fastsafetensors.__version__}: {type(exc).__name__}: {exc}"
        }
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    got: dict[str, Any] = {
        "seconds": seconds,
        "bytes": nbytes,
        "version": fastsafetensors.__version__,
    }
    if device != "cpu":
        got["allocated"] = torch.cuda.memory_allocated()
        got["peak"] = torch.cuda.max_memory_allocated()
    buffer.close()
    loader.close()
    return got


def run_child(argv: list[str]) -> int:
    kind, rest = argv[0], argv[1:]
    if kind == "probe":
        got = child_probe()
    elif kind == "load_file":
        got = child_load_file(rest[0], rest[1:])
    elif kind == "fastsafetensors":
        got = child_fastsafetensors(rest[0], rest[1:])
    else:
        raise SystemExit(f"gpu_check: unknown child {kind!r}")
    print(json.dumps(got), flush=True)
    return 0
