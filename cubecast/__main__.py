"""``python -m cubecast`` and the ``cubecast`` console script: the CLI, run after the package
has loaded cubecast's own ``pipeline`` (so a ``pipeline.py`` on ``sys.path`` cannot break it)."""

from pipeline.cli import main

if __name__ == "__main__":
    main()
