"""Makes every Python process of a vLLM worker non-dumpable as its interpreter starts.

The vLLM worker's environment puts this folder first on PYTHONPATH (appliance/engines/vllm/launch.py), and
Python imports `sitecustomize` before the program's first line: vLLM's server, and every engine-core or
GPU-worker process it spawns (each a new interpreter, which exec makes dumpable again), forbid core dumps
and ptrace before they load a weight or read a prompt. Forked processes inherit the setting anyway.
"""

import ctypes

ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
