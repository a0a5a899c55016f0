"""textgen: train stacked-LSTM language models on your own text and generate from them.

    import textgen
    bundle = textgen.train("corpus.txt", max_minutes=5)
    print(textgen.load(bundle).generate(prime="ROMEO:", length=200, temperature=0.8, seed=1))

TensorFlow is imported on first use of `train` or `load`, not on `import textgen`.
"""

__version__ = "0.1.0"
__all__ = ["__version__", "load", "train"]


def train(corpus, **options):
    """Train on `corpus` and return the bundle's path; see `textgen.training.train`."""
    from textgen.training import train as _train

    return _train(corpus, **options)


def load(path):
    """Load a bundle for generation; see `textgen.generate.load`."""
    from textgen.generate import load as _load

    return _load(path)
