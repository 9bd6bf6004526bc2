"""debiaskit: find and remove shortcut biases in trained neural networks."""
__version__ = "0.1.0"
