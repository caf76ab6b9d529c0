"""python -m ldm.export RUN_OR_CHECKPOINT --to single-file|text-encoder|lora|diffusers [--out DIR] [--dtype fp16]"""

import sys

from ldm.export.convert import main

sys.exit(main())
