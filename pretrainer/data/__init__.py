"""Data in, batches out. Data modules are registered by name (`[data] name = ...`); importing
this package registers the built-in ones.

text       TextData: the text data module (registered as "text")

readers    files (txt, jsonl, csv, tsv, .gz) -> documents / labeled examples
tokenizer  TextTokenizer: train or load WordPiece / byte-BPE, special ids
shards     prepare_corpus: tokenize once, pack, cache as memory-mapped arrays
loader     PackedLMLoader / eval_batches: resumable pre-training batches
collators  mask_tokens: MLM corruption at batch time
labeled    encoded classification datasets, label subsets, ClassificationLoader
"""

from pretrainer.data import text  # noqa: F401,E402  (registers the "text" data module)
