"""Commands whose options are all Hydra overrides (`KEY=VALUE`) of a config composed from `configs/`.

finetune, pretrain and learner parse their command line this one way: every option is an override, so
`--help` is the only flag (and `--debug`, which `errors.run` takes out first). The parser imports nothing
of the learner extra, so `--help` works on a base install.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from robot_wsrl.apps.options import CommandParser

if TYPE_CHECKING:
    from robot_wsrl.learn.config import Config


@dataclass(frozen=True)
class OverridesCommand:
    """`robot-wsrl NAME KEY=VALUE ...`; `run` names the run config (configs/run/) it composes."""

    name: str
    run: str
    description: str

    def parse(self, argv: list[str]) -> list[str]:
        parser = CommandParser(
            prog=f"robot-wsrl {self.name}",
            description=self.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="Overrides use Hydra's syntax (configs/ holds the groups and defaults): KEY=VALUE, "
            "GROUP=OPTION (e.g. env=walker2d). The keys are a typed schema's: one it lacks is refused, with "
            "or without +. --debug shows a traceback on errors.",
        )
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides")
        return list(parser.parse_args(argv).overrides)

    def compose(self, overrides: list[str]) -> Config:
        """configs/ composed for this run with `overrides`, typed and validated (the device too)."""
        from robot_wsrl.learn.config import compose_config

        cfg = compose_config(self.run, overrides)
        check_device(cfg.device)
        return cfg


def check_device(device: str) -> None:
    """device=cuda[:N] where torch sees no such device is refused at start-up, in one line, not by torch's
    assertion when the first tensor moves there."""
    if not device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(device.partition(":")[2] or 0) < count:
        return
    cuda = torch.version.cuda  # type: ignore[attr-defined]
    build = f"CPU-only build {torch.__version__}" if cuda is None else f"{torch.__version__}, CUDA {cuda}"
    sees = "no CUDA device" if count == 0 else "only cuda:0" + (f" to cuda:{count - 1}" if count > 1 else "")
    raise ValueError(f"device={device}: torch sees {sees} ({build}); use device=auto or cpu")


def hydra_list(items: list[str]) -> str:
    """`items` as one Hydra list value, each item quoted (an item may hold `=`, `[`, `,`)."""
    quoted = ("'" + item.replace("\\", "\\\\").replace("'", "\\'") + "'" for item in items)
    return f"[{','.join(quoted)}]"
