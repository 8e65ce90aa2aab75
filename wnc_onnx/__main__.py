import sys

from wnc_onnx.cli import main

sys.exit(main())
