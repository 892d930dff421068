import os
import sys
from pathlib import Path

# Offline and quiet for every test; Agg only here (a global MPLBACKEND would leak into nbval kernels).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["RLHF_COURSE_PROGRESS"] = "0"
os.environ.setdefault("RLHF_COURSE_DEVICE", "cpu")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

sys.path.insert(0, str(Path(__file__).parent))
