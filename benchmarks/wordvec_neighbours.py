"""Nearest neighbours (cosine) of a few words in word-vector runs: python benchmarks/wordvec_neighbours.py RUN_DIR..."""
import sys
import torch
from pretrainer.runs import load_run

for run in sys.argv[1:]:
    module, tok = load_run(run)
    table = module.backbone.word_vector_table.weight.detach()
    unit = torch.nn.functional.normalize(table, dim=1)
    vocab = tok.tokenizer.get_vocab()
    inverse = {i: p for p, i in vocab.items()}
    print(run)
    for word in ("good", "terrible", "movie", "actor", "funny", "boring"):
        i = vocab[word]
        sims = unit @ unit[i]
        sims[i] = -1
        top = sims.topk(6).indices.tolist()
        print(f"  {word:9s}", ", ".join(inverse[j] for j in top))
