"""Named configs used by commands that need no config file (the demo)."""

# The demo: a BERT-mini pre-trained from scratch on news articles + unlabeled review snippets,
# then fine-tuned on Rotten Tomatoes fresh/rotten. Sized to finish in 15 minutes on 2 CPU cores.
# Pre-training is two stages, the small-budget recipe of configs/bert-mini-imdb-wordvec.toml:
# word vectors (gensim's skip-gram, DEMO_WORD_VECTORS) on the corpus' pieces start the BERT's word
# embeddings, then masked LM with pre-LN blocks, no dropout, a mask rate falling from 30% to 15% and
# the output bias started at the log unigram frequencies. Fine-tuning gives dropout back.
DEMO = {
    "data": {"format": "jsonl", "text_field": "text", "holdout": 0.01},
    "tokenizer": {"kind": "wordpiece", "vocab_size": 8192, "lowercase": True},
    "model": {"name": "bert", "n_layers": 4, "d_model": 256, "n_heads": 4, "max_len": 128, "norm_first": True,
              "dropout": 0.0, "attn_dropout": 0.0},
    "objective": {"name": "mlm", "mask_rate": 0.3, "mask_rate_end": 0.15, "unigram_bias": True},
    "train": {"batch_size": 32, "seq_len": 128, "budget": "4m", "lr": 1e-3, "warmup": 0.1,
              "schedule": "linear", "min_lr_ratio": 0.0, "eval_every": 0, "save_every": 200, "eval_batches": 20,
              "log_every": 20},
    "finetune": {
        "max_len": 64,
        "dropout": 0.1,
        "data": {"format": "jsonl", "text_field": "text", "label_field": "label", "labels": ["rotten", "fresh"]},
        # One epoch of all labels: the fine-tuning rows were 10 of the demo's 17 minutes at 1.5 epochs; 10% of the
        # labels is 32 steps an epoch, too few updates to leave the start: min_steps gives them 100.
        "train": {"batch_size": 32, "epochs": 1.0, "min_steps": 100, "lr": 2e-4, "warmup": 0.1,
                  "schedule": "linear"},
    },
}
# The demo's first stage: the [model], [objective] and [train] that replace DEMO's for word vectors
# (data and tokenizer settings stay DEMO's). word2vec's own rate, 0.025 falling linearly.
DEMO_WORD_VECTORS = {
    "model": {"name": "boe"},
    "objective": {"name": "word2vec", "window": 5, "negatives": 5},
    "train": {"batch_size": 256, "seq_len": 64, "budget": "90s", "lr": 0.025, "warmup": 0.0,
              "schedule": "linear", "min_lr_ratio": 0.004, "weight_decay": 0.0, "eval_every": 0,
              "save_every": 0, "log_every": 50},
}

# `pretrainer demo vision`: scikit-learn's bundled 8 x 8 digits (no download), a small ResNet
# pre-trained with SimCLR on the training images without labels, then fine-tuned / probed at a few
# labels against the same ResNet from scratch. Sized to finish in a few minutes on 2 CPU cores.
# The data keys name files the demo writes (digits.npz); pretrainer/cli/demo_vision.py fills them in.
VISION_DEMO = {
    "data": {"name": "images", "holdout": 0.05, "crop_scale": [0.6, 1.0], "rotate": 10.0},
    "model": {"name": "resnet", "widths": [32, 64], "blocks": [1, 1], "stem_stride": 1},
    "objective": {"name": "simclr", "temperature": 0.2, "projection_dim": 64},
    "train": {"batch_size": 128, "max_steps": 300, "lr": 2e-3, "weight_decay": 1e-4, "warmup": 0.05,
              "schedule": "cosine", "eval_every": 0, "save_every": 200, "eval_batches": 2, "log_every": 50},
    "finetune": {
        "task": "image_classification",
        "pooling": "mean",
        "keep_best": False,  # no dev split: the held-out digits are a test set only
        # 3 labels a class is 30 images, one batch: min_steps gives small subsets 150 updates.
        "train": {"batch_size": 32, "epochs": 4.0, "min_steps": 150, "lr": 1e-3, "warmup": 0.1,
                  "schedule": "linear", "weight_decay": 0.01},
    },
}
