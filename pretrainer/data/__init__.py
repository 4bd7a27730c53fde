"""Data in, batches out. Data modules are registered by name (`[data] name = ...`); importing
this package registers the built-in ones.

text       TextData: the text data module (registered as "text")
images     ImageData: images from .npz arrays or image folders (registered as "images")
image_text ImageTextData: image–caption pairs from .npz files, for CLIP (registered as "image_text")

readers    files (txt, jsonl, csv, tsv, .gz) -> documents / labeled examples
tokenizer  TextTokenizer: train or load WordPiece / byte-BPE, special ids
shards     prepare_corpus: tokenize once, pack, cache as memory-mapped arrays
loader     PackedLMLoader / eval_batches: resumable pre-training batches
collators  mask_tokens: MLM corruption at batch time
labeled    encoded classification datasets, label subsets, ClassificationLoader
image_files, image_processor, augment   reading images, the run's image processor, augmentations
"""

from pretrainer.data import text  # noqa: F401,E402  (registers the "text" data module)
from pretrainer.data import images  # noqa: F401,E402  (registers the "images" data module)
from pretrainer.data import image_text  # noqa: F401,E402  (registers the "image_text" data module)
