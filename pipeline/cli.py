"""The ``cubecast`` command line: the Typer app and its entry point.

The commands live beside it by what they act on: ``cli_cube`` (one cube: encode, decode,
info, demo-codec), ``cli_dataset`` (a dataset's steps: synth, pack, verify, publish, ls,
get) and ``cli_flow`` (the Prefect flow: run, demo, server, deploy, trigger); ``cli_io``
holds the consoles and file handling they share.
"""

from __future__ import annotations

import errno
import os
import sys

import typer
from rich.markup import escape

from pipeline.cli_cube import decode, demo_codec, encode, info
from pipeline.cli_dataset import get, list_samples, pack, publish_cmd, synth, verify
from pipeline.cli_flow import demo, deploy, run, server, trigger
from pipeline.cli_io import err_console
from pipeline.errors import CubecastError

app = typer.Typer(
    help="Compress Earth-observation cubes as video streams, pack them into TACO shards, "
    "verify and publish.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Registered in the order --help lists them.
app.command()(encode)
app.command()(decode)
app.command()(info)
app.command()(pack)
app.command()(verify)
app.command("publish")(publish_cmd)
app.command()(synth)
app.command()(run)
app.command()(server)
app.command()(deploy)
app.command()(trigger)
app.command("ls")(list_samples)
app.command()(get)
app.command()(demo)
app.command("demo-codec")(demo_codec)

# Import names of the `publish` extra: a command that needs one of them names the extra.
PUBLISH_MODULES = frozenset(
    "prefect prefect_dask dask distributed rasterio rioxarray pyproj matplotlib skimage "
    "huggingface_hub tacotoolbox zarr ffmpeg imageio_ffmpeg yaml fastapi sqlalchemy".split()
)


# OSErrors that say what is wrong with the machine in their own words (no traceback)
MACHINE_ERRNOS = frozenset(
    (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)
)


def main() -> None:
    from pipeline.sources.body import network_errors

    try:
        app()
    except CubecastError as exc:
        _fail(str(exc))
    except network_errors() as exc:  # anything the pipeline did not wrap: still one line
        _fail(f"network error: {exc.__class__.__name__}: {exc}")
    except OSError as exc:  # the machine, not the data: a full disk, a read-only folder
        if exc.errno not in MACHINE_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{exc.strerror or exc}")
    except ModuleNotFoundError as exc:  # the reader install running a pipeline command
        if (exc.name or "").split(".")[0] not in PUBLISH_MODULES:
            raise
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), "this command")
        _fail(
            f"cubecast {command} needs {exc.name}, part of the publish extra: "
            + escape("pip install 'cubecast[publish]'")
        )


def _fail(message: str) -> None:
    token = os.environ.get("HF_TOKEN")
    if token:
        message = message.replace(token, "***")
    line = " ".join(message.split())  # one line, whatever the cause text held
    err_console.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
