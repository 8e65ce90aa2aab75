"""The command line: ``main`` dispatches to one module per subcommand (``compress``, ``finetune``,
``bench``, ``demo``); ``options`` holds the option groups they share."""

from wnc_onnx.cli.main import main

__all__ = ["main"]
