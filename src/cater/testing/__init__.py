"""Code for tests and the demo only, never imported by a pipeline stage that real runs depend on.

The rings: `cater.teachers` (and the rest of the library) never imports `cater.testing`; `cater.testing` builds on
the library (`tiny/`: tiny random checkpoints in the real formats, their tokenizers, tiny-teacher fine-tuning).
"""
