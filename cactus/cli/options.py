"""Option declarations and value parsing shared by several commands."""

from __future__ import annotations

import click


def int_list(_ctx, param, value):
    if value is None:
        return None
    try:
        numbers = [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if not numbers or min(numbers) < 1:
        raise click.BadParameter(f"{value!r}: give positive integers such as 5,20")
    return numbers



def data_options(function):
    for decorator in reversed([
        click.option("--data", default="digits", show_default=True,
                     help="digits | omniglot:PATH | idx:PATH | folder:PATH | npz:PATH | h5:PATH"),
        click.option("--image-size", type=int, default=None, help="Resize images to SIZE x SIZE (Omniglot: 28)."),
        click.option("--split", default="default", show_default=True,
                     type=click.Choice(["default", "classes", "lake", "files", "images"]),
                     help="How images are split into meta-train / validation / test."),
        click.option("--split-seed", type=int, default=0, show_default=True, help="Seed of the class split."),
    ]):
        function = decorator(function)
    return function


def data_ref(data, image_size, split, split_seed):
    from cactus.stages.common import DataRef

    return DataRef(data, image_size, split, split_seed)


json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
force_option = click.option("--force", is_flag=True, help="Recompute even if the artifact is up to date.")
device_options = [
    click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda"),
    click.option("--threads", type=int, default=None, help="CPU threads for torch."),
]


def with_options(options):
    def apply(function):
        for option in reversed(options):
            function = option(function)
        return function
    return apply

