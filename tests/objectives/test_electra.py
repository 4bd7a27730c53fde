"""ELECTRA's replaced-token detection: what the registry contract tests cannot see (shared
embeddings, the loss against a hand computation, which tokens are judged, config errors, the
Hugging Face export of the discriminator)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from pretrainer.config import ObjectiveConfig, validate
from pretrainer.data.collators import mask_tokens
from pretrainer.errors import PretrainerError
from pretrainer.io import read_safetensors, save_weights
from pretrainer.objectives import ReplacedTokenDetection
from pretrainer.runs import load_run, module_spec

from .conftest import CLS, MASK, PAD, SEP, VOCAB


TEXTS = ["the cat sat on the mat", "a dog ran under the log", "birds flew over the tree"] * 4


def electra(tokenizer, **cfg) -> ReplacedTokenDetection:
    return ReplacedTokenDetection(ObjectiveConfig(name="electra", **cfg), tokenizer)


def toy_batch(pad_is_special: bool = True) -> dict:
    """Two rows of [CLS] ... [SEP]; the second ends in three pads."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, VOCAB, (2, 12), generator=g)
    ids[:, 0] = CLS
    ids[0, -1] = SEP
    ids[1, 8] = SEP
    ids[1, 9:] = PAD
    attention = ids != PAD
    special = (ids == CLS) | (ids == SEP) | ((ids == PAD) if pad_is_special else torch.zeros_like(attention))
    return {"input_ids": ids, "attention_mask": attention, "special_tokens_mask": special}


def shares_embeddings(module) -> bool:
    gen, disc = module.generator.embeddings, module.backbone.embeddings
    return gen is disc and all(
        getattr(gen, name).weight.data_ptr() == getattr(disc, name).weight.data_ptr()
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"))


def write_run(run_dir, module, tokenizer):
    run_dir.mkdir(parents=True)
    (run_dir / "model.json").write_text(json.dumps(module_spec(module)))
    save_weights(module, run_dir / "model.safetensors")
    tokenizer.save(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def wordpiece():
    from pretrainer.config import TokenizerConfig
    from pretrainer.data.tokenizer import train_tokenizer

    return train_tokenizer(TEXTS, TokenizerConfig(kind="wordpiece", vocab_size=60, min_frequency=1))


def test_generator_shares_the_discriminator_embeddings_through_save_and_load(wordpiece, make_model, tmp_path):
    from pretrainer.data.text import text_info

    backbone = make_model("bert", vocab_size=wordpiece.vocab_size, n_layers=3)
    before = backbone.embeddings.word_embeddings.weight.detach().clone()
    module = electra(text_info(wordpiece)).build(backbone)
    assert shares_embeddings(module)
    assert torch.equal(module.backbone.embeddings.word_embeddings.weight, before)  # building re-draws nothing
    assert module.generator.head_config() == {"n_layers": 1, "d_model": 32, "n_heads": 2, "d_ff": 128}
    run = write_run(tmp_path / "run", module, wordpiece)
    # stored once; model.json carries the generator's size
    stored, _ = read_safetensors(run / "model.safetensors")
    assert not any(k.startswith("generator.embeddings.") for k in stored)
    spec = json.loads((run / "model.json").read_text())
    assert spec["heads"] == [{"name": "generator", "config": module.generator.head_config()}, "rtd_head"]
    loaded, _ = load_run(run)
    assert shares_embeddings(loaded)
    state, again = module.state_dict(), loaded.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    # one parameter, so one optimizer entry, into which both losses' gradients flow
    names = [n for n, _ in loaded.named_parameters()]
    assert "backbone.embeddings.word_embeddings.weight" in names
    assert not any(n.startswith("generator.embeddings.") for n in names)


def test_generator_size_from_the_config(tokenizer, make_model):
    module = electra(tokenizer, generator_layers=2, generator_width_ratio=0.5).build(make_model("bert", n_layers=4))
    assert module.generator.head_config() == {"n_layers": 2, "d_model": 16, "n_heads": 1, "d_ff": 64}
    assert module.generator.project is not None and shares_embeddings(module)
    out = electra(tokenizer, generator_width_ratio=0.5)(module.train(), toy_batch())
    out["loss"].backward()
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)


def test_loss_is_generator_cross_entropy_plus_weighted_detection_bce(tokenizer, make_model):
    objective = electra(tokenizer, rtd_weight=7.0)
    module = objective.build(make_model("bert", n_layers=3)).eval()
    batch = toy_batch()
    torch.manual_seed(11)
    out = objective(module, batch)

    # By hand, drawing the same random numbers in the same order: masking, then sampling.
    torch.manual_seed(11)
    masked, labels = mask_tokens(batch["input_ids"], batch["special_tokens_mask"], mask_id=MASK, vocab_size=VOCAB,
                                 special_ids=tokenizer.special_ids)
    with torch.no_grad():
        gen = module.generator
        logits = F.linear(gen.head.transform(gen(masked, batch["attention_mask"])),
                          module.backbone.embeddings.word_embeddings.weight, gen.head.bias)  # (B, T, V)
        gen_loss = F.cross_entropy(logits.view(-1, VOCAB), labels.view(-1), ignore_index=-100)
        chosen = labels != -100
        corrupted = batch["input_ids"].clone()
        corrupted[chosen] = torch.multinomial(logits[chosen].softmax(-1), 1).squeeze(1)
        is_replaced = (corrupted != batch["input_ids"]).float()
        z = module.rtd_head(module.backbone(corrupted, batch["attention_mask"])).squeeze(-1)  # (B, T)
        real = batch["attention_mask"] & ~batch["special_tokens_mask"]
        bce = -(is_replaced * F.logsigmoid(z) + (1 - is_replaced) * F.logsigmoid(-z))
        rtd_loss = bce[real].sum() / real.sum()
    torch.testing.assert_close(out["loss"], gen_loss + 7.0 * rtd_loss)
    torch.testing.assert_close(out["mlm_loss"], gen_loss)
    torch.testing.assert_close(out["rtd_loss"], rtd_loss)
    assert float(out["replaced"]) == pytest.approx(float(is_replaced[real].mean()))
    assert 0 < int(is_replaced.sum()) <= int(chosen.sum())  # an untrained generator misses some


@pytest.mark.parametrize("pad_is_special", [True, False])
def test_only_real_non_special_tokens_are_judged(tokenizer, make_model, pad_is_special):
    objective = electra(tokenizer)
    module = objective.build(make_model("bert"))
    seen = []
    module.rtd_head.register_forward_hook(lambda m, inputs, output: seen.append(inputs[0].shape[0]))
    batch = toy_batch(pad_is_special)
    objective(module, batch)
    # 10 + 7 tokens between [CLS] and [SEP]; no [CLS], [SEP] or pad, whether or not pads are flagged special
    assert seen == [17]
    metrics = objective.evaluate(module, [batch, batch])
    assert metrics == objective.evaluate(module, [batch, batch])  # seeded: the same masks and samples
    assert set(metrics) == {"mlm_loss", "mlm_acc", "mlm_ppl", "rtd_loss", "rtd_acc", "replaced"}


@pytest.mark.parametrize("key,value", [("rtd_weight", -1.0), ("generator_layers", -2),
                                       ("generator_width_ratio", 0.0), ("generator_width_ratio", 1.5)])
def test_bad_config_is_one_line_naming_the_key(key, value):
    # the rules live on ObjectiveConfig's fields: checked when a config loads, or by validate()
    with pytest.raises(PretrainerError, match=f"objective.{key}") as err:
        validate(ObjectiveConfig(name="electra", **{key: value}), prefix="objective.")
    assert "\n" not in str(err.value)


def test_causal_backbone_is_refused(tokenizer, make_model):
    reason = electra(tokenizer).check_backbone(make_model("gpt"))
    assert reason and "causal" in reason and "\n" not in reason
    assert electra(tokenizer).check_backbone(make_model("bert")) is None


def test_export_ships_the_discriminator_as_bert(wordpiece, make_model, tmp_path):
    transformers = pytest.importorskip("transformers")
    from pretrainer.data.text import text_info
    from pretrainer.interop.hf_export import export_hf

    module = electra(text_info(wordpiece)).build(make_model("bert", vocab_size=wordpiece.vocab_size))
    out = export_hf(write_run(tmp_path / "run", module, wordpiece), tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    hf, info = transformers.BertModel.from_pretrained(out, local_files_only=True, output_loading_info=True)
    assert not any(info.values())  # no missing or unexpected keys: the generator stayed home
    ids = torch.tensor([wordpiece.encode_batch(TEXTS[:1], add_special=True)[0]])
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(input_ids=ids).last_hidden_state, module.backbone.eval()(ids),
                                   atol=1e-4, rtol=0)


def test_unigram_bias_starts_the_generator_head(tokenizer, make_model):
    import numpy as np

    class CountingData:
        def token_counts(self):
            counts = np.zeros(VOCAB, dtype=np.int64)
            counts[10] = 99
            return counts

    objective = electra(tokenizer, unigram_bias=True)
    module = objective.build(make_model("bert"))
    objective.initialise(module, CountingData())
    assert int(module.generator.head.bias.argmax()) == 10


def test_in_a_mixture_with_mlm_every_head_shares_the_one_embedding(tokenizer, make_model):
    from pretrainer.objectives import Mixture

    mixture = Mixture(ObjectiveConfig(name="mixture", mixture=["mlm", "electra"]), tokenizer)
    module = mixture.build(make_model("bert"))
    assert module.head_names == ["generator", "mlm_head", "rtd_head"] and shares_embeddings(module)
    batch = toy_batch()
    out = mixture(module.train(), {f"{name}/{k}": v for name in ("mlm", "electra") for k, v in batch.items()})
    out["loss"].backward()
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)


RARE = VOCAB - 1  # a token the corpus below never holds


class FixedCorruption(ReplacedTokenDetection):
    """Every chosen position gets RARE: replacements anyone could spot, so a discriminator that
    is wired right must learn them in a few dozen steps."""

    def sample_replacements(self, features, weight, bias, generator):
        return torch.full((features.shape[0],), RARE, dtype=torch.long)


def rare_free_batch(g: torch.Generator, rows: int = 16, length: int = 20) -> dict:
    ids = torch.randint(4, RARE, (rows, length), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    special = (ids == CLS) | (ids == SEP)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool), "special_tokens_mask": special}


def bernoulli_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_discriminator_learns_trivially_detectable_replacements(tokenizer, make_model):
    # The shipped regime (rtd_weight 50, lr 1e-3, 80/10/10 masking) on replacements a
    # discriminator cannot miss: its held-out loss must fall far below the prior's entropy,
    # which is where a discriminator that learns nothing (always "original") sits.
    torch.manual_seed(0)
    objective = FixedCorruption(ObjectiveConfig(name="electra", rtd_weight=50.0), tokenizer)
    module = objective.build(make_model("bert")).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        optimizer.zero_grad()
        objective(module, rare_free_batch(g))["loss"].backward()
        optimizer.step()
    held_out = [rare_free_batch(torch.Generator().manual_seed(100 + i)) for i in range(4)]
    metrics = objective.evaluate(module, held_out)
    prior = bernoulli_entropy(metrics["replaced"])
    assert 0.05 < metrics["replaced"] < 0.3
    assert metrics["rtd_loss"] < 0.5 * prior
    assert metrics["rtd_acc"] > 1 - metrics["replaced"] / 3  # past always answering "original"


def test_detection_gradient_reaches_the_logits_with_labels_of_the_corrupted_input(tokenizer, make_model):
    # The discriminator must read the corrupted ids, and its labels must say where they differ
    # from the original: d(loss)/d(logit) = w (sigmoid(z) - y) / M recovers each label y.
    objective = FixedCorruption(ObjectiveConfig(name="electra", rtd_weight=7.0), tokenizer)
    module = objective.build(make_model("bert")).train()
    batch = rare_free_batch(torch.Generator().manual_seed(1))
    seen = {}

    def keep_input(m, args, out):
        seen["ids"] = args[0]

    module.backbone.register_forward_hook(keep_input)

    def keep_logit_grad(m, args, out):
        seen["z"] = out
        out.register_hook(lambda grad: seen.update(grad=grad))

    module.rtd_head.register_forward_hook(keep_logit_grad)
    torch.manual_seed(3)
    out = objective(module, batch)
    out["loss"].backward()
    real = ~batch["special_tokens_mask"]
    corrupted = seen["ids"]  # what the discriminator read (the generator calls the embeddings, not the backbone)
    assert corrupted.shape == batch["input_ids"].shape
    assert not torch.equal(corrupted, batch["input_ids"])
    z, grad = seen["z"].squeeze(-1).detach(), seen["grad"].squeeze(-1)
    assert grad.abs().min() > 0  # every judged token's logit gets gradient, none detached or scaled away
    m = int(real.sum())
    labels = torch.sigmoid(z) - grad * m / 7.0
    torch.testing.assert_close(labels, labels.round(), atol=1e-4, rtol=0)
    assert torch.equal(labels.round().bool(), (corrupted != batch["input_ids"])[real])
    assert torch.equal((corrupted != batch["input_ids"])[real], (corrupted == RARE)[real])
    assert float(out["replaced"]) == pytest.approx(float((corrupted == RARE)[real].float().mean()))
