"""The ``cactus`` click group: global options, the user-error boundary, and the commands it holds."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cactus import __version__
from cactus.cli.config_file import config_option_callback
from cactus.core import log
from cactus.core.errors import CactusError


class CactusGroup(click.Group):
    """Turns user errors into one line on stderr and a non-zero exit code, never a traceback.

    A command's usage error (an unknown option, a value that does not parse) exits 2 as click's
    does, but in one line; a value outside its declared range, like a CactusError (bad input found
    while running), exits 1.
    """

    def invoke(self, ctx):
        from cactus.core.training import Stopped

        try:
            return super().invoke(ctx)
        except click.UsageError as error:  # a bad option value of a command: one line too, exit 2 as click's
            if isinstance(error, getattr(click.exceptions, "NoArgsIsHelpError", ())):
                raise  # `cactus rule` alone: click prints the group's help
            where = error.ctx.command_path if error.ctx is not None else ctx.command_path
            click.echo(f"cactus: error: {error.format_message()} (see {where} --help)", err=True)
            sys.exit(error.exit_code)
        except CactusError as error:
            click.echo(f"cactus: error: {error}", err=True)
            sys.exit(1)
        except Stopped as stopped:
            click.echo(f"cactus: {stopped}", err=True)
            sys.exit(stopped.exit_code)
        except KeyboardInterrupt:
            click.echo("cactus: interrupted", err=True)
            sys.exit(130)
        finally:
            from cactus.core.lock import release_all

            release_all()  # a stage that failed after taking its output's lock never wrote it



@click.group(cls=CactusGroup, context_settings={"auto_envvar_prefix": "CACTUS", "help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cactus")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), is_eager=True,
              expose_value=False, callback=config_option_callback, envvar="CACTUS_CONFIG",
              help="TOML file with one [COMMAND] table of options each (see `cactus config show`).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Debug lines too (cache hits and misses, bytes written).")
def main(quiet: bool, verbose: bool) -> None:
    """Unsupervised meta-learning: CACTUs and a meta-learned unsupervised update rule.

    Pipeline: embed -> cluster -> tasks -> meta -> evaluate (or `cactus run` for all of them);
    `cactus report RUN_DIR` draws what happened. Options come from the command line, then
    CACTUS_<COMMAND>_<OPTION>, then --config FILE.toml, then the defaults.

    \b
    Shell completion (bash; zsh_source / fish_source for the others):
      eval "$(_CACTUS_COMPLETE=bash_source cactus)"
    """
    log.set_verbosity(0 if quiet else 2 if verbose else 1)


def _register() -> None:
    from cactus.cli.cluster import cluster
    from cactus.cli.config import config
    from cactus.cli.embed import embed
    from cactus.cli.evaluate import evaluate
    from cactus.cli.info import info
    from cactus.cli.meta import meta
    from cactus.cli.report import report
    from cactus.cli.rule import rule
    from cactus.cli.run import run
    from cactus.cli.tasks import tasks

    for command in (embed, cluster, tasks, meta, evaluate, info, run, rule, report, config):
        main.add_command(command)


_register()
