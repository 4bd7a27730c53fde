"""Word vectors: the skip-gram loss and pairs against hand computations, both engines' runs, a
kill / resume of each, `model.init_embeddings` and the bag-of-embeddings classifier."""

import json
import math
import random

import pytest
import torch

from pretrainer import api
from pretrainer.config import load_config
from pretrainer.errors import PretrainerError
from pretrainer.io import read_model_state
from pretrainer.objectives.word2vec import compact, keep_probability, noise_distribution, pair_mask, sgns_loss
from pretrainer.runs import load_run
from pretrainer.transfer.finetune import finetune

QUIET = dict(log=lambda *_: None)
WORDS = "good bad fine poor great awful nice dull movie film plot actor".split()


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_sgns_loss_matches_a_hand_computation():
    # one row of 3 pieces, width 2; pairs (0 -> 1), (1 -> 0), (1 -> 2); K = 2 noise pieces, k = 4
    v = torch.tensor([[[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]]])  # centers (1, 3, 2)
    u = torch.tensor([[[0.2, 0.3], [-0.4, 1.0], [1.5, 0.5]]])  # contexts (1, 3, 2)
    noise = torch.tensor([[[1.0, 1.0], [-2.0, 0.5]]])  # (1, K=2, 2)
    pairs = torch.zeros(1, 3, 3, dtype=torch.bool)
    pairs[0, 0, 1] = pairs[0, 1, 0] = pairs[0, 1, 2] = True
    loss, n = sgns_loss(v, u, noise, pairs, negatives=4)

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    vs, us, ns = v[0].tolist(), u[0].tolist(), noise[0].tolist()
    expected = 0.0
    for c, o in ((0, 1), (1, 0), (1, 2)):
        # -log sigmoid(u_o . v_c) - (k / K) * sum over the row's noise of log sigmoid(-u_n . v_c)
        expected += softplus(-dot(us[o], vs[c])) + 4 / 2 * sum(softplus(dot(m, vs[c])) for m in ns)
    assert n == 3
    assert loss.item() == pytest.approx(expected / 3, rel=1e-6)


def test_no_pairs_gives_a_zero_that_backprops():
    v = torch.randn(1, 2, 3, requires_grad=True)
    loss, n = sgns_loss(v, torch.randn(1, 2, 3), torch.randn(1, 2, 3), torch.zeros(1, 2, 2, dtype=torch.bool), 5)
    loss.backward()
    assert n == 0 and loss.item() == 0 and v.grad is not None


def test_pairs_are_word2vecs_after_subsampling_and_never_cross_a_document():
    sep = 3
    ids = torch.tensor([[10, 11, 12, sep, 13, 14, 15]])
    special = ids == sep
    keep = torch.tensor([[True, False, True, True, True, True, True]]) & ~special  # 11 dropped, then gaps close
    ids_c, document, valid = compact(ids, keep, special)
    assert ids_c[0, :5].tolist() == [10, 12, 13, 14, 15] and valid[0].tolist() == [True] * 5 + [False] * 2
    reach = torch.tensor([[2, 1, 1, 2, 1, 1, 1]])  # of the closed-up positions: 10, 12, 13, 14, 15
    pairs = pair_mask(valid, document, reach)
    got = {(ids_c[0, i].item(), ids_c[0, j].item()) for i, j in pairs[0].nonzero().tolist()}
    # 10 reaches 2 pieces but 13 lies past the separator; 14 reaches 13 and 15; the others 1 piece
    assert got == {(10, 12), (12, 10), (13, 14), (14, 13), (14, 15), (15, 14)}


def test_subsampling_and_noise_follow_word2vecs_formulas():
    counts = torch.tensor([0, 0, 900, 90, 10, 0])  # ids 0, 1 special; id 5 never seen
    keep = keep_probability(counts, [0, 1], threshold=0.01)
    f = 900 / 1000  # the frequent piece: (sqrt(f / t) + 1) * t / f
    assert keep[2].item() == pytest.approx((math.sqrt(f / 0.01) + 1) * 0.01 / f, rel=1e-6)
    assert keep[4].item() == 1.0 and keep[5].item() == 1.0 and keep[:2].tolist() == [0.0, 0.0]
    noise = noise_distribution(counts, [0, 1], 0.75)
    weights = [0, 0, 900 ** 0.75, 90 ** 0.75, 10 ** 0.75, 0]
    assert noise.tolist() == pytest.approx([w / sum(weights) for w in weights], rel=1e-6)
    # nothing counted (a module built without data): uniform over the ordinary pieces
    assert noise_distribution(torch.zeros(4), [0], 0.75).tolist() == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3])


# ---------------------------------------------------------------- runs


def write_corpus(root, seed=0, n=80):
    rng = random.Random(seed)
    lines = [" ".join(rng.choices(WORDS, k=rng.randint(8, 20))) for _ in range(n)]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "corpus.txt"


def wordvec_config(root, run_dir, *overrides, engine="fit"):
    return load_config(None, [
        f'--run.dir="{run_dir}"', f'--data.train="{write_corpus(root)}"', f'--data.cache_dir="{root / "cache"}"',
        "--data.holdout=0.1", "--tokenizer.vocab_size=60", "--tokenizer.min_frequency=1", "--model.name=boe",
        "--model.d_model=16", "--objective.name=word2vec", f'--objective.engine="{engine}"',
        "--objective.window=3", "--train.batch_size=4", "--train.seq_len=16", "--train.max_steps=6",
        "--train.save_every=2", "--train.eval_every=3", "--train.log_every=1", "--train.warmup=0",
        f"--train.lr={0.025 if engine == 'gensim' else 1e-2}", "--impl.threads=1", "--impl.deterministic=true",
        "--impl.progress=false", *overrides])


@pytest.mark.parametrize("engine", ["fit", "gensim"])
def test_each_engine_writes_a_run_that_loads_and_resumes_exactly(engine, tmp_path, monkeypatch, crash_after):
    if engine == "gensim":
        pytest.importorskip("gensim")
    whole = api.pretrain(wordvec_config(tmp_path, tmp_path / "whole", engine=engine), **QUIET)
    assert whole.step == 6
    run = tmp_path / "whole"
    for name in ("config.toml", "model.json", "model.safetensors", "tokenizer.json", "metrics.jsonl"):
        assert (run / name).is_file(), name
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r["metrics"]["sgns_loss"] for r in evals if r["split"] == "eval"]
    assert len(evals) == 2 and all(math.isfinite(x) for x in evals)
    module, tokenizer = load_run(run)
    assert module.head_names == ["context_embeddings"] and module.backbone.config.name == "boe"
    assert int(module.context_embeddings.token_counts.sum()) > 0  # the corpus' counts travel with the run
    table = module.backbone.word_vector_table.weight
    assert table.shape == (tokenizer.vocab_size, 16)
    # the saved vectors are trained ones, not the init: evaluate agrees with the last held-out number
    assert api.evaluate(wordvec_config(tmp_path, run, engine=engine), **QUIET)["sgns_loss"] == pytest.approx(evals[-1])

    # killed after 5 batches (last checkpoint at step 4), resumed: the same weights
    from pretrainer.registry import DATA
    text = DATA.get("text")
    real = text.train_batches
    monkeypatch.setattr(text, "train_batches", lambda self, *a, **k: crash_after(real(self, *a, **k), 5))
    with pytest.raises(RuntimeError, match="simulated"):
        api.pretrain(wordvec_config(tmp_path, tmp_path / "killed", engine=engine), **QUIET)
    monkeypatch.undo()
    api.pretrain(wordvec_config(tmp_path, tmp_path / "killed", engine=engine), resume=True, **QUIET)
    a = read_model_state(run / "model.safetensors")
    b = read_model_state(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume is not exact"


def test_gensim_learns_the_same_task_as_fit(tmp_path):
    """Both engines lower the held-out skip-gram loss well below its value at the start."""
    pytest.importorskip("gensim")
    start = {}
    for engine in ("fit", "gensim"):
        cfg = wordvec_config(tmp_path, tmp_path / engine, "--train.max_steps=40", "--train.eval_every=0",
                             "--train.save_every=0", "--train.log_every=20",
                             f"--train.lr={0.2 if engine == 'gensim' else 3e-2}", engine=engine)
        result = api.pretrain(cfg, **QUIET)
        start[engine] = result.eval_history[-1]["sgns_loss"]
    untrained = 6 * math.log(2)  # zero context vectors: every score 0, 1 + 5 softplus(0) terms
    assert start["fit"] < untrained - 0.5 and start["gensim"] < untrained - 0.5, start


def test_word2vec_refuses_a_transformer_and_other_objectives_refuse_gensim(tmp_path):
    cfg = wordvec_config(tmp_path, tmp_path / "r", "--model.name=bert", "--model.n_layers=1", "--model.n_heads=2")
    with pytest.raises(PretrainerError, match="objective.name.*boe"):
        api.pretrain(cfg, **QUIET)
    with pytest.raises(PretrainerError, match="objective.engine.*'mlm' trains with fit"):
        load_config(None, ["--objective.name=mlm", "--objective.engine=gensim"])
    with pytest.raises(PretrainerError, match="masked token.*word2vec"):  # MLM on a bag of embeddings
        api.pretrain(wordvec_config(tmp_path, tmp_path / "m", "--objective.name=mlm", '--objective.engine="auto"'),
                     **QUIET)
    assert not (tmp_path / "r").exists() and not (tmp_path / "m").exists()


# ---------------------------------------------------------------- init_embeddings


@pytest.fixture(scope="module")
def vectors_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("wordvec")
    api.pretrain(wordvec_config(root, root / "vectors", "--train.max_steps=8", "--train.save_every=0"), **QUIET)
    return root


def mlm_config(root, run_dir, *overrides):
    return load_config(None, [
        f'--run.dir="{run_dir}"', f'--data.train="{root / "corpus.txt"}"', f'--data.cache_dir="{root / "cache"}"',
        "--data.holdout=0.1", "--tokenizer.vocab_size=60", "--tokenizer.min_frequency=1",
        f'--tokenizer.path="{root / "vectors" / "tokenizer.json"}"', "--model.n_layers=1", "--model.d_model=16",
        "--model.n_heads=2", "--model.max_len=32", "--model.init_std=0.05",
        f'--model.init_embeddings="{root / "vectors"}"', "--train.batch_size=4", "--train.seq_len=16",
        "--train.max_steps=1", "--train.lr=0", "--train.eval_every=0", "--impl.progress=false", *overrides])


def test_init_embeddings_copies_rescaled_rows_into_the_tied_table(vectors_run, tmp_path):
    api.pretrain(mlm_config(vectors_run, tmp_path / "mlm"), **QUIET)  # lr 0: the weights stay as initialised
    module, tokenizer = load_run(tmp_path / "mlm")
    vectors, _ = load_run(vectors_run / "vectors")
    source = vectors.backbone.word_vector_table.weight
    table = module.backbone.embeddings.word_embeddings.weight
    ordinary = torch.ones(len(source), dtype=torch.bool)
    ordinary[tokenizer.special_ids] = False
    scale = 0.05 / source[ordinary].std()
    torch.testing.assert_close(table[ordinary], source[ordinary] * scale)
    assert table[ordinary].std().item() == pytest.approx(0.05, rel=1e-4)  # the model's own init scale
    assert not torch.allclose(table[~ordinary], source[~ordinary] * scale)  # special tokens keep their init
    # the MLM head's output matrix is that same tensor (tied), in memory and in the saved run
    _, weight, _ = module.lm_projection(torch.zeros(1, 16))
    assert weight.data_ptr() == table.data_ptr()
    assert "mlm_head.decoder.weight" not in read_model_state(tmp_path / "mlm" / "model.safetensors")


def test_init_embeddings_refuses_another_tokenizer_in_one_line(vectors_run, tmp_path):
    from pretrainer.config import TokenizerConfig
    from pretrainer.data.tokenizer import train_tokenizer

    other = train_tokenizer(["quite another corpus with other pieces entirely"] * 3,
                            TokenizerConfig(vocab_size=60, min_frequency=1))
    other.save(tmp_path / "other")
    cfg = mlm_config(vectors_run, tmp_path / "mlm", f'--tokenizer.path="{tmp_path / "other" / "tokenizer.json"}"')
    with pytest.raises(PretrainerError) as refused:
        api.pretrain(cfg, **QUIET)
    message = str(refused.value)
    assert "\n" not in message and "'model.init_embeddings'" in message and "tokenizer differs" in message
    assert not (tmp_path / "mlm").exists()
    # a tokenizer trained by this run (no tokenizer.path) on another corpus: refused after preparing, before writing
    (tmp_path / "c.txt").write_text("zebra yak xylophone walrus\n" * 20, encoding="utf-8")
    cfg = mlm_config(vectors_run, tmp_path / "mlm", '--tokenizer.path=""', f'--data.train="{tmp_path / "c.txt"}"')
    with pytest.raises(PretrainerError, match="'model.init_embeddings'.*tokenizer differs"):
        api.pretrain(cfg, **QUIET)
    assert not (tmp_path / "mlm").exists()


def test_init_embeddings_refuses_other_sizes_and_runs(vectors_run, tmp_path):
    with pytest.raises(PretrainerError, match=r"'model.init_embeddings'.* 16 wide .* 32 \(model.d_model\)"):
        api.pretrain(mlm_config(vectors_run, tmp_path / "w", "--model.d_model=32"), **QUIET)
    with pytest.raises(PretrainerError, match="'model.init_embeddings'.*model.vocab_size"):
        api.pretrain(mlm_config(vectors_run, tmp_path / "v", "--model.vocab_size=99"), **QUIET)
    api.pretrain(mlm_config(vectors_run, tmp_path / "bert"), **QUIET)
    with pytest.raises(PretrainerError, match="'model.init_embeddings'.*not a word-vector run"):
        api.pretrain(mlm_config(vectors_run, tmp_path / "x", f'--model.init_embeddings="{tmp_path / "bert"}"'), **QUIET)
    with pytest.raises(PretrainerError, match="'model.init_embeddings'.*no model.json"):
        api.pretrain(mlm_config(vectors_run, tmp_path / "y", f'--model.init_embeddings="{tmp_path}"'), **QUIET)
    assert not any((tmp_path / name).exists() for name in "wvxy")


def test_an_elmo_starts_from_word_vectors_of_its_embedding_width(vectors_run, tmp_path):
    """The width checked is the table's (d_embed), not d_model (an ELMo's features are twice it)."""
    def elmo(run_dir, d_embed):
        return load_config(None, [
            f'--run.dir="{run_dir}"', f'--data.train="{vectors_run / "corpus.txt"}"',
            f'--data.cache_dir="{vectors_run / "cache"}"', "--data.holdout=0.1",
            f'--tokenizer.path="{vectors_run / "vectors" / "tokenizer.json"}"', "--model.name=elmo",
            f"--model.d_embed={d_embed}", "--model.hidden=24", "--model.n_layers=1", "--objective.name=bilm",
            f'--model.init_embeddings="{vectors_run / "vectors"}"', "--train.batch_size=4", "--train.seq_len=16",
            "--train.max_steps=1", "--train.lr=0", "--train.eval_every=0", "--impl.progress=false"])

    api.pretrain(elmo(tmp_path / "elmo", 16), **QUIET)
    module, _ = load_run(tmp_path / "elmo")
    vectors, _ = load_run(vectors_run / "vectors")
    source, table = vectors.backbone.word_vector_table.weight, module.backbone.embeddings.word_embeddings.weight
    assert torch.corrcoef(torch.stack([source[10:].flatten(), table[10:].flatten()]))[0, 1] > 0.999
    with pytest.raises(PretrainerError, match=r"16 wide .* 20 \(model.d_embed\)"):
        api.pretrain(elmo(tmp_path / "wide", 20), **QUIET)


# ---------------------------------------------------------------- the bag-of-embeddings classifier


def test_boe_from_word_vectors_fine_tunes_on_a_tiny_labeled_set(vectors_run, tmp_path):
    rng = random.Random(0)
    rows = []
    for i in range(80):  # label 1 when the text holds "good"
        words = rng.choices(WORDS[1:], k=6)
        if i % 2:
            words[rng.randrange(6)] = "good"
        rows.append({"text": " ".join(words), "label": str(i % 2)})
    labeled = tmp_path / "labeled.jsonl"
    labeled.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = load_config(None, [
        f'--run.dir="{vectors_run / "vectors"}"', f'--finetune.init="{vectors_run / "vectors"}"',
        f'--finetune.dir="{tmp_path / "ft"}"', f'--finetune.data.train="{labeled}"', f'--finetune.data.dev="{labeled}"',
        "--finetune.train.epochs=15.0", "--finetune.train.lr=0.05", "--finetune.train.batch_size=8",
        "--finetune.train.weight_decay=0.0", "--finetune.max_len=16", "--impl.progress=false"])
    results = finetune(cfg, **QUIET)
    assert results["dev"]["accuracy"] >= 0.9, results["dev"]
    model, _ = load_run(tmp_path / "ft")
    assert model.backbone.config.name == "boe" and model.num_labels == 2
