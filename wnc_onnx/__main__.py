import sys

from wnc_onnx.launch import main

sys.exit(main())
