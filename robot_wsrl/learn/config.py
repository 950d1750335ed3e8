"""Typed run configuration: Hydra composes `configs/`, the dataclasses below validate it.

Every run writes its resolved config and that config's hash into its output folder, so a checkpoint or a
result can always be traced to the exact settings that made it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from robot_wsrl.core.artifacts import CONFIG_HASH, RUN_CONFIG
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
    compile: str = "auto"

    def validate(self) -> None:
        checks = {
            "actor_objective must be 'min' or 'mean'": self.actor_objective in ("min", "mean"),
            "regularizer must be none, cql or calql": self.regularizer in ("none", "cql", "calql"),
            "compile must be auto, on or off": self.compile in ("auto", "on", "off"),
            "num_target_critics must be in [1, num_critics]": 1
            <= self.num_target_critics
            <= self.num_critics,
            "utd and batch_size must be positive": self.utd > 0 and self.batch_size > 0,
            "discount must be in (0, 1]": 0.0 < self.discount <= 1.0,
            "tau must be in (0, 1]": 0.0 < self.tau <= 1.0,
            "kernel_scale_final must be positive (or null)": self.kernel_scale_final is None
            or self.kernel_scale_final > 0,
        }
        bad = [msg for msg, ok in checks.items() if not ok]
        if bad:
            raise ValueError("agent config: " + "; ".join(bad))


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
    resume: str | None = None
    gate_every: int = (
        0  # guarded variant: validate the actor every N online steps; the robot runs the last pass
    )
    gate_args: list[str] = field(default_factory=list)  # `robot-wsrl validate` overrides for that gate

    def validate(self) -> None:
        if not 0.0 <= self.offline_ratio <= 1.0:
            raise ValueError(f"run.offline_ratio must be in [0, 1], got {self.offline_ratio}")
        if self.offline_ratio > 0 and not self.dataset:
            if self.name == "pretrain":
                raise ValueError("pretrain needs a dataset: run.dataset=PATH (.hdf5, .npz or minari:ID)")
            raise ValueError("run.offline_ratio > 0 needs run.dataset (the offline data to retain)")
        if self.steps < 0 or self.warmup_steps < 0 or self.gate_every < 0:
            raise ValueError("run.steps, run.warmup_steps and run.gate_every must be non-negative")


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
    cfg.agent.validate()
    cfg.run.validate()
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def config_hash(cfg: Config) -> str:
    """Short sha256 of the settings that determine a run's result (presentation keys left out)."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in _PRESENTATION_KEYS}
    d["run"] = {k: v for k, v in d["run"].items() if k != "resume"}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


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
