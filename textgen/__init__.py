"""textgen: train stacked-LSTM language models on your own text and generate from them."""

__version__ = "0.1.0"
