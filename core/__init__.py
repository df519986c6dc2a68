"""The ground floor: errors, registries, file IO, measurement records, the parity validator.

Every other package may import ``core``; ``core`` imports nothing of ours (enforced by the
import contract in ``pyproject.toml``) and no heavy library at import time.
"""
