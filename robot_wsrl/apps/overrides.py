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
        """configs/ composed for this run with `overrides`, typed and validated."""
        from robot_wsrl.learn.config import compose_config

        return compose_config(self.run, overrides)


def hydra_list(items: list[str]) -> str:
    """`items` as one Hydra list value, each item quoted (an item may hold `=`, `[`, `,`)."""
    quoted = ("'" + item.replace("\\", "\\\\").replace("'", "\\'") + "'" for item in items)
    return f"[{','.join(quoted)}]"
