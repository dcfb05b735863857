"""Test-wide settings.

OpenMP threads that spin while waiting make torch ~6x slower per step when another
process shares the 2 cores (pytest plus a worker subprocess, say). ``core`` sets passive
waiting on import, but a test module may import torch first, so set it here too.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
