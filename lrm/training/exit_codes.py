"""Exit codes that schedulers and the sweep launcher read (import-light: no jax here)."""

# EX_TEMPFAIL: stopped by SIGTERM after saving a checkpoint; the same command resumes the run exactly.
PREEMPTED = 75
