import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the tests must never reach a real endpoint or a hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
for k in ("DATAALCHEMY_BASE_URL", "OPENAI_BASE_URL"):
    os.environ.pop(k, None)
