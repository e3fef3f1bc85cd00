"""`bigmodel inspect --json` on a 3+ GB file vs huggingface_hub's header parser, same run.

Target: at most 1.5x the whole-process time of
`python -c "from huggingface_hub import parse_local_safetensors_file_metadata as p; p(FILE)"`,
and no torch import (checked with `python -X importtime`), also for `bigmodel --help`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BIGMODEL,
    imports_torch,
    median_of,
    row,
    table_header,
    temp_dir,
    unet_like_entries,
    write_safetensors,
)

TARGET = 1.5
REPEATS = 7


def main() -> int:
    gb = float(os.environ.get("BIGMODEL_BENCH_GB", "3.4"))
    with temp_dir() as tmp:
        path = tmp / "unet.safetensors"
        size = write_safetensors(path, unet_like_entries(int(gb * 1e9)))
        hf = median_of(
            [
                sys.executable,
                "-c",
                "import sys; from huggingface_hub import parse_local_safetensors_file_metadata"
                " as p; p(sys.argv[1])",
                str(path),
            ],
            REPEATS,
        )
        ours = median_of([BIGMODEL, "inspect", "--json", str(path)], REPEATS)
        torch_inspect = imports_torch(["inspect", "--json", str(path)])
        torch_help = imports_torch(["--help"])
    print(table_header(f"inspect ({size / 1e9:.2f} GB file, median of {REPEATS})"))
    print(row("python -c parse_local_safetensors_file_metadata", hf))
    print(row("bigmodel inspect --json", ours, hf))
    print(f"\ntorch imported by inspect: {torch_inspect}; by --help: {torch_help}")
    ok = ours.seconds <= TARGET * hf.seconds and not torch_inspect and not torch_help
    print(f"target inspect <= {TARGET}x and no torch import: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
