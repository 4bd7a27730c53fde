"""What `pretrainer evaluate` reports for a CLIP run (objectives/clip.py), each number beside
what chance would give:

- retrieval on the held-out pairs (one per distinct image): recall@1/5/10 image->text and
  text->image among all N held-out pairs; random = k / N;
- zero-shot classification of the held-out images into their top-level metadata category
  (data.categories: the "category" of each line, its part before the first "/"), by the most
  similar category name (underscores read as spaces); chance = 1 / classes (the majority
  class's share is given too);
- zero-shot on each data.zero_shot set (images whose captions are names, e.g. Noto emoji with
  their Unicode names): each image against every distinct name of its set, top-1 and top-5;
  chance = 1 / names and 5 / names.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pretrainer.data.image_files import read_images
from pretrainer.data.image_processor import ImageProcessor
from pretrainer.data.image_text import read_captions
from pretrainer.errors import PretrainerError
from pretrainer.objectives.mlm import to_device


@torch.no_grad()
def embed_texts(model, data, texts: list[str], batch_size: int, seq_len: int) -> torch.Tensor:
    """Texts -> normalised vectors of the shared space (N, D), eval mode."""
    out = []
    for start in range(0, len(texts), batch_size):
        batch = to_device(data.encode(texts[start:start + batch_size], seq_len), model)
        out.append(F.normalize(model.clip_text(batch["input_ids"], batch["attention_mask"]).float(), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def embed_images(model, images: np.ndarray, batch_size: int) -> torch.Tensor:
    """uint8 (N, C, S, S) -> normalised vectors of the shared space (N, D), eval mode."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = ImageProcessor.to_float(images[start:start + batch_size]).to(device)
        out.append(F.normalize(model.clip_image_projection(model.pooled(model(x), None, "mean")).float(), dim=-1))
    return torch.cat(out)


def top_k_accuracy(similarity: torch.Tensor, truth: torch.Tensor, k: int) -> float:
    """similarity (N, K), truth (N,) class index -> share with the truth among the k best."""
    right = similarity.gather(1, truth[:, None])
    return float(((similarity >= right).sum(1) - 1 < k).float().mean())  # a tie counts against


def category_of(line: dict) -> str:
    return str(line.get("category", "")).split("/")[0]


def zero_shot_categories(model, data, batch_size: int, seq_len: int) -> dict:
    """Held-out images of data.train[0] into their top-level metadata category."""
    path = Path(data.cfg.data.categories)
    try:
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise PretrainerError(f"{path}: not a readable JSON-lines file ({e})") from None
    first = data.cfg.data.train[0]
    n_first = int(data.meta.get("first_source_images", 0)) or len(lines)
    if len(lines) != n_first:
        raise PretrainerError(f"{path}: {len(lines):,} lines for the {n_first:,} images of {first}; give one per image")
    names = sorted({category_of(line) for line in lines} - {""})
    index = {name: i for i, name in enumerate(names)}
    picked = [i for i, (source, j) in enumerate(data.eval_sources) if source == first and category_of(lines[j])]
    truth = torch.tensor([index[category_of(lines[data.eval_sources[i][1]])] for i in picked])
    images = embed_images(model, data.eval[picked], batch_size)
    prompts = embed_texts(model, data, [name.replace("_", " ") for name in names], batch_size, seq_len)
    similarity = images.cpu() @ prompts.cpu().T
    counts = Counter(truth.tolist())
    return {"images": len(picked), "classes": len(names), "top1": top_k_accuracy(similarity, truth, 1),
            "chance": 1 / len(names), "majority_class_share": max(counts.values()) / len(picked),
            "class_names": names}


def zero_shot_names(model, data, path: str, batch_size: int, seq_len: int) -> dict:
    """Each image of an .npz (images + captions that are names) against all distinct names."""
    processor = data.processor
    found = read_images(path, data.cfg.data.images_key, channels=processor.channels, size=processor.image_size)
    captions = read_captions(path, data.cfg.data.captions_key, len(found.images))
    names = sorted(set(captions))
    index = {name: i for i, name in enumerate(names)}
    truth = torch.tensor([index[c] for c in captions])
    similarity = embed_images(model, found.images, batch_size).cpu() @ embed_texts(model, data, names, batch_size,
                                                                                   seq_len).cpu().T
    return {"file": str(path), "images": len(captions), "names": len(names),
            "top1": top_k_accuracy(similarity, truth, 1), "top5": top_k_accuracy(similarity, truth, 5),
            "chance_top1": 1 / len(names), "chance_top5": min(1.0, 5 / len(names))}


def clip_report(objective, model, data, batch_size: int, seq_len: int, log=print) -> dict:
    was_training = model.training
    model.eval()
    try:
        metrics = objective.evaluate(model, data.eval_batches("image_text", batch_size, seq_len))
        n = len(data.eval)
        report = {"heldout_pairs": n, "retrieval": {
            key: {"recall": metrics[key], "random": int(key.rsplit("@", 1)[1]) / n}
            for key in metrics if "_r@" in key}, "clip_loss": metrics["clip_loss"],
            "temperature": metrics["temperature"]}
        if data.cfg.data.categories:
            report["zero_shot_categories"] = zero_shot_categories(model, data, batch_size, seq_len)
        report["zero_shot"] = [zero_shot_names(model, data, path, batch_size, seq_len)
                               for path in data.cfg.data.zero_shot]
    finally:
        model.train(was_training)
    for key, value in report["retrieval"].items():
        log(f"{key}: {value['recall']:.4f} (random {value['random']:.4f}, {value['recall'] / value['random']:.1f}x)")
    if "zero_shot_categories" in report:
        z = report["zero_shot_categories"]
        log(f"zero-shot categories: top-1 {z['top1']:.4f} over {z['classes']} classes on {z['images']} held-out "
            f"images (chance {z['chance']:.4f}, {z['top1'] / z['chance']:.1f}x; majority class "
            f"{z['majority_class_share']:.4f})")
    for z in report["zero_shot"]:
        log(f"zero-shot {Path(z['file']).name}: top-1 {z['top1']:.4f} (chance {z['chance_top1']:.4f}), top-5 "
            f"{z['top5']:.4f} (chance {z['chance_top5']:.4f}) among {z['names']} names")
    return report
