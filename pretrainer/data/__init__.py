"""Text in, batches out.

readers    files (txt, jsonl, csv, tsv, .gz) -> documents / labeled examples
tokenizer  TextTokenizer: train or load WordPiece / byte-BPE, special ids
shards     prepare_corpus: tokenize once, pack, cache as memory-mapped arrays
loader     PackedLMLoader / eval_batches: resumable pre-training batches
collators  mask_tokens: MLM corruption at batch time
labeled    encoded classification datasets, label subsets, ClassificationLoader
"""
