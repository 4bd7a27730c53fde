import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # so the tests share `fault_runs`
sys.path.insert(0, str(Path(__file__).parent.parent / "training"))  # the toy model, objective and loader
