"""Throughput benchmark: pretrainer against Hugging Face on the same shapes, data and optimizer.

    python benchmarks/run.py                      # every workload, 5 interleaved repeats
    python benchmarks/run.py --quick              # BERT-mini MLM and the two GPT pairs (< 10 min on 2 cores)
    python benchmarks/run.py --workloads mlm-mini,clm-8k --repeats 3 --seconds 20
    python benchmarks/run.py --smoke              # tiny shapes: checks that every path runs, numbers mean nothing

Every measurement runs in its own subprocess (`--child SPEC`), so its peak RSS is its own and
one implementation never warms the allocator or caches of the next. Repeats are interleaved
(peer, pretrainer, peer, pretrainer, ...) and the medians are reported, because the machine
is noisy. stdout: one JSON line per (workload, impl) plus `env` and `peak` lines, then a
summary table; stderr: progress. See benchmarks/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gzip
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMDB_UNSUP = Path("/work/shared/data/classification/imdb/unsup.jsonl.gz")
RESULT_PREFIX = "BENCH_RESULT "
N_POOL = 4  # distinct synthetic batches, cycled; the same ids for every impl (seeded)
MASK_RATE = 0.15
# Special ids of pretrainer's WordPiece layout; synthetic ids are drawn from [FIRST_ID, vocab).
PAD_ID, CLS_ID, SEP_ID, MASK_ID, FIRST_ID = 0, 2, 3, 4, 5
FLOPS_CONVENTION = ("useful model FLOPs, PaLM-style: train = 3 x forward; forward per token = "
                    "2 x block weight-matrix params + 4*L*T*C attention (no causal halving) + "
                    "2*C*V vocab projection only where a loss is taken (MLM: masked positions, "
                    "CLM: every position) + MLM transform / pooler where used; embeddings, norms, "
                    "biases, softmax not counted; the same count for every impl")


@dataclass(frozen=True)
class Shape:
    layers: int
    d_model: int
    heads: int
    d_ff: int
    vocab: int
    seq: int = 128
    batch: int = 32


@dataclass(frozen=True)
class Workload:
    task: str                 # mlm | clm | cls | infer | prep
    impls: tuple[str, ...]    # peers first, then "pretrainer": the interleaving order
    shape: Shape | None = None
    note: str = ""


BERT_MINI = Shape(layers=4, d_model=256, heads=4, d_ff=1024, vocab=30522)
BERT_SMALL = Shape(layers=4, d_model=512, heads=8, d_ff=2048, vocab=30522)
MINILM = Shape(layers=6, d_model=384, heads=12, d_ff=1536, vocab=30522)

WORKLOADS = {
    "mlm-mini": Workload("mlm", ("hf", "hf-trainer", "pretrainer"), BERT_MINI, "BERT-mini MLM train step"),
    "mlm-small": Workload("mlm", ("hf", "hf-trainer", "pretrainer"), BERT_SMALL, "BERT-small MLM train step"),
    "clm-8k": Workload("clm", ("hf", "pretrainer"), Shape(4, 256, 4, 1024, 8192), "GPT causal LM, vocab 8,192"),
    "clm-50k": Workload("clm", ("hf", "pretrainer"), Shape(4, 256, 4, 1024, 50257), "GPT causal LM, vocab 50,257"),
    "cls-minilm": Workload("cls", ("hf", "pretrainer"), MINILM, "MiniLM-shape classification fine-tuning step"),
    "infer-minilm": Workload("infer", ("hf", "pretrainer"), MINILM, "MiniLM-shape encoder forward, no grad"),
    "prep-imdb": Workload("prep", ("tokenizers", "pretrainer"), None, "tokenize + pack IMDB unsup"),
}
QUICK = ("mlm-mini", "clm-8k", "clm-50k")
# The metric the ratio and the table use, and its unit.
PRIMARY = {"mlm": "tokens_per_s", "clm": "tokens_per_s", "cls": "tokens_per_s",
           "infer": "items_per_s", "prep": "items_per_s"}
ITEM_UNIT = {"mlm": "sequences", "clm": "sequences", "cls": "sequences", "infer": "sequences", "prep": "documents"}


def smoke_shape(shape: Shape) -> Shape:
    """Same structure, tiny sizes: for checking that every code path runs."""
    return dataclasses.replace(shape, layers=1, d_model=32, heads=2, d_ff=64, vocab=min(shape.vocab, 512),
                               seq=16, batch=4)


# FLOPs


def flops_per_token(task: str, s: Shape) -> float:
    """Useful model FLOPs per token (see FLOPS_CONVENTION)."""
    if task == "seq2seq":
        return t5_flops_per_token(s)
    if task == "electra":  # discriminator + its one-logit head + the generator's MLM step
        generator = dataclasses.replace(s, layers=electra_generator_layers(s))
        return 3 * (flops_per_token("infer", s) + 2 * s.d_model) + flops_per_token("mlm", generator)
    C, T = s.d_model, s.seq
    forward = 2 * s.layers * (4 * C * C + 2 * C * s.d_ff) + 4 * s.layers * T * C
    if task == "mlm":
        # pretrainer predicts exactly round(0.15 * n) of the n non-special tokens per row
        predicted = round(MASK_RATE * (T - 2)) / T
        forward += predicted * 2 * (C * C + C * s.vocab)
    elif task == "clm":
        forward += 2 * C * s.vocab
    elif task == "cls":
        forward += 2 * (C * C + 2 * C) / T  # pooler + 2-way classifier, once per sequence
    return forward if task == "infer" else 3 * forward


# child side: setup helpers


def child_setup(spec: dict):
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    if spec["precision"] == "bf16":
        amp = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    else:
        import contextlib
        amp = contextlib.nullcontext
    return torch, device, amp


def token_pool(torch, s: Shape, cols: int, specials: bool, device):
    """(N_POOL, B, cols) long: seeded random ids, [CLS] ... [SEP] around each row when `specials`."""
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(FIRST_ID, s.vocab, (N_POOL, s.batch, cols), generator=g)
    if specials:
        ids[:, :, 0] = CLS_ID
        ids[:, :, -1] = SEP_ID
    return ids.to(device)


def cycle(items):
    while True:
        yield from items


def hf_style_mask(torch, ids, special, vocab: int):
    """Bernoulli(0.15) over non-special tokens, 80/10/10 [MASK]/random/kept, as HF's MLM collator."""
    chosen = torch.bernoulli(torch.full(ids.shape, MASK_RATE, device=ids.device)).bool() & ~special
    labels = ids.masked_fill(~chosen, -100)
    action = torch.rand(ids.shape, device=ids.device)
    masked = ids.masked_fill(chosen & (action < 0.8), MASK_ID)
    random_ids = torch.randint(FIRST_ID, vocab, ids.shape, device=ids.device)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
    return masked, labels


def adamw(torch, model, device):
    """The optimizer pretrainer's build_optimizer makes, for the HF plain loops: AdamW lr 1e-4,
    wd 0.01 on matrices only, the fused kernel (CPU and CUDA)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.01},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, fused=True)


def pretrainer_train_config():
    from pretrainer.config import TrainConfig
    return TrainConfig(lr=1e-4, weight_decay=0.01, beta1=0.9, beta2=0.999, eps=1e-8, grad_clip=1.0)


def hf_bert_config(s: Shape, **extra):
    import transformers
    return transformers.BertConfig(vocab_size=s.vocab, hidden_size=s.d_model, num_hidden_layers=s.layers,
                                   num_attention_heads=s.heads, intermediate_size=s.d_ff,
                                   max_position_embeddings=512, hidden_dropout_prob=0.1,
                                   attention_probs_dropout_prob=0.1, attn_implementation="sdpa", **extra)


def pretrainer_bert(s: Shape):
    from pretrainer.models import BertConfig, build_model
    cfg = BertConfig(n_layers=s.layers, d_model=s.d_model, n_heads=s.heads, d_ff=s.d_ff, max_len=512,
                     dropout=0.1, attn_dropout=0.1)
    return build_model(cfg, s.vocab)


def hf_train_step(torch, model, optimizer, amp, forward):
    """The plain PyTorch loop for HF models: forward (loss from HF), backward, clip 1.0, AdamW."""
    params = [p for g in optimizer.param_groups for p in g["params"]]

    def step():
        with amp():
            loss = forward()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # A plain loop reads its loss back every step. pretrainer's train_step leaves its metrics
        # on the device (fit reads them every train.log_every steps); on the CPU neither waits.
        return float(loss)

    return step


def maybe_compile(torch, model, spec):
    return torch.compile(model) if spec["compile"] else model


def pretrainer_step(torch, model, objective, batches, device, spec):
    from pretrainer.config import ImplConfig
    from pretrainer.training import autocast, build_optimizer, train_step

    train_cfg = pretrainer_train_config()
    optimizer = build_optimizer(model, train_cfg, device)
    run_model = maybe_compile(torch, model, spec)  # after the optimizer, as fit() does
    amp = autocast(ImplConfig(device=spec["device"], precision=spec["precision"]), device)
    return lambda: train_step(run_model, objective, batches, optimizer, 1, amp, train_cfg.grad_clip, device=device)


# child side: one step per (task, impl)
# Each builder returns (step, tokens per step, items per step, extra fields).


def build_mlm_hf(spec, s):
    import transformers
    torch, device, amp = child_setup(spec)
    model = transformers.BertForMaskedLM(hf_bert_config(s)).to(device).train()
    optimizer = adamw(torch, model, device)
    run_model = maybe_compile(torch, model, spec)
    pool = token_pool(torch, s, s.seq, True, device)
    special = (pool[0] == CLS_ID) | (pool[0] == SEP_ID)
    mask = torch.ones_like(pool[0], dtype=torch.bool)
    batches = cycle(list(pool))

    def forward():
        masked, labels = hf_style_mask(torch, next(batches), special, s.vocab)
        return run_model(input_ids=masked, attention_mask=mask, labels=labels).loss

    return hf_train_step(torch, model, optimizer, amp, forward), s.batch * s.seq, s.batch, \
        {"attn": model.config._attn_implementation}


def build_mlm_pretrainer(spec, s):
    from types import SimpleNamespace
    from pretrainer.config import ObjectiveConfig
    from pretrainer.objectives import MaskedLM
    torch, device, _ = child_setup(spec)
    tokenizer = SimpleNamespace(mask_id=MASK_ID, vocab_size=s.vocab, special_ids=[PAD_ID, CLS_ID, SEP_ID, MASK_ID])
    objective = MaskedLM(ObjectiveConfig(name="mlm", mask_rate=MASK_RATE), tokenizer)
    model = objective.build(pretrainer_bert(s)).to(device).train()  # the backbone + the MLM head, as pretrain trains
    pool = token_pool(torch, s, s.seq, True, device)
    batches = cycle([{"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool),
                      "special_tokens_mask": (ids == CLS_ID) | (ids == SEP_ID)} for ids in pool])
    return pretrainer_step(torch, model, objective, batches, device, spec), s.batch * s.seq, s.batch, {}


def build_clm_hf(spec, s):
    import transformers
    torch, device, amp = child_setup(spec)
    config = transformers.GPT2Config(vocab_size=s.vocab, n_positions=1024, n_embd=s.d_model, n_layer=s.layers,
                                     n_head=s.heads, n_inner=s.d_ff, resid_pdrop=0.1, embd_pdrop=0.1,
                                     attn_pdrop=0.1, bos_token_id=s.vocab - 1, eos_token_id=s.vocab - 1,
                                     attn_implementation="sdpa")
    model = transformers.GPT2LMHeadModel(config).to(device).train()
    optimizer = adamw(torch, model, device)
    run_model = maybe_compile(torch, model, spec)
    # Both impls run the model over T = seq positions; HF shifts the labels itself (T - 1 targets).
    batches = cycle([ids[:, :-1] for ids in token_pool(torch, s, s.seq + 1, False, device)])

    def forward():
        ids = next(batches)
        return run_model(input_ids=ids, labels=ids).loss

    return hf_train_step(torch, model, optimizer, amp, forward), s.batch * s.seq, s.batch, \
        {"attn": model.config._attn_implementation}


def build_clm_pretrainer(spec, s):
    from pretrainer.config import ObjectiveConfig
    from pretrainer.models import GPTConfig, build_model
    from pretrainer.objectives import CausalLM
    torch, device, _ = child_setup(spec)
    cfg = GPTConfig(n_layers=s.layers, d_model=s.d_model, n_heads=s.heads, d_ff=s.d_ff, max_len=1024, dropout=0.1)
    objective = CausalLM(ObjectiveConfig(name="clm"))
    model = objective.build(build_model(cfg, s.vocab)).to(device).train()
    batches = cycle([{"input_ids": ids} for ids in token_pool(torch, s, s.seq + 1, False, device)])  # (B, T+1)
    return pretrainer_step(torch, model, objective, batches, device, spec), s.batch * s.seq, s.batch, {}


def classification_batches(torch, s: Shape, device):
    g = torch.Generator().manual_seed(99)
    out = []
    for ids in token_pool(torch, s, s.seq, True, device):
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool),
                    "token_type_ids": torch.zeros_like(ids),
                    "labels": torch.randint(0, 2, (s.batch,), generator=g).to(device)})
    return out


def build_cls_hf(spec, s):
    import transformers
    torch, device, amp = child_setup(spec)
    model = transformers.BertForSequenceClassification(hf_bert_config(s, num_labels=2)).to(device).train()
    optimizer = adamw(torch, model, device)
    run_model = maybe_compile(torch, model, spec)
    batches = cycle(classification_batches(torch, s, device))
    step = hf_train_step(torch, model, optimizer, amp, lambda: run_model(**next(batches)).loss)
    return step, s.batch * s.seq, s.batch, {"attn": model.config._attn_implementation}


def build_cls_pretrainer(spec, s):
    from pretrainer.models import SequenceClassifier
    from pretrainer.objectives import ClassificationObjective
    torch, device, _ = child_setup(spec)
    model = SequenceClassifier(pretrainer_bert(s), num_labels=2, pooling="cls", dropout=0.1).to(device).train()
    batches = cycle(classification_batches(torch, s, device))
    objective = ClassificationObjective(2)
    return pretrainer_step(torch, model, objective, batches, device, spec), s.batch * s.seq, s.batch, {}


def inference_step(torch, amp, forward):
    def step():
        with torch.no_grad(), amp():
            forward()
    return step


def build_infer_hf(spec, s):
    import transformers
    torch, device, amp = child_setup(spec)
    model = transformers.BertModel(hf_bert_config(s), add_pooling_layer=False).to(device).eval()
    run_model = maybe_compile(torch, model, spec)
    pool = token_pool(torch, s, s.seq, True, device)
    mask = torch.ones_like(pool[0], dtype=torch.bool)
    batches = cycle(list(pool))
    step = inference_step(torch, amp, lambda: run_model(input_ids=next(batches), attention_mask=mask).last_hidden_state)
    return step, s.batch * s.seq, s.batch, {"attn": model.config._attn_implementation}


def build_infer_pretrainer(spec, s):
    from pretrainer.config import ImplConfig
    from pretrainer.training import autocast
    torch, device, _ = child_setup(spec)
    model = pretrainer_bert(s).to(device).eval()
    run_model = maybe_compile(torch, model, spec)
    pool = token_pool(torch, s, s.seq, True, device)
    mask = torch.ones_like(pool[0], dtype=torch.bool)
    batches = cycle(list(pool))
    ctx = autocast(ImplConfig(device=spec["device"], precision=spec["precision"]), device)
    amp = lambda: ctx  # noqa: E731  (re-enterable)
    return inference_step(torch, amp, lambda: run_model(next(batches), mask)), s.batch * s.seq, s.batch, {}


STEP_BUILDERS = {
    ("mlm", "hf"): build_mlm_hf, ("mlm", "pretrainer"): build_mlm_pretrainer,
    ("clm", "hf"): build_clm_hf, ("clm", "pretrainer"): build_clm_pretrainer,
    ("cls", "hf"): build_cls_hf, ("cls", "pretrainer"): build_cls_pretrainer,
    ("infer", "hf"): build_infer_hf, ("infer", "pretrainer"): build_infer_pretrainer,
}


# ELECTRA: one step of generator + discriminator, against Hugging Face's ElectraForMaskedLM +
# ElectraForPreTraining sharing their embeddings as the paper's (and pretrainer's) do.

ELECTRA_MINI = Shape(layers=4, d_model=256, heads=4, d_ff=1024, vocab=16384)
RTD_WEIGHT = 50.0
WORKLOADS["electra-mini"] = Workload("electra", ("hf", "pretrainer"), ELECTRA_MINI,
                                     "ELECTRA step: BERT-mini discriminator + 1-layer generator, vocab 16,384")
PRIMARY["electra"] = "tokens_per_s"
ITEM_UNIT["electra"] = "sequences"


def electra_generator_layers(s: Shape) -> int:
    return max(1, s.layers // 3)  # pretrainer's default (objective.generator_layers = 0)


def build_electra_hf(spec, s):
    import transformers
    torch, device, amp = child_setup(spec)

    def config(layers):
        return transformers.ElectraConfig(vocab_size=s.vocab, embedding_size=s.d_model, hidden_size=s.d_model,
                                          num_hidden_layers=layers, num_attention_heads=s.heads,
                                          intermediate_size=s.d_ff, max_position_embeddings=512,
                                          hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                                          attn_implementation="sdpa")

    discriminator = transformers.ElectraForPreTraining(config(s.layers))
    generator = transformers.ElectraForMaskedLM(config(electra_generator_layers(s)))
    generator.electra.embeddings = discriminator.electra.embeddings  # shared word/position/type tables
    generator.generator_lm_head.weight = discriminator.electra.embeddings.word_embeddings.weight  # re-tied
    pair = torch.nn.ModuleDict({"discriminator": discriminator, "generator": generator}).to(device).train()
    optimizer = adamw(torch, pair, device)  # parameters() yields the shared tables once
    run_discriminator, run_generator = maybe_compile(torch, discriminator, spec), maybe_compile(torch, generator, spec)
    pool = token_pool(torch, s, s.seq, True, device)
    special = (pool[0] == CLS_ID) | (pool[0] == SEP_ID)
    mask = torch.ones_like(pool[0], dtype=torch.bool)
    batches = cycle(list(pool))

    def forward():
        ids = next(batches)
        masked, labels = hf_style_mask(torch, ids, special, s.vocab)
        out = run_generator(input_ids=masked, attention_mask=mask, labels=labels)  # logits (B, T, V)
        chosen = labels != -100
        with torch.no_grad():
            sampled = torch.multinomial(out.logits[chosen].float().softmax(-1), 1).squeeze(1)
        corrupted = ids.clone()
        corrupted[chosen] = sampled
        replaced = (corrupted != ids).long()
        return out.loss + RTD_WEIGHT * run_discriminator(input_ids=corrupted, attention_mask=mask,
                                                         labels=replaced).loss

    return hf_train_step(torch, pair, optimizer, amp, forward), s.batch * s.seq, s.batch, \
        {"attn": discriminator.config._attn_implementation}


def build_electra_pretrainer(spec, s):
    from types import SimpleNamespace
    from pretrainer.config import ObjectiveConfig
    from pretrainer.objectives import ReplacedTokenDetection
    torch, device, _ = child_setup(spec)
    tokenizer = SimpleNamespace(mask_id=MASK_ID, vocab_size=s.vocab, special_ids=[PAD_ID, CLS_ID, SEP_ID, MASK_ID])
    objective = ReplacedTokenDetection(ObjectiveConfig(name="electra", mask_rate=MASK_RATE, rtd_weight=RTD_WEIGHT,
                                                       generator_layers=electra_generator_layers(s)), tokenizer)
    model = objective.build(pretrainer_bert(s)).to(device).train()
    pool = token_pool(torch, s, s.seq, True, device)
    batches = cycle([{"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool),
                      "special_tokens_mask": (ids == CLS_ID) | (ids == SEP_ID)} for ids in pool])
    return pretrainer_step(torch, model, objective, batches, device, spec), s.batch * s.seq, s.batch, {}


STEP_BUILDERS[("electra", "hf")] = build_electra_hf
STEP_BUILDERS[("electra", "pretrainer")] = build_electra_pretrainer


# T5: one span-corruption step of a 4 + 4 layer encoder–decoder, against Hugging Face's
# T5ForConditionalGeneration on the same shapes. Both corrupt the same packed windows with
# pretrainer's corrupt_spans each step (transformers ships no span-corruption collator).

T5_MINI = Shape(layers=4, d_model=256, heads=4, d_ff=1024, vocab=16484)  # 16,384 pieces + 100 sentinels
N_SENTINELS = 100
WORKLOADS["t5-span"] = Workload("seq2seq", ("hf", "pretrainer"), T5_MINI,
                                "T5 span-corruption step: 4 + 4 layers, width 256, vocab 16,484")
PRIMARY["seq2seq"] = "tokens_per_s"
ITEM_UNIT["seq2seq"] = "sequences"


def t5_sentinels(s: Shape) -> list[int]:
    return list(range(s.vocab - 1, s.vocab - 1 - N_SENTINELS, -1))  # <extra_id_0> the highest id, as in T5


def t5_windows(torch, s: Shape, device):
    """Packed windows of ordinary ids (below the sentinels)."""
    return list(token_pool(torch, dataclasses.replace(s, vocab=s.vocab - N_SENTINELS), s.seq, False, device))


def t5_lengths(s: Shape) -> tuple[int, int]:
    """(encoder, decoder) lengths of a corrupted window of s.seq tokens (15% noise, mean span 3),
    counted as pretrainer.data.collators.span_counts does (the launcher imports no torch)."""
    n_noise = min(max(1, round(s.seq * MASK_RATE)), s.seq - 1)
    n_spans = min(max(1, round(n_noise / 3.0)), n_noise, s.seq - n_noise)
    return s.seq - n_noise + n_spans + 1, n_noise + n_spans + 1


def t5_flops_per_token(s: Shape) -> float:
    """Per raw token of the window (see FLOPS_CONVENTION): encoder blocks over its inputs, the
    cross-attention keys/values over them too, decoder blocks (self + cross + FFN) and the tied
    vocabulary projection over the targets."""
    C, L = s.d_model, s.layers
    enc, dec = t5_lengths(s)
    encoder = enc * (2 * L * (4 * C * C + 2 * C * s.d_ff) + 4 * L * enc * C + 2 * L * 2 * C * C)
    decoder = dec * (2 * L * (6 * C * C + 2 * C * s.d_ff) + 4 * L * dec * C + 4 * L * enc * C + 2 * C * s.vocab)
    return 3 * (encoder + decoder) / s.seq


def build_seq2seq_hf(spec, s):
    import transformers
    from pretrainer.data.collators import corrupt_spans
    torch, device, amp = child_setup(spec)
    config = transformers.T5Config(vocab_size=s.vocab, d_model=s.d_model, d_kv=s.d_model // s.heads, d_ff=s.d_ff,
                                   num_layers=s.layers, num_heads=s.heads, dropout_rate=0.1,
                                   feed_forward_proj="relu", pad_token_id=PAD_ID, eos_token_id=SEP_ID,
                                   decoder_start_token_id=PAD_ID, attn_implementation="sdpa")
    model = transformers.T5ForConditionalGeneration(config).to(device).train()
    optimizer = adamw(torch, model, device)
    run_model = maybe_compile(torch, model, spec)
    batches = cycle(t5_windows(torch, s, device))
    sentinels = t5_sentinels(s)

    def forward():
        inputs, targets = corrupt_spans(next(batches), sentinels, SEP_ID, noise_density=MASK_RATE)
        return run_model(input_ids=inputs, labels=targets).loss  # shifts the labels right behind [PAD]

    return hf_train_step(torch, model, optimizer, amp, forward), s.batch * s.seq, s.batch, \
        {"attn": model.config._attn_implementation}


def build_seq2seq_pretrainer(spec, s):
    from pretrainer.config import ObjectiveConfig
    from pretrainer.data_info import DataInfo
    from pretrainer.models import T5Config, build_model
    from pretrainer.objectives import SpanCorruption
    torch, device, _ = child_setup(spec)
    info = DataInfo("text", vocab_size=s.vocab, pad_id=PAD_ID, eos_id=SEP_ID, sentinel_ids=tuple(t5_sentinels(s)))
    objective = SpanCorruption(ObjectiveConfig(name="span_corruption", noise_density=MASK_RATE), info)
    cfg = T5Config(n_layers=s.layers, d_model=s.d_model, n_heads=s.heads, d_ff=s.d_ff, dropout=0.1)
    model = objective.build(build_model(cfg, info)).to(device).train()
    batches = cycle([{"input_ids": ids} for ids in t5_windows(torch, s, device)])
    return pretrainer_step(torch, model, objective, batches, device, spec), s.batch * s.seq, s.batch, {}


STEP_BUILDERS[("seq2seq", "hf")] = build_seq2seq_hf
STEP_BUILDERS[("seq2seq", "pretrainer")] = build_seq2seq_pretrainer


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def timed_steps(step, sync, spec) -> dict:
    """Warm up, then time steps for spec["seconds"] (at least 2 steps) or spec["max_steps"]."""
    for _ in range(spec["warmup"]):
        step()
    sync()
    times = []
    start = last = time.perf_counter()
    min_steps = min(2, spec["max_steps"]) if spec["max_steps"] else 2
    while True:
        step()
        sync()
        now = time.perf_counter()
        times.append(now - last)
        last = now
        if spec["max_steps"] and len(times) >= spec["max_steps"]:
            break
        if now - start >= spec["seconds"] and len(times) >= min_steps:
            break
    return {"steps": len(times), "seconds": last - start, "step_ms_median": 1000 * statistics.median(times)}


def run_model_child(spec: dict) -> dict:
    wl = WORKLOADS[spec["workload"]]
    shape = Shape(**spec["shape"])
    step, tokens_per_step, items_per_step, extra = STEP_BUILDERS[(wl.task, spec["impl"])](spec, shape)
    import torch
    sync = torch.cuda.synchronize if spec["device"].startswith("cuda") else (lambda: None)
    setup_rss = peak_rss_mb()
    timing = timed_steps(step, sync, spec)
    out = {**timing, **extra, "setup_rss_mb": setup_rss,
           "tokens_per_s": tokens_per_step * timing["steps"] / timing["seconds"],
           "items_per_s": items_per_step * timing["steps"] / timing["seconds"]}
    if spec["device"].startswith("cuda"):
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_mlm_trainer_child(spec: dict) -> dict:
    """transformers.Trainer: synthetic Dataset, default collator, timing between step ends."""
    import transformers
    torch, device, _ = child_setup(spec)
    s = Shape(**spec["shape"])
    pool = token_pool(torch, s, s.seq, True, "cpu").view(-1, s.seq)  # the Trainer moves batches itself
    special = (pool[0] == CLS_ID) | (pool[0] == SEP_ID)

    class SyntheticMLM(torch.utils.data.Dataset):
        def __len__(self):
            return len(pool)

        def __getitem__(self, i):
            # masked here, i.e. in the data loader, as DataCollatorForLanguageModeling would
            masked, labels = hf_style_mask(torch, pool[i], special, s.vocab)
            return {"input_ids": masked, "attention_mask": torch.ones_like(masked), "labels": labels}

    class StepClock(transformers.TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.start = self.last = None
            self.setup_rss = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.setup_rss = peak_rss_mb()  # model, optimizer and data built

        def on_step_end(self, args, state, control, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            if state.global_step == spec["warmup"]:
                self.start = self.last = now
            elif self.start is not None:
                self.times.append(now - self.last)
                self.last = now
                enough = now - self.start >= spec["seconds"] and len(self.times) >= 2
                if enough or (spec["max_steps"] and len(self.times) >= spec["max_steps"]):
                    control.should_training_stop = True

    model = transformers.BertForMaskedLM(hf_bert_config(s))
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out_dir:
        args = transformers.TrainingArguments(
            output_dir=out_dir, max_steps=spec["warmup"] + (spec["max_steps"] or 10**9),
            per_device_train_batch_size=s.batch, learning_rate=1e-4, weight_decay=0.01, adam_beta1=0.9,
            adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, lr_scheduler_type="constant",
            warmup_steps=0, logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
            disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False, seed=0,
            use_cpu=device.type == "cpu", bf16=spec["precision"] == "bf16", torch_compile=spec["compile"])
        trainer = transformers.Trainer(model=model, args=args, train_dataset=SyntheticMLM(),
                                       data_collator=transformers.default_data_collator, callbacks=[clock])
        trainer.train()
    if not clock.times:
        raise RuntimeError("the Trainer stopped before any timed step")
    seconds = clock.last - clock.start
    steps = len(clock.times)
    return {"steps": steps, "seconds": seconds, "step_ms_median": 1000 * statistics.median(clock.times),
            "tokens_per_s": s.batch * s.seq * steps / seconds, "items_per_s": s.batch * steps / seconds,
            "setup_rss_mb": clock.setup_rss, "attn": model.config._attn_implementation,
            "optim": getattr(args.optim, "value", str(args.optim))}


def read_texts(path: Path, limit: int) -> list[str]:
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if limit and len(texts) >= limit:
                break
    return texts


def run_prep_tokenizers_child(spec: dict) -> dict:
    """One process: read every review, then one `Tokenizer.encode_batch` over all of them."""
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(spec["tokenizer"])
    start = time.perf_counter()
    texts = read_texts(Path(spec["data"]), spec["prep_docs"])
    read_s = time.perf_counter() - start
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    seconds = time.perf_counter() - start
    n_tokens = sum(len(e.ids) for e in encodings)
    return {"seconds": seconds, "read_s": read_s, "documents": len(texts),
            "items_per_s": len(texts) / seconds, "tokens_per_s": n_tokens / seconds}


def run_prep_pretrainer_child(spec: dict) -> dict:
    """pretrainer's prepare path with a given tokenizer: read, encode, pack, write shards (fresh cache)."""
    from pretrainer.config import Config, TokenizerConfig
    from pretrainer.data.text_config import TextDataConfig
    from pretrainer.data.shards import prepare_corpus
    with tempfile.TemporaryDirectory() as cache:
        cfg = Config(data=TextDataConfig(train=[spec["data"]], cache_dir=cache, max_documents=spec["prep_docs"]),
                     tokenizer=TokenizerConfig(path=spec["tokenizer"]))
        start = time.perf_counter()
        corpus = prepare_corpus(cfg, log=lambda message: None)
        seconds = time.perf_counter() - start
        docs, tokens = corpus.meta["documents"], corpus.meta["tokens"]
    return {"seconds": seconds, "documents": docs, "items_per_s": docs / seconds, "tokens_per_s": tokens / seconds}


def run_matmul_child(spec: dict) -> dict:
    """Peak: the best of several timed bursts of a square matmul at the benchmark's dtype."""
    torch, device, _ = child_setup(spec)
    n = spec["matmul_n"]
    dtype = torch.bfloat16 if spec["precision"] == "bf16" and device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    rates = []
    deadline = time.perf_counter() + spec["seconds"]
    while time.perf_counter() < deadline or len(rates) < 3:
        reps = 0
        start = time.perf_counter()
        while True:
            a @ b
            reps += 1
            sync()
            if time.perf_counter() - start >= 0.25:
                break
        rates.append(2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"matmul_n": n, "dtype": str(dtype).removeprefix("torch."), "device_name": name, "gflops": max(rates),
            "gflops_median": statistics.median(rates), "bursts": len(rates)}


def run_train_tokenizer_child(spec: dict) -> dict:
    """The fixed WordPiece tokenizer (vocab 30,522) for prep-imdb, trained once on a sample; not timed."""
    from pretrainer.config import TokenizerConfig
    from pretrainer.data.tokenizer import train_tokenizer
    texts = read_texts(Path(spec["data"]), spec["sample_docs"])
    path = train_tokenizer(texts, TokenizerConfig(kind="wordpiece", vocab_size=30522)).save(spec["out_dir"])
    return {"tokenizer": str(path)}


def run_workload_child(spec: dict) -> dict:
    wl = WORKLOADS[spec["workload"]]
    if wl.task == "prep":
        return {"tokenizers": run_prep_tokenizers_child, "pretrainer": run_prep_pretrainer_child}[spec["impl"]](spec)
    if spec["impl"] == "hf-trainer":
        return run_mlm_trainer_child(spec)
    return run_model_child(spec)


CHILD_JOBS = {"matmul": run_matmul_child, "train-tokenizer": run_train_tokenizer_child}


def vm_hwm_mb() -> float | None:
    """This process image's peak RSS from /proc (Linux), a cross-check of ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    result = CHILD_JOBS.get(spec["impl"], run_workload_child)(spec)
    result["peak_rss_mb"] = peak_rss_mb()
    result["vm_hwm_mb"] = vm_hwm_mb()
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# parent side


@dataclass
class Measurement:
    workload: str
    impl: str
    samples: list[dict] = field(default_factory=list)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_child(spec: dict, timeout: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"]),
           "RAYON_NUM_THREADS": str(spec["threads"]), "TOKENIZERS_PARALLELISM": "true",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median_of(samples: list[dict], key: str):
    values = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(m: Measurement, wl: Workload, shape: Shape | None, peak_gflops: float | None,
              peers: dict[str, Measurement], common: dict) -> dict:
    ok = [s for s in m.samples if "error" not in s]
    primary = PRIMARY[wl.task]
    row = {"kind": "measurement", "workload": m.workload, "impl": m.impl, "task": wl.task,
           "tokens_per_s": median_of(ok, "tokens_per_s"), "items_per_s": median_of(ok, "items_per_s"),
           "item": ITEM_UNIT[wl.task], "primary": primary, "peak_rss_mb": median_of(ok, "peak_rss_mb"),
           "setup_rss_mb": median_of(ok, "setup_rss_mb"), "repeats": len(ok),
           "samples": [round(s[primary], 2) for s in ok], "steps_median": median_of(ok, "steps"),
           "step_ms_median": median_of(ok, "step_ms_median")}
    if shape is not None:
        fpt = flops_per_token(wl.task, shape)
        row["flops_per_token"] = fpt
        row["mfu"] = (row["tokens_per_s"] * fpt / (peak_gflops * 1e9)
                      if row["tokens_per_s"] and peak_gflops else None)
        row["shape"] = dataclasses.asdict(shape)
    for key in ("vm_hwm_mb", "peak_gpu_mb", "read_s", "documents"):
        if any(key in s for s in ok):
            row[key] = median_of(ok, key)
    for key in ("attn", "optim"):
        if ok and key in ok[0]:
            row[key] = ok[0][key]
    if m.impl == "pretrainer":
        for name, peer in peers.items():
            # Paired by repeat: each ratio compares runs that sat next to each other in time.
            ratios = [a[primary] / b[primary] for a, b in zip(m.samples, peer.samples)
                      if "error" not in a and "error" not in b and b[primary] > 0]
            row[f"ratio_vs_{name.replace('-', '_')}"] = statistics.median(ratios) if ratios else None
    errors = [s["error"] for s in m.samples if "error" in s]
    if errors:
        row["errors"] = errors
    return {**row, **common}


def fmt(value, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    print()
    header = (f"{'workload':<13} {'impl':<11} {'metric':<15} {'median':>10} {'ratio':>26} {'MFU':>7} "
              f"{'peak RSS MB':>12} {'n':>3}")
    print(header)
    print("-" * len(header))
    for r in rows:
        if r.get("kind") != "measurement":
            continue
        ratios = [f"{k[len('ratio_vs_'):]}={fmt(v, '.2f')}" for k, v in r.items() if k.startswith("ratio_vs_")]
        unit = "tokens/s" if r["primary"] == "tokens_per_s" else f"{r['item'][:4]}/s"
        mfu = None if r.get("mfu") is None else 100 * r["mfu"]
        print(f"{r['workload']:<13} {r['impl']:<11} {unit:<15} {fmt(r[r['primary']]):>10} "
              f"{' '.join(ratios) or '':>26} {fmt(mfu, '.1f') + ('%' if mfu is not None else ''):>7} "
              f"{fmt(r['peak_rss_mb']):>12} {r['repeats']:>3}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="workloads: " + ", ".join(f"{k} ({w.note})" for k, w in WORKLOADS.items()))
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}, short measurements")
    p.add_argument("--workloads", default="", help="comma-separated names (default: all, or the quick set)")
    p.add_argument("--impls", default="", help="comma-separated impls to keep (default: all of each workload)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats per impl (default 5, quick 3)")
    p.add_argument("--seconds", type=float, default=None, help="timed seconds per measurement (default 30, quick 6)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3, quick 1)")
    p.add_argument("--steps", type=int, default=0,
                   help="stop a measurement after this many timed steps (0 = time only)")
    p.add_argument("--threads", type=int, default=0, help="torch / tokenizers threads in every child (0 = all CPUs)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--compile", action="store_true", help="torch.compile every model (more warm-up advised)")
    p.add_argument("--prep-docs", type=int, default=0, help="prep-imdb: only the first N reviews (0 = all 50,000)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes and 1 step: check the paths, not the speed")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    def quick_or_full(quick, full):
        return quick if args.quick else full

    args.repeats = args.repeats or (1 if args.smoke else quick_or_full(3, 5))
    args.seconds = args.seconds if args.seconds is not None else (0.0 if args.smoke else quick_or_full(6.0, 30.0))
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else quick_or_full(1, 3))
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (the first step also builds caches)")
    if args.smoke and not args.steps:
        args.steps = 1
        args.prep_docs = args.prep_docs or 500
    return args


def measure_workload(name: str, args, base: dict, keep_impls: set[str], scratch: Path,
                     peak_gflops: float | None, common: dict, timeout: float) -> list[dict]:
    """All repeats of one workload, interleaved; -> one summary row per impl."""
    wl = WORKLOADS[name]
    impls = [i for i in wl.impls if not keep_impls or i in keep_impls]
    shape = wl.shape and (smoke_shape(wl.shape) if args.smoke else wl.shape)
    spec = {**base, "workload": name, "shape": dataclasses.asdict(shape) if shape else None}
    if wl.task == "prep":
        if not IMDB_UNSUP.is_file():
            log(f"# {name}: skipped, {IMDB_UNSUP} is absent")
            return []
        log(f"# {name}: training the fixed WordPiece tokenizer on a sample (not timed)")
        trained = run_child({**base, "impl": "train-tokenizer", "data": str(IMDB_UNSUP),
                             "sample_docs": min(args.prep_docs or 10_000, 10_000),
                             "out_dir": str(scratch / "tokenizer")}, timeout)
        if "error" in trained:
            log(f"# {name}: skipped, tokenizer training failed: {trained['error']}")
            return []
        spec.update(tokenizer=trained["tokenizer"], data=str(IMDB_UNSUP))
    if "hf-trainer" in impls and importlib.util.find_spec("accelerate") is None:
        log(f"# {name}: hf-trainer skipped: transformers.Trainer needs the accelerate package")
        impls.remove("hf-trainer")
    primary = PRIMARY[wl.task]
    measurements = {impl: Measurement(name, impl) for impl in impls}
    for r in range(args.repeats):
        for impl in impls:  # peers first, then pretrainer: peer, us, peer, us, ...
            sample = run_child({**spec, "impl": impl}, timeout)
            measurements[impl].samples.append(sample)
            shown = sample.get("error") or (f"{sample[primary]:.1f} {primary}, {sample.get('steps', 1)} steps, "
                                            f"peak RSS {sample['peak_rss_mb']:.0f} MB")
            log(f"# {name} {impl} repeat {r + 1}/{args.repeats}: {shown}")
    peers = {i: m for i, m in measurements.items() if i != "pretrainer"}
    return [summarize(m, wl, shape, peak_gflops, peers, common) for m in measurements.values()]


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args.child)
        return 0
    names = [n for n in args.workloads.split(",") if n] or list(QUICK if args.quick else WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        log(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
        return 2
    keep_impls = {i for i in args.impls.split(",") if i}
    threads = args.threads or len(os.sched_getaffinity(0))
    # The launcher imports neither torch nor transformers: Linux counts the memory a child had
    # before exec (a copy of this process) in the child's ru_maxrss, so this process stays small.
    common = {"device": args.device, "precision": args.precision, "compile": args.compile, "threads": threads}
    print(json.dumps({
        "kind": "env", "date": datetime.date.today().isoformat(), "host": platform.node(), "cpu": cpu_name(),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        **{pkg: package_version(pkg) for pkg in ("torch", "transformers", "tokenizers", "accelerate")},
        "repeats": args.repeats, "seconds": args.seconds, "warmup": args.warmup, "max_steps": args.steps,
        "smoke": args.smoke, "flops_convention": FLOPS_CONVENTION, **common}), flush=True)
    base = {**common, "warmup": args.warmup, "seconds": args.seconds, "max_steps": args.steps,
            "prep_docs": args.prep_docs}
    timeout = 600 + 4 * args.seconds
    started = time.perf_counter()
    matmul = {**base, "impl": "matmul", "workload": "", "seconds": 0.5 if args.smoke else 3.0,
              "matmul_n": 256 if args.smoke else (8192 if args.device.startswith("cuda") else 2048)}

    peak = run_child(matmul, timeout)
    print(json.dumps({"kind": "peak", "when": "start", **peak, **common}), flush=True)
    peak_gflops = peak.get("gflops")
    log(f"# matmul peak: {fmt(peak_gflops, '.1f')} GFLOP/s")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        for name in names:
            for row in measure_workload(name, args, base, keep_impls, Path(scratch), peak_gflops, common, timeout):
                rows.append(row)
                print(json.dumps(row), flush=True)
    end_peak = run_child(matmul, timeout)
    print(json.dumps({"kind": "peak", "when": "end", **end_peak, **common}), flush=True)

    print_table(rows)
    print(f"\nmatmul peak {fmt(peak_gflops, '.1f')} GFLOP/s at start, {fmt(end_peak.get('gflops'), '.1f')} at end "
          f"({matmul['matmul_n']}^2 {peak.get('dtype', '')}, {peak.get('device_name', args.device)}); "
          f"{threads} threads; {args.precision}{' compiled' if args.compile else ''}; "
          f"launcher RSS {peak_rss_mb():.0f} MB; total {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
