"""`bigmodel plan --json` on an SD-1.5-sized pipeline vs accelerate on the meta device, same run.

The pipeline folder is made at run time: a UNet in the real shapes of diffusers' default
`UNet2DConditionModel` config (~860M parameters, fp32, random bytes) with its config.json,
an SD-1.5 CLIP text encoder and VAE, and a model_index.json.

Target: `bigmodel plan --json DIR --max-memory 0=2GB,1=2GB --dtype fp16 --strategy auto`
takes at most 0.2x the whole-process time of the anchor, a child python that builds the
UNet with `init_empty_weights` + `from_config` and calls accelerate's
`infer_auto_device_map` with the same budget; and it does not import torch.

With the run's shape (`--height 512 --width 512`: each component traced on fake tensors
with its own library), the plan is compared with accelerate doing the same for the whole
pipeline: the UNet, the VAE and the CLIP text encoder built on the meta device with
diffusers and transformers and each mapped by `infer_auto_device_map`. Target: at most
1.0x that anchor, cold: every run starts with an empty trace cache (`BIGMODEL_TRACES`);
the two are run in turns. The same plan again (the traces kept) is printed too.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BIGMODEL,
    Measured,
    bench_env,
    imports_torch,
    measure,
    median_of,
    row,
    table_header,
    temp_dir,
    write_safetensors,
)

TARGET = 0.2
TARGET_RUNTIME = 1.0
SHAPE = ["--height", "512", "--width", "512"]
REPEATS = 5
BUDGET = "0=2GB,1=2GB"
ANCHOR = """
import json, sys
import torch
from accelerate import infer_auto_device_map, init_empty_weights
from diffusers import UNet2DConditionModel

config = UNet2DConditionModel.load_config(sys.argv[1])
with init_empty_weights():
    unet = UNet2DConditionModel.from_config(config)
device_map = infer_auto_device_map(
    unet, max_memory={0: "2GB", 1: "2GB"}, no_split_module_classes=unet._no_split_modules,
    dtype=torch.float16,
)
print(json.dumps({k: str(v) for k, v in device_map.items()}))
"""
ANCHOR_PIPELINE = """
import sys
import torch
from accelerate import infer_auto_device_map, init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

root = sys.argv[1]
with init_empty_weights():
    models = [
        UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root + "/unet")),
        AutoencoderKL.from_config(AutoencoderKL.load_config(root + "/vae")),
        CLIPTextModel(CLIPTextConfig.from_pretrained(root + "/text_encoder")),
    ]
for model in models:
    infer_auto_device_map(
        model, max_memory={0: "2GB", 1: "2GB"}, dtype=torch.float16,
        no_split_module_classes=model._no_split_modules,
    )
"""
# Run in a child so that the parent never imports torch, diffusers or transformers.
BUILD = """
import json, sys
from pathlib import Path
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

root = Path(sys.argv[1])
with init_empty_weights():
    models = {
        "unet": UNet2DConditionModel(),
        "vae": AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4, layers_per_block=2, sample_size=512,
        ),
        "text_encoder": CLIPTextModel(
            CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12)
        ),
    }
shapes = {}
for name, model in models.items():
    (root / name).mkdir(parents=True)
    if hasattr(model, "save_config"):
        model.save_config(root / name)
    else:
        model.config.to_json_file(root / name / "config.json")
    shapes[name] = [[k, list(v.shape)] for k, v in model.state_dict().items()]
print(json.dumps(shapes))
"""
WEIGHTS = {
    "unet": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": "model",
}
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.42.1",
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def build_pipeline(root: Path) -> int:
    """Write the pipeline folder; returns the bytes of tensor data written."""
    proc = subprocess.run(
        [sys.executable, "-c", BUILD, str(root)], capture_output=True, text=True, check=True
    )
    shapes = json.loads(proc.stdout)
    (root / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    total = 0
    for name, entries in shapes.items():
        path = root / name / f"{WEIGHTS[name]}.safetensors"
        total += write_safetensors(path, [(k, tuple(shape)) for k, shape in entries])
    return total


def traces(folder: Path) -> dict[str, str]:
    """The environment with its own trace cache folder."""
    return bench_env() | {"BIGMODEL_TRACES": str(folder)}


def max_rss(runs: list[Measured]) -> int:
    return max(m.peak_rss for m in runs)


def median_of_env(cmd: list[str], env: dict[str, str]) -> Measured:
    runs = [measure(cmd, env) for _ in range(REPEATS)]
    return Measured(statistics.median(m.seconds for m in runs), max_rss(runs), 0)


def main() -> int:
    with temp_dir() as tmp:
        root = tmp / "sd15"
        size = build_pipeline(root)
        plan_args = ["plan", "--json", str(root), "--max-memory", BUDGET, "--dtype", "fp16"]
        plan_args += ["--strategy", "auto"]
        anchor = median_of([sys.executable, "-c", ANCHOR, str(root / "unet")], REPEATS)
        ours = median_of([BIGMODEL, *plan_args], REPEATS)
        split = median_of([BIGMODEL, *plan_args[:4], "0=1GB,1=1GB", *plan_args[5:]], REPEATS)
        shaped_cmd = [BIGMODEL, *plan_args, *SHAPE]
        theirs, cold = [], []
        for i in range(REPEATS):  # taken in turns, so a slower minute weighs on both alike
            theirs.append(measure([sys.executable, "-c", ANCHOR_PIPELINE, str(root)]))
            cold.append(measure(shaped_cmd, traces(tmp / f"cold{i}")))
        pipeline = Measured(statistics.median(m.seconds for m in theirs), max_rss(theirs), 0)
        shaped = Measured(statistics.median(m.seconds for m in cold), max_rss(cold), 0)
        warm = median_of_env(shaped_cmd, traces(tmp / "cold0"))
        torch_imported = imports_torch(plan_args)
    print(table_header(f"plan (SD-1.5-sized pipeline, {size / 1e9:.2f} GB, median of {REPEATS})"))
    print(row("accelerate meta UNet + infer_auto_device_map", anchor))
    print(row(f"bigmodel plan --strategy auto {BUDGET}", ours, anchor))
    print(row("bigmodel plan --strategy auto 0=1GB,1=1GB (split)", split, anchor))
    print(row("accelerate meta pipeline: 3 models + 3 maps", pipeline))
    print(row(f"bigmodel plan ... {' '.join(SHAPE)} (cold)", shaped, pipeline))
    print(row(f"bigmodel plan ... {' '.join(SHAPE)} (traces kept)", warm, pipeline))
    ratio = ours.seconds / anchor.seconds
    print(f"\ntorch imported by plan --max-memory: {torch_imported}")
    ok = ratio <= TARGET and not torch_imported
    print(f"target plan <= {TARGET}x and no torch import: {'PASS' if ok else 'FAIL'}")
    shaped_ratio = shaped.seconds / pipeline.seconds
    shaped_ok = shaped_ratio <= TARGET_RUNTIME
    print(
        f"target plan with the run's shape <= {TARGET_RUNTIME}x accelerate's pipeline: "
        f"{'PASS' if shaped_ok else 'FAIL'} ({shaped_ratio:.2f}x)"
    )
    return 0 if ok and shaped_ok else 1


if __name__ == "__main__":
    sys.exit(main())
