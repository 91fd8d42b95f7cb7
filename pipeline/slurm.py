"""The plan of one pipeline step on a SLURM allocation: what ``scripts/slurm/r1_step.sbatch`` runs.

``python -m pipeline.slurm PIPELINE STEP [--run RUN] [--set KEY=VALUE ...]`` reads the pipeline
file the way ``r1 run`` does (overrides applied, every step validated), checks that STEP can run
under ``accelerate launch`` (a training kind) and that its inputs exist, and prints shell
assignments (``shlex``-quoted, for ``eval``):

- ``KIND``, ``STEP``, ``RUN``: the step's kind, name and run folder;
- ``MODE``: ``server`` (GRPO with ``vllm_mode: server``: a vLLM server node samples the rollouts),
  ``colocate`` or ``none``;
- ``MODEL``: the resolved initial policy (a finished step of RUN becomes its ``model/`` folder);
- ``SERVE``: in server mode, the vLLM server command: TRL 1.16's own
  (``trl.scripts.vllm_serve.build_command``: ``vllm serve`` with the NCCL weight-transfer engine,
  ``--logprobs-mode processed_logprobs``, ...), which ``trl vllm-serve`` runs after a deprecation
  warning; run with ``VLLM_SERVER_DEV_MODE=1`` (the weight-transfer endpoints need it). Its
  ``--max-model-len`` is the step's ``max_prompt_length + max_completion_length`` (what TRL gives a
  colocated engine), its ``--dtype`` the step's ``vllm_dtype`` resolved on this node.
- ``SETS``: the ``--set`` words the launch passes on (each as ``STEP.KEY=VALUE``).

Exit status 2 with a message on any error (unknown step, a kind that runs in one process, an
override that does not validate, an input step not finished): the batch script stops there
instead of guessing.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

import stages
from pipeline import precision, store
from pipeline.config import ConfigError
from pipeline.runner import Resolver, load_pipeline


def step_overrides(step: str, overrides: list[str]) -> list[str]:
    """``KEY=VALUE`` -> ``STEP.KEY=VALUE`` (already prefixed ones are kept).

    >>> step_overrides("sft", ["max_steps=10", "sft.seed=1"])
    ['sft.max_steps=10', 'sft.seed=1']
    """
    return [item if item.split("=", 1)[0].startswith(f"{step}.") else f"{step}.{item}" for item in overrides]


def plan(
    pipeline_file: str,
    step: str,
    run: str | None = None,
    overrides: list[str] | None = None,
    port: int = 8000,
    tensor_parallel: int = 1,
    gpu_memory_utilization: float = 0.9,
) -> dict[str, str]:
    """The assignments (see the module docstring).

    Raises:
        ConfigError: see the module docstring.
    """
    sets = step_overrides(step, overrides or [])
    pipeline = load_pipeline(pipeline_file, sets)
    chosen = pipeline.step(step)  # ConfigError naming the steps
    kind = chosen.config.kind
    if not getattr(stages.get(kind), "DISTRIBUTED", False):
        raise ConfigError(
            f"step {step} is a `{kind}` step, which runs in one process; run it without the launcher: "
            f"r1 run {pipeline_file} --only {step}"
        )
    run = run or pipeline.config.run
    resolver = Resolver(store.runs_root() / run, {s.name for s in pipeline.steps})
    try:
        model = {
            key: resolver.model(ref)
            for key, ref in chosen.config.inputs().items()
            if chosen.config.input_type(key) == "model"
        }
        for key, ref in chosen.config.inputs().items():
            if chosen.config.input_type(key) == "dataset":
                resolver.dataset(ref)
    except RuntimeError as err:  # an input step of RUN has not finished
        raise ConfigError(f"step {step}: {err}") from None
    config: Any = chosen.config  # the vLLM fields below are read by duck typing, as `use_vllm` is
    mode = "none"
    if getattr(config, "use_vllm", False):  # a trainer that rolls out with vLLM (the grpo stage)
        mode = config.vllm_mode
    out = {
        "KIND": kind,
        "STEP": step,
        "RUN": run,
        "MODE": mode,
        "MODEL": next(iter(model.values()), ""),
        "SETS": " ".join(shlex.quote(w) for s in sets for w in ("--set", s)),
    }
    if mode == "server":
        out["SERVE"] = shlex.join(
            serve_command(
                out["MODEL"],
                port,
                tensor_parallel,
                gpu_memory_utilization,
                config.max_prompt_length + config.max_completion_length,
                precision.resolve(config.vllm_dtype).dtype,
            )
        )
    return out


def serve_command(
    model: str, port: int, tensor_parallel: int, gpu_memory_utilization: float, max_model_len: int, dtype: str
) -> list[str]:
    """TRL 1.16's vLLM server command line (the one ``trl vllm-serve`` prints as its replacement)."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    return build_command(
        ScriptArguments(
            model=model,
            host="0.0.0.0",
            port=port,
            tensor_parallel_size=tensor_parallel,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            dtype=dtype,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.slurm", description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline")
    parser.add_argument("step")
    parser.add_argument("--run", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    args = parser.parse_args(argv)
    try:
        values = plan(
            args.pipeline, args.step, args.run, args.overrides, args.port, args.tp, args.gpu_memory_utilization
        )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for key, value in values.items():
        print(f"{key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
