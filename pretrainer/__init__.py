"""pretrainer: self-supervised pre-training and transfer learning."""

__version__ = "0.1.0"
