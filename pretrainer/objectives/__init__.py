"""Training objectives: each owns its masking, targets and loss; models only return features.

`objective = OBJECTIVES.get(name)(cfg.objective, data_info)` (see base.py);
`objective(model, batch) -> {"loss": scalar, <metrics>: detached tensors, "n_tokens": int}`;
`objective.evaluate(model, batches) -> dict of floats`.
Importing this package registers the built-in objectives.
"""

from pretrainer.objectives.autoencoder import Autoencoder
from pretrainer.objectives.bilm import BidirectionalLM
from pretrainer.objectives.classification import ClassificationObjective
from pretrainer.objectives.clip import CLIP
from pretrainer.objectives.clm import CausalLM
from pretrainer.objectives.dcgan import DCGAN
from pretrainer.objectives.distill import Distillation
from pretrainer.objectives.electra import ReplacedTokenDetection
from pretrainer.objectives.mae import MaskedAutoencoder
from pretrainer.objectives.mixture import Mixture
from pretrainer.objectives.mlm import MaskedLM
from pretrainer.objectives.nsp import MaskedLMWithNSP
from pretrainer.objectives.simclr import SimCLR
from pretrainer.objectives.simcse import SimCSE
from pretrainer.objectives.sop import MaskedLMWithSOP
from pretrainer.objectives.span import SpanCorruption
from pretrainer.objectives.word2vec import Word2Vec

__all__ = ["Autoencoder", "BidirectionalLM", "CLIP", "CausalLM", "ClassificationObjective", "DCGAN", "Distillation", "MaskedAutoencoder", "MaskedLM",
           "Mixture", "MaskedLMWithNSP", "MaskedLMWithSOP", "ReplacedTokenDetection", "SimCLR", "SimCSE",
           "SpanCorruption", "Word2Vec"]
