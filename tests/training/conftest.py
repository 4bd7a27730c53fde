import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # so tests and _toy_train.py share `training_toys`
