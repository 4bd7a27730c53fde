"""Task-specific distillation (transfer/distill.py, objectives/soft_targets.py): the loss on a toy
batch by hand (T^2 and alpha), and fine-tuning runs that learn from a teacher run, with extra
unlabeled text, for classification and tagging."""

import json
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pretrainer import api
from pretrainer.config import TokenizerConfig, load_config
from pretrainer.data.tokenizer import train_tokenizer
from pretrainer.errors import PretrainerError
from pretrainer.objectives import ClassificationObjective
from pretrainer.objectives.soft_targets import SoftTargets, soft_target_kl
from pretrainer.objectives.token_classification import TokenClassificationObjective
from pretrainer.transfer.finetune import check_finetune_config, finetune

QUIET = dict(log=lambda *_: None)


class FixedLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, batch):
        return self.logits


STUDENT = [[1.0, 2.0, 0.5], [0.2, -1.0, 3.0], [0.0, 0.0, 1.0]]
TEACHER = [[2.0, 0.0, 1.0], [-1.0, 0.5, 4.0], [3.0, 0.0, -2.0]]


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_soft_target_loss_on_a_toy_batch(alpha, temperature):
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    labels = torch.tensor([1, 2, -100])  # the last row is unlabeled text the teacher labelled
    batch = {"input_ids": torch.zeros(3, 4, dtype=torch.long), "labels": labels, "teacher_logits": t}
    out = SoftTargets(ClassificationObjective(3), alpha, temperature)(FixedLogits(STUDENT), batch)
    # by hand: KL(p_t || p_s) at temperature T, averaged over the three rows; CE over the two labeled rows
    p_t = [[torch.exp(x / temperature) / torch.exp(row / temperature).sum() for x in row] for row in t]
    log_p_s = [[x / temperature - torch.log(torch.exp(row / temperature).sum()) for x in row] for row in s]
    kl = sum(p * (torch.log(p) - q) for pt, qs in zip(p_t, log_p_s) for p, q in zip(pt, qs)) / 3
    ce = -(torch.log_softmax(s[0], 0)[1] + torch.log_softmax(s[1], 0)[2]) / 2
    expected = alpha * temperature ** 2 * kl + (1 - alpha) * ce
    torch.testing.assert_close(out["loss"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["kd_loss"], kl, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out["ce_loss"], ce, atol=1e-6, rtol=1e-5)
    assert out["acc"].item() == pytest.approx(1.0)  # both labeled rows right; the unlabeled one not counted
    out["loss"].backward()


def test_t_squared_keeps_the_soft_gradient_on_scale():
    """Hinton's reason for T^2: at high T the soft term's gradient shrinks as 1/T^2 (for logits of
    zero mean), which the factor undoes: the gradients at T = 10 and T = 20 agree closely."""
    s = torch.tensor([[0.3, -0.2, -0.1]])
    t = torch.tensor([[0.5, 0.1, -0.6]])
    grads = []
    for temperature in (10.0, 20.0):
        model = FixedLogits(s.tolist())
        batch = {"input_ids": torch.zeros(1, 2, dtype=torch.long), "labels": torch.tensor([0]), "teacher_logits": t}
        SoftTargets(ClassificationObjective(3), 1.0, temperature)(model, batch)["loss"].backward()
        grads.append(model.logits.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=2e-3, rtol=2e-2)
    assert grads[0].abs().max() > 0.05


def test_token_soft_targets_count_only_words_the_teacher_saw():
    s = torch.randn(1, 3, 2)
    t = torch.randn(1, 3, 2)
    mask = torch.tensor([[True, False, True]])
    expected = sum(F.kl_div(F.log_softmax(s[0, i] / 2, -1), F.log_softmax(t[0, i] / 2, -1), log_target=True,
                            reduction="sum") for i in (0, 2)) / 2
    torch.testing.assert_close(soft_target_kl(s, t, 2.0, mask), expected)
    labels = torch.tensor([[-100, 1, -100]])
    batch = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "labels": labels, "teacher_logits": t,
             "teacher_mask": mask}
    out = SoftTargets(TokenClassificationObjective(["O", "B-X"]), 0.5, 2.0)(FixedLogits(s.tolist()), batch)
    ce = -torch.log_softmax(s[0, 1], -1)[1]
    torch.testing.assert_close(out["loss"], 0.5 * 4 * expected + 0.5 * ce, atol=1e-5, rtol=1e-5)


def test_settings_that_cannot_apply_are_one_line_errors(tmp_path):
    base = ["--finetune.data.train=x.jsonl"]
    with pytest.raises(PretrainerError, match="does not train by gradient"):
        check_finetune_config(load_config(None, base + ['--finetune.teacher="t"', '--finetune.method="probe"']))
    with pytest.raises(PretrainerError, match="needs finetune.teacher"):
        check_finetune_config(load_config(None, base + ['--finetune.distill_unlabeled="u.txt"']))
    with pytest.raises(PretrainerError, match="'finetune.distill_alpha' must be in"):  # the field's rule
        load_config(None, base + ['--finetune.teacher="t"', "--finetune.distill_alpha=1.5"])


def test_classifier_learns_from_a_teacher_run_and_unlabeled_text(tmp_path, tiny_transfer_task, good_task_rows,
                                                                task_words):
    cfg = tiny_transfer_task(tmp_path, good_task_rows(), "--finetune.train.epochs=2.0", "--finetune.train.lr=3e-3")
    teacher = finetune(load_config(None, [f'--finetune.dir="{tmp_path / "teacher"}"'], base=_as_dict(cfg)), **QUIET)
    rng = random.Random(5)
    (tmp_path / "unlabeled.txt").write_text("\n".join(" ".join(rng.choices(task_words, k=5)) for _ in range(30)))
    student_cfg = load_config(None, [f'--finetune.dir="{tmp_path / "student"}"',
                                     f'--finetune.teacher="{tmp_path / "teacher"}"', "--finetune.distill_alpha=0.7",
                                     f'--finetune.distill_unlabeled="{tmp_path / "unlabeled.txt"}"'],
                              base=_as_dict(cfg))
    results = api.distill(student_cfg, **QUIET)  # [finetune] names a teacher: task-specific
    assert results["teacher"] == str(tmp_path / "teacher") and results["n_unlabeled"] == 30
    assert results["n_labels"] == teacher["n_labels"] == 60  # the gold labels counted, not the unlabeled text
    assert results["steps"] == 2 * -(-90 // 8)  # two epochs over 60 labeled + 30 unlabeled examples
    saved = json.loads((tmp_path / "student" / "results.json").read_text())
    assert saved["distill_alpha"] == 0.7 and 0 <= saved["dev"]["accuracy"] <= 1
    metrics = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert any("kd_loss" in m["metrics"] for m in metrics)


def _as_dict(cfg):
    import dataclasses

    return dataclasses.asdict(cfg)


def tagged(n, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.choices(["the", "a", "walked", "under", "quickly"], k=rng.randint(2, 5))
        at = rng.randrange(len(words) + 1)
        name = rng.choice(["kim", "paris", "zenith"])
        words.insert(at, name)
        rows.append((words, ["B-X" if w == name else "O" for w in words]))
    return rows


def write_conll(path, rows):
    path.write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(words, tags)) for words, tags in rows) + "\n")
    return path


def test_tagger_learns_from_a_teacher_run_and_unlabeled_text(tmp_path):
    rows = tagged(40, seed=1)
    tokenizer = train_tokenizer([" ".join(w) for w, _ in rows], TokenizerConfig(vocab_size=50, min_frequency=1))
    tokenizer.save(tmp_path / "tok")
    train = write_conll(tmp_path / "train.txt", rows)
    dev = write_conll(tmp_path / "dev.txt", tagged(10, seed=2))
    (tmp_path / "unlabeled.txt").write_text("\n".join(" ".join(w) for w, _ in tagged(12, seed=3)) + "\n")
    common = [f'--tokenizer.path="{tmp_path / "tok"}"', "--model.n_layers=1", "--model.d_model=16",
              "--model.n_heads=2", "--model.max_len=32", '--finetune.task="tokens"', f'--finetune.data.train="{train}"',
              f'--finetune.data.dev="{dev}"', "--finetune.max_len=24", "--finetune.train.batch_size=8",
              "--finetune.train.epochs=1.0", "--finetune.train.log_every=1", "--impl.progress=false",
              "--impl.threads=1"]
    finetune(load_config(None, common + [f'--finetune.dir="{tmp_path / "teacher"}"']), **QUIET)
    results = finetune(load_config(None, common + [
        f'--finetune.dir="{tmp_path / "student"}"', f'--finetune.teacher="{tmp_path / "teacher"}"',
        f'--finetune.distill_unlabeled="{tmp_path / "unlabeled.txt"}"']), **QUIET)
    assert results["n_unlabeled"] == 12 and results["steps"] == -(-52 // 8)
    assert 0 <= results["dev"]["f1"] <= 1
    metrics = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    kd = [m["metrics"]["kd_loss"] for m in metrics if "kd_loss" in m["metrics"]]
    assert kd and all(v >= 0 for v in kd)
