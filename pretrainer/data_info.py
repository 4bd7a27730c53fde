"""What models and objectives may know of the data: a description, not the data itself.

A data module describes what it prepared as a `DataInfo`; a model is sized from it (the
vocabulary, or the image size and channels) and an objective reads the ids it needs from it
(the [MASK] id, the ids never to predict). Neither needs the tokenizer or the files.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataInfo:
    modality: str  # "text"; images and image-text pairs describe themselves with the image fields
    vocab_size: int = 0
    pad_id: int | None = None
    cls_id: int | None = None
    sep_id: int | None = None
    mask_id: int | None = None  # None: no [MASK] token (byte-level BPE), so no masked LM
    bos_id: int | None = None
    eos_id: int | None = None
    special_ids: tuple[int, ...] = ()  # ids an objective never predicts
    sentinel_ids: tuple[int, ...] = ()  # span corruption's <extra_id_0>, <extra_id_1>, ... in that order
    tokenizer_kind: str = ""  # "wordpiece" or "bytebpe" for text, for messages
    image_size: int = 0
    channels: int = 0
