"""Typed run configuration: Hydra composes `configs/`, the dataclasses below validate it.

Every run writes its resolved config and that config's hash into its output folder, so a checkpoint or a
result can always be traced to the exact settings that made it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from robot_wsrl.core.artifacts import CHECKPOINT, CONFIG_HASH, RUN_CONFIG
from robot_wsrl.core.paths import CONFIG_DIR
from robot_wsrl.sim.env_config import EnvConfig

# Keys that change where and how a run reports, not what it computes: left out of the hash.
_PRESENTATION_KEYS = ("out_dir", "progress", "tensorboard", "threads", "device")
# The agent each run starts from unless `agent=` is given: pre-training is CQL, fine-tuning is WSRL.
DEFAULT_AGENT = {"pretrain": "cql", "finetune": "wsrl"}


@dataclass
class CQLConfig:
    alpha: float = 5.0
    num_samples: int = 10
    importance_sampling: bool = True
    temperature: float = 1.0
    lagrange: bool = False
    target_action_gap: float = 1.0
    max_target_backup: bool = True


@dataclass
class EncoderConfig:
    """The image encoder of a camera task (unused by state-only tasks): see configs/agent/sac.yaml."""

    channels: list[int] = field(default_factory=lambda: [32, 32, 32, 32])
    strides: list[int] = field(default_factory=lambda: [2, 1, 1, 1])
    feature_dim: int = 50
    augment_pad: int = 4  # DrQ random shift by up to this many pixels during training (0: none)
    train_online: bool = False  # False: frozen online, features cached in the replay


@dataclass
class AgentConfig:
    name: str = "wsrl"
    actor_hidden: list[int] = field(default_factory=lambda: [256, 256])
    critic_hidden: list[int] = field(default_factory=lambda: [256, 256])
    num_critics: int = 10
    num_target_critics: int = 2
    critic_layer_norm: bool = True
    actor_layer_norm: bool = True
    kernel_scale_final: float | None = 1e-2  # init gain of each trunk's last hidden layer (None: sqrt 2)
    actor_objective: str = "min"
    utd: int = 4
    batch_size: int = 256
    discount: float = 0.99
    tau: float = 0.005
    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    temperature_lr: float = 1e-4
    init_temperature: float = 1.0
    target_entropy: float | None = None
    backup_entropy: bool = False
    regularizer: str = "none"
    cql: CQLConfig = field(default_factory=CQLConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    compile: str = "auto"

    def validate(self) -> None:
        """The table's agent.* rules: an Agent may be built from an AgentConfig that was never composed."""
        check(self, RULES, under="agent")


@dataclass
class RunConfig:
    name: str = "finetune"
    checkpoint: str | None = None
    dataset: str | None = None
    steps: int = 100_000
    warmup_steps: int = 5_000
    offline_ratio: float = 0.0
    buffer_capacity: int = 1_000_000
    eval_every: int = 5_000
    eval_episodes: int = 5
    checkpoint_every: int = 10_000
    log_every: int = 1_000
    snapshots: bool = False  # save the actor at every evaluation (for `collect`)
    keep_checkpoints: bool = False  # pretrain: keep every checkpoint in checkpoints/ (for `ship --select`)
    resume: str | None = None
    gate_every: int = (
        0  # guarded variant: validate the actor every N online steps; the robot runs the last pass
    )
    gate_args: list[str] = field(default_factory=list)  # `robot-wsrl validate` overrides for that gate


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    run: RunConfig = field(default_factory=RunConfig)
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch intra-op CPU threads; 0 keeps torch's default (one per core)
    out_dir: str | None = None
    progress: bool = True
    tensorboard: bool = True


# ----- value ranges: one table, checked once the config is typed -----


@dataclass(frozen=True)
class Rule:
    """`key` (dotted, from the config's root) must satisfy `ok(value, the object holding the key)`;
    `must` is the requirement as the one-line error states it: `agent.utd=0: must be >= 1`."""

    key: str
    must: str
    ok: Callable[[Any, Any], bool]


def at_least(key: str, low: float) -> Rule:
    return Rule(key, f"must be >= {low}", lambda value, _: value >= low)


def above(key: str, low: float, *, null: str = "") -> Rule:
    """`value > low`; with `null` (what null means), null too."""
    must = f"must be > {low}" + (f" (or null: {null})" if null else "")
    return Rule(
        key, must, lambda value, _: (bool(null) and value is None) or (value is not None and value > low)
    )


def one_of(key: str, *options: str) -> Rule:
    return Rule(key, f"must be one of {', '.join(options)}", lambda value, _: value in options)


def _unit(key: str, *, open_low: bool) -> Rule:
    if open_low:
        return Rule(key, "must be in (0, 1]", lambda value, _: 0.0 < value <= 1.0)
    return Rule(key, "must be in [0, 1]", lambda value, _: 0.0 <= value <= 1.0)


def _widths(value: list[int]) -> bool:
    return len(value) >= 1 and all(w >= 1 for w in value)


RULES: tuple[Rule, ...] = (
    one_of("agent.actor_objective", "min", "mean"),
    one_of("agent.regularizer", "none", "cql", "calql"),
    one_of("agent.compile", "auto", "on", "off"),
    Rule("agent.actor_hidden", "must be widths >= 1", lambda value, _: all(w >= 1 for w in value)),
    Rule("agent.critic_hidden", "must be widths >= 1", lambda value, _: all(w >= 1 for w in value)),
    at_least("agent.num_critics", 1),
    Rule(
        "agent.num_target_critics", "must be in [1, agent.num_critics]", lambda v, a: 1 <= v <= a.num_critics
    ),
    above("agent.kernel_scale_final", 0, null="sqrt 2"),
    at_least("agent.utd", 1),
    at_least("agent.batch_size", 1),
    _unit("agent.discount", open_low=True),
    _unit("agent.tau", open_low=True),
    at_least("agent.actor_lr", 0),
    at_least("agent.critic_lr", 0),
    at_least("agent.temperature_lr", 0),
    above("agent.init_temperature", 0),
    Rule("agent.encoder.channels", "must be widths >= 1 (one at least)", lambda v, _: _widths(v)),
    Rule(
        "agent.encoder.strides",
        "must be one stride >= 1 per agent.encoder.channels entry",
        lambda v, enc: len(v) == len(enc.channels) and all(s >= 1 for s in v),
    ),
    at_least("agent.encoder.feature_dim", 1),
    at_least("agent.encoder.augment_pad", 0),
    at_least("agent.cql.alpha", 0),
    at_least("agent.cql.num_samples", 1),
    above("agent.cql.temperature", 0),
    at_least("run.steps", 1),
    at_least("run.warmup_steps", 0),
    _unit("run.offline_ratio", open_low=False),
    Rule(
        "run.dataset",
        "pretrain needs a dataset (a .hdf5 or .npz PATH, or minari:ID)",
        lambda value, run: bool(value) or run.name != "pretrain" or bool(run.resume),  # resume: the saved one
    ),
    Rule(
        "run.dataset",
        "run.offline_ratio > 0 needs the offline data to retain (a PATH or minari:ID)",
        lambda value, run: bool(value) or run.offline_ratio == 0 or run.name == "pretrain",
    ),
    Rule(
        "run.buffer_capacity",
        "must be >= 1 (the online buffer)",
        lambda value, run: value >= 1 or run.name == "pretrain",  # pre-training has none
    ),
    at_least("run.eval_every", 0),  # 0: never
    at_least("run.eval_episodes", 1),
    at_least("run.checkpoint_every", 0),  # 0: only at the end
    at_least("run.log_every", 0),  # 0: never
    at_least("run.gate_every", 0),  # 0: not guarded
    at_least("seed", 0),
    at_least("threads", 0),
    Rule(
        "device",
        "must be auto, cpu, cuda or cuda:N",
        lambda value, _: value in ("auto", "cpu", "cuda") or (value[:5] == "cuda:" and value[5:].isdigit()),
    ),
)


def check(obj: Any, rules: Iterable[Rule] = RULES, under: str = "") -> None:
    """Every rule on `obj`: the whole config, or with `under` one section of it (`cfg.agent` under "agent").
    One ValueError, one line, naming each broken key, its value and what it must be."""
    prefix = f"{under}." if under else ""
    problems = []
    for rule in rules:
        if not rule.key.startswith(prefix):
            continue
        *path, leaf = rule.key[len(prefix) :].split(".")
        owner = functools.reduce(getattr, path, obj)
        value = getattr(owner, leaf)
        if not rule.ok(value, owner):
            problems.append(f"{rule.key}={_shown(value)}: {rule.must}")
    if problems:
        raise ValueError("; ".join(problems))


def _shown(value: Any) -> str:
    """A value as it is typed in an override (null, true, 3)."""
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def compose_config(run: str, overrides: list[str] | None = None) -> Config:
    """Compose configs/ for `run` (pretrain | finetune) with command-line overrides, validated."""
    from hydra import compose, initialize_config_dir

    if not CONFIG_DIR.is_dir():
        raise FileNotFoundError(f"config folder {CONFIG_DIR} not found (set ROBOT_WSRL_CONFIGS)")
    overrides = [_recipe_override(o, run) for o in overrides or []]
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    if "run" not in given:
        overrides.insert(0, f"run={run}")
    if "agent" not in given:
        overrides.insert(0, f"agent={DEFAULT_AGENT[run]}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        raw = compose(config_name="config", overrides=overrides)
    return to_typed(raw)


def _recipe_override(override: str, run: str) -> str:
    """`recipe=NAME` selects configs/recipe/RUN/NAME.yaml: one name (cpu, paper) for the settings of both
    pre-training and fine-tuning, each kept beside its run."""
    key, sep, name = override.partition("=")
    return f"+recipe/{run}={name}" if sep and key == "recipe" else override


def to_typed(raw: DictConfig | dict[str, Any]) -> Config:
    """Merge into the schema (unknown keys and wrong types raise) and check value ranges."""
    merged = OmegaConf.merge(OmegaConf.structured(Config), raw)
    cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    check(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def config_hash(cfg: Config) -> str:
    """Short sha256 of the settings that determine a run's result (presentation keys left out)."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in _PRESENTATION_KEYS}
    d["run"] = {k: v for k, v in d["run"].items() if k not in ("resume", "keep_checkpoints")}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _unused(path: Path) -> Path:
    """`path`, else PATH-2, PATH-3 ...: the first that does not exist."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def refuse_overwrite(cfg: Config, restarts_from: tuple[str, ...] = ()) -> None:
    """A new run must not overwrite another's results: an out_dir that holds a run is refused.

    For `pretrain` and `finetune` (no `restarts_from`) a run is a training checkpoint, and run.resume
    continues it. A service that restarts in its own out_dir from the files `restarts_from` names (the
    learner: learner.pt, transitions.log) takes a folder holding any of them, and refuses one that holds
    another kind of run: a checkpoint or a config.yaml, but none of them. The commands check it; a caller
    that regenerates a folder on purpose (collect, a benchmark) does not."""
    if cfg.out_dir is None or (cfg.run.resume and not restarts_from):
        return
    out = Path(cfg.out_dir)
    if any((out / name).exists() for name in restarts_from):
        return  # its own run: it carries on from it
    marks = (CHECKPOINT, RUN_CONFIG) if restarts_from else (CHECKPOINT,)
    held = next((name for name in marks if (out / name).exists()), None)
    if held is None:
        return
    if restarts_from:
        raise ValueError(
            f"out_dir={out} already holds another kind of run ({held}, no {restarts_from[0]}): "
            f"give a fresh out_dir, e.g. out_dir={_unused(out.with_name(f'{out.name}-learner'))}"
        )
    raise ValueError(
        f"out_dir={out} already holds a run ({held}): continue it with run.resume={out}, "
        "or give a new out_dir"
    )


def prepare_out_dir(cfg: Config) -> Path:
    """Create the run folder and write config.yaml and config_hash.txt into it."""
    if cfg.out_dir is None:
        cfg.out_dir = f"runs/{cfg.run.name}/{cfg.env.name}-{time.strftime('%Y%m%d-%H%M%S')}-s{cfg.seed}"
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    (out / CONFIG_HASH).write_text(config_hash(cfg) + "\n")
    return out


def resumed(cfg: Config) -> Config:
    """With run.resume=DIR, the config that run was started with (so it continues exactly), else `cfg`."""
    if not cfg.run.resume:
        return cfg
    run_dir = Path(cfg.run.resume)
    saved = run_dir / RUN_CONFIG
    if not saved.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml, not a run folder to resume")
    restored = to_typed(OmegaConf.load(saved))  # type: ignore[arg-type]
    restored.run.resume, restored.out_dir = str(run_dir), str(run_dir)
    return restored
