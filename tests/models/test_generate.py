import pytest
import torch
import torch.nn.functional as F

from pretrainer.models.decoder import filter_logits

VOCAB = 61


@pytest.fixture
def gpt(make_model):
    torch.manual_seed(0)
    return make_model("gpt")


def prompt(b=2, t=5):
    return torch.randint(4, VOCAB, (b, t), generator=torch.Generator().manual_seed(1))


def test_greedy_is_deterministic_and_respects_max_new_tokens(gpt):
    x = prompt()
    a = gpt.generate(x, 6, greedy=True)
    b = gpt.generate(x, 6, greedy=True)
    assert a.shape == (2, 11) and torch.equal(a, b) and torch.equal(a[:, :5], x)
    # greedy really is argmax of the model's next-token logits
    assert torch.equal(a[:, 5], gpt.lm_logits(gpt(x)[:, -1]).argmax(-1))


def test_top_k_1_equals_greedy(gpt):
    x = prompt()
    g = torch.Generator().manual_seed(3)
    assert torch.equal(gpt.generate(x, 6, top_k=1, generator=g), gpt.generate(x, 6, greedy=True))


def test_sampling_follows_the_generator(gpt):
    x = prompt()
    a = gpt.generate(x, 8, temperature=1.5, generator=torch.Generator().manual_seed(7))
    b = gpt.generate(x, 8, temperature=1.5, generator=torch.Generator().manual_seed(7))
    c = gpt.generate(x, 8, temperature=1.5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_context_is_cropped_to_max_len(gpt):
    x = prompt(1, gpt.config.max_len - 2)
    out = gpt.generate(x, 10, greedy=True)  # runs past max_len without an error
    assert out.shape == (1, gpt.config.max_len + 8)


def test_one_dim_prompt_and_eos(gpt):
    x = prompt(1, 4)[0]
    first = gpt.generate(x, 1, greedy=True)
    assert first.shape == (5,)
    eos = int(first[-1])  # the token greedy decoding emits next: generation stops right there
    assert torch.equal(gpt.generate(x, 10, greedy=True, eos_id=eos), first)


def test_generate_restores_train_mode(gpt):
    gpt.train()
    gpt.generate(prompt(), 2, greedy=True)
    assert gpt.training


def test_filter_logits():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda out: torch.isfinite(out)[0].tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_p=0.6)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_p=0.5)) == [True, False, False, False]
    assert kept(filter_logits(logits, top_p=0.01)) == [True, False, False, False]
    assert kept(filter_logits(logits, top_p=0.9)) == [True, True, True, False]
    # the order of the vocabulary does not matter
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.isfinite(filter_logits(logits[:, perm], top_p=0.6))[0].tolist() == [False, True, False, True]
    torch.testing.assert_close(F.softmax(filter_logits(logits), -1), F.softmax(logits, -1))
