"""textgen: train stacked-LSTM language models on your own text and generate from them.

    import textgen
    bundle = textgen.train("corpus.txt", max_minutes=5)
    print(textgen.load(bundle).generate(prime="ROMEO:", length=200, temperature=0.8, seed=1))

TensorFlow is imported on first use of `train` or `load`, not on `import textgen`.
"""

import os as _os

__version__ = "0.1.0"
__all__ = ["__version__", "load", "train"]

# TensorFlow's CPU allocator: a pool that keeps freed memory (BFC) instead of malloc. A
# training step allocates arrays of tens of MB (the time loops' saved activations, the
# input projections); glibc hands each back to the system when freed (they are above its
# 32 MB mmap ceiling), so every step page-faults them in again. The pool made a 2x256
# training step ~12 % faster and a 3x512 one ~14 % on a 2-core EPYC (bench/train_speed.py).
# TensorFlow reads it once, at import: set here, before any textgen module imports it;
# a value the user set wins.
_os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")


def train(corpus, **options):
    """Train on `corpus` and return the bundle's path; see `textgen.training.train`."""
    from textgen.training import train as _train

    return _train(corpus, **options)


def load(path):
    """Load a bundle for generation; see `textgen.generate.load`."""
    from textgen.generate import load as _load

    return _load(path)
