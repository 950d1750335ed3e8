"""`robot-wsrl learner KEY=VALUE ...`: the off-board WSRL learner service (learn/learner.py) on its socket,
with the sim-first gate (gate/) composed in.

Every option is a Hydra override: the algorithm's keys are those of `finetune` (configs/), the service's
are `service.*` (below: socket, keys, pacing, publishing, gate). The learner gets the gate as an object
satisfying learn.gating.PolicyGate, so learn never imports gate.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from robot_wsrl.apps.errors import reports_errors
from robot_wsrl.apps.options import server_socket, write_ready_file
from robot_wsrl.apps.overrides import OverridesCommand
from robot_wsrl.core.artifacts import POLICY_SIDECAR
from robot_wsrl.core.lifetime import stop_on_signals
from robot_wsrl.wire import keys, transport

if TYPE_CHECKING:
    from robot_wsrl.gate.worker import ValidationWorker
    from robot_wsrl.learn.config import Config, Rule

SERVICE = "service"
PEER_ROLES = ("runner", "console")  # who may connect: runners feed it, consoles pause it and ask status


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class LearnerService:
    """The service's options (`service.KEY=VALUE`); the defaults here are the only ones."""

    keys: Path | None = field(default=None, metadata=_help("key dir: NAME.key_secret, NAME.sign, peer keys"))
    name: str = field(default="learner", metadata=_help("this learner's key name"))
    bind: str = field(default="tcp://0.0.0.0:5555", metadata=_help("endpoint (tcp port 0: a free one)"))
    plain: bool = field(default=False, metadata=_help("no CURVE (loopback endpoints only)"))
    ready_file: Path | None = field(
        default=None, metadata=_help("once serving, {endpoint, pid} as JSON here (for a supervisor)")
    )
    pacing: str = field(
        default="lockstep",
        metadata=_help("lockstep (sim: exact UTD, reproducible) or realtime (hardware: never waits)"),
    )
    publish_every: int = field(default=1000, metadata=_help("updates between two published policies"))
    credit: int = field(default=1000, metadata=_help("lockstep: transitions a runner may run ahead"))
    gate: bool = field(
        default=True, metadata=_help("hardware runners get only versions that passed `robot-wsrl validate`")
    )
    validate_args: list[str] = field(
        default_factory=list, metadata=_help("overrides of every validation, e.g. ['episodes=5']")
    )
    max_seconds: float | None = field(default=None, metadata=_help("stop after this long"))


@dataclass
class _ServiceConfig:
    service: LearnerService = field(default_factory=LearnerService)


def _service_help() -> str:
    rows = []
    for f in fields(LearnerService):
        default = f.default_factory() if callable(f.default_factory) else f.default
        rows.append(f"  {SERVICE}.{f.name}={json.dumps(default, default=str)}  {f.metadata['help']}")
    return "\n".join(rows)


COMMAND = OverridesCommand(
    "learner",
    "finetune",
    "Serve the WSRL learner to runners over ZeroMQ. The algorithm's overrides are finetune's; the service's "
    "are:\n" + _service_help() + "\n\ne.g.: robot-wsrl learner service.keys=keys service.pacing=realtime "
    "run.checkpoint=policies/hopper/checkpoint.pt out_dir=runs/learner1 run.warmup_steps=5000 agent.utd=4",
)


# The flags of the learner before every option became an override: named with their new form.
FORMER_FLAGS = {
    **{f"--{f.name.replace('_', '-')}": f"{SERVICE}.{f.name}=VALUE" for f in fields(LearnerService)},
    "--no-gate": f"{SERVICE}.gate=false",
    "--validate-arg": f"{SERVICE}.validate_args=[ARG,...]",
}


def _refuse_former_flags(argv: list[str]) -> None:
    for arg in argv:
        flag = arg.partition("=")[0]
        if flag in FORMER_FLAGS:
            raise ValueError(f"{flag} is now {FORMER_FLAGS[flag]}: every option is a KEY=VALUE override")


def _is_service(override: str) -> bool:
    key = override.lstrip("+~").partition("=")[0]
    return key == SERVICE or key.startswith(f"{SERVICE}.")


def service_rules() -> tuple[Rule, ...]:
    """The value ranges of `service.*`, in learn/config.py's form (which needs the learner extra)."""
    from robot_wsrl.learn.config import above, at_least, one_of

    return (
        one_of(f"{SERVICE}.pacing", "lockstep", "realtime"),
        at_least(f"{SERVICE}.publish_every", 1),
        at_least(f"{SERVICE}.credit", 1),
        above(f"{SERVICE}.max_seconds", 0, null="no limit"),
    )


def compose_service(overrides: list[str]) -> LearnerService:
    """`service.*` overrides (Hydra's syntax) over LearnerService's defaults, typed."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from robot_wsrl.core.paths import CONFIG_DIR
    from robot_wsrl.learn.config import check

    ConfigStore.instance().store(name="learner_service", node=_ServiceConfig)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        raw = compose(config_name="learner_service", overrides=overrides)
    # merged into the schema again: Hydra lets `+service.foo=1` add a key, the schema refuses it
    service: LearnerService = OmegaConf.to_object(
        OmegaConf.merge(_ServiceConfig, OmegaConf.to_container(raw))
    ).service
    check(service, service_rules(), under=SERVICE)
    if service.keys is None:
        raise ValueError(f"{SERVICE}.keys=DIR is required: the folder with {service.name}.sign, CURVE keys")
    return service


@dataclass(frozen=True)
class SimFirstGate:
    """learn.gating.PolicyGate made of gate/: `robot-wsrl validate` of each version in a child process
    (ValidationWorker), and the verdicts the registry reads."""

    validate_args: tuple[str, ...]
    keydir: Path | None  # the public signing keys the validations verify policies with

    def passed(self, directory: Path) -> bool:
        from robot_wsrl.gate.registry import validation_state

        sha256 = json.loads((directory / POLICY_SIDECAR).read_text())["sha256"]
        return validation_state(directory, sha256) == "passed"  # a verdict on these very bytes

    def start(self, deployed: int, directory: Path) -> ValidationWorker:
        from robot_wsrl.gate.worker import ValidationWorker

        return ValidationWorker(
            directory, initial_version=deployed, overrides=list(self.validate_args), keydir=self.keydir
        )


def _new_folder(out_dir: str | None) -> bool:
    """Whether the learner's out_dir does not exist yet, or is empty (None: a new one is made)."""
    return out_dir is None or not Path(out_dir).is_dir() or not any(Path(out_dir).iterdir())


def _empty(folder: Path) -> None:
    """What a failed start wrote into a folder that was new or empty (config.yaml, a log ...)."""
    for path in folder.iterdir() if folder.is_dir() else ():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def serve(cfg: Config, service: LearnerService) -> int:
    """Bind, start the learner (replaying its log), serve until a signal or `max_seconds`."""
    from robot_wsrl.learn.config import prepare_out_dir, refuse_overwrite
    from robot_wsrl.learn.learner import RESTARTS_FROM, Learner, LearnerOptions

    assert service.keys is not None  # compose_service
    refuse_overwrite(cfg, RESTARTS_FROM)  # its own out_dir it restarts in; another run's it leaves alone
    new = _new_folder(cfg.out_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = zmq.Context()
    try:
        signing_key = keys.load_signing_key(service.keys, service.name)
        sock = server_socket(ctx, zmq.ROUTER, service.bind, service, PEER_ROLES)
        learner = Learner(
            cfg,
            sock,
            prepare_out_dir(cfg),
            signing_key,
            LearnerOptions(service.name, service.publish_every, service.credit, service.pacing),
            secure=not service.plain,
            roles=None if service.plain else keys.load_key_roles(service.keys, PEER_ROLES),
            gate=SimFirstGate(tuple(service.validate_args), service.keys) if service.gate else None,
        )
    except BaseException:
        transport.shutdown(ctx)
        if new and cfg.out_dir is not None:  # a start that failed leaves no run behind to refuse a retry
            _empty(Path(cfg.out_dir))
        raise
    stop = threading.Event()
    stop_on_signals([stop])
    if service.max_seconds is not None:
        timer = threading.Timer(service.max_seconds, stop.set)
        timer.daemon = True
        timer.start()
    endpoint = transport.bound_endpoint(sock)
    write_ready_file(service.ready_file, {"endpoint": endpoint})
    print(f"learner {service.name} on {endpoint}, outputs in {learner.out}", flush=True)
    try:
        learner.serve(stop)
    finally:
        learner.close()
        transport.shutdown(ctx)
    print(json.dumps(learner.status(), indent=2))  # strict JSON: for a person, and for `jq`
    return 0


@reports_errors("learner")
def cli(argv: list[str]) -> int:
    _refuse_former_flags(argv)
    overrides = COMMAND.parse(argv)
    service = compose_service([o for o in overrides if _is_service(o)])
    return serve(COMMAND.compose([o for o in overrides if not _is_service(o)]), service)
