"""Image classification: one label per image (an .npz split or a folder of class sub-folders), a
SequenceClassifier on the image backbone's pooled features, accuracy chosen on dev.

finetune.data.train / dev / test name the splits (data/labeled_images.py): `mnist.npz` reads
x_train / y_train, `mnist.npz#test` x_test / y_test, `file.npz#IMAGES,LABELS` any two arrays, a
folder its class sub-folders. The run's image processor (image_processor.json, the tokenizer's
counterpart) converts every split to the backbone's channels and size.
"""

from __future__ import annotations

from pretrainer.data.image_processor import ImageProcessor
from pretrainer.data.labeled import infer_label_names, label_indices
from pretrainer.data.labeled_images import ImageClassificationLoader, LabeledImages, encode_images, read_labeled_images
from pretrainer.errors import PretrainerError
from pretrainer.registry import TASKS
from pretrainer.transfer.tasks.base import Encoder, Splits
from pretrainer.transfer.tasks.classification import Classification

# Text-only keys of [finetune] and their defaults: set to anything else they are refused here.
TEXT_ONLY = {"truncation": "head", "chunk_pooling": "none", "case_features": False, "crf": False,
             "distill_unlabeled": ""}


@TASKS.register("image_classification")
class ImageClassification(Classification):
    name = "image_classification"
    unit = "labeled images"

    def check(self, ft) -> None:
        for key, default in TEXT_ONLY.items():
            if getattr(ft, key) != default:
                raise PretrainerError(f"config key 'finetune.{key}' applies to text; finetune.task = "
                                      f"\"image_classification\" reads images (leave it {default!r})")

    def read(self, path: str, data_cfg, stats=None) -> LabeledImages:
        return read_labeled_images(path)

    def infer_labels(self, examples: LabeledImages) -> list[str]:
        return infer_label_names(examples)

    def encoder(self, tokenizer, max_len: int, ft=None) -> Encoder:
        if not isinstance(tokenizer, ImageProcessor):
            raise PretrainerError("config key 'finetune.task' = \"image_classification\" needs an image backbone "
                                  "(a run of an image model, with its image_processor.json); this one reads text")

        def encode(examples: LabeledImages, names: list[str]):
            return encode_images(examples, tokenizer, label_indices(examples, names), names)

        return encode

    def batches(self, splits: Splits, batch_size: int, seed: int) -> ImageClassificationLoader:
        return ImageClassificationLoader(splits.train, batch_size, seed=seed, indices=splits.subset)

    def encoding_cost(self, dataset) -> dict | None:
        return None
