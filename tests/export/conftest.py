"""tests/export: Triton's interpreter for the kernel's CPU parity tests.

TRITON_INTERPRET is read when `@triton.jit` wraps a kernel, i.e. when triton.language and
mplstm.export.kernel are first imported, so it is set here, before any test module of
this directory imports them. PTX compilation does not work under the interpreter;
mplstm.export.ptx compiles in a child process without it (see that module).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
