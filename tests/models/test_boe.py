"""The bag-of-embeddings backbone: mean of its pieces' vectors, pads left out, optional projection."""

import pytest
import torch

from pretrainer.models import SequenceClassifier, build_model, model_config_dict, model_from_config_dict
from pretrainer.models.boe import BoEConfig

VOCAB = 30


def test_pooled_is_the_mean_of_the_real_tokens_vectors():
    model = build_model(BoEConfig(d_model=8), VOCAB).eval()
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = ids != 0
    hidden = model(ids, mask)
    table = model.embeddings.word_embeddings.weight
    expected = torch.stack([table[[5, 6, 7]].mean(0), table[[8, 9]].mean(0)])
    for pooling in ("mean", "cls"):  # no position sees the whole text: cls is the mean too
        torch.testing.assert_close(model.pooled(hidden, mask, pooling), expected)
    assert model.word_vector_table is model.embeddings.word_embeddings
    with pytest.raises(ValueError, match="pooling"):
        model.pooled(hidden, mask, "max")


def test_projection_makes_one_layer_above_the_table():
    model = build_model(BoEConfig(d_model=8, hidden=12), VOCAB)
    assert model.d_model == 12 and model.n_layers == 1 and model.word_vector_table is None
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 12)
    depths = {n: model.layer_id(n) for n, _ in model.named_parameters()}
    assert depths == {"embeddings.word_embeddings.weight": 0, "proj.weight": 1, "proj.bias": 1}
    clf = SequenceClassifier(model, 3, pooling="mean")
    assert clf.layer_id("head.weight") == 2
    again = model_from_config_dict(model_config_dict(clf))
    again.load_state_dict(clf.state_dict())
    assert "init_embeddings" not in model_config_dict(model)["config"]  # a starting point, not architecture
