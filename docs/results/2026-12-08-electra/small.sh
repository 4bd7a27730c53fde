#!/bin/sh
# usage: runs/small.sh NAME [extra overrides...]: a 100-step 2-layer d128 ELECTRA check on IMDB unsup,
# batch 16 x 64 tokens (a quarter of the lead's 32 x 128 check, to fit a contended 2-core machine)
name=$1; shift
PYTHONPATH=$PWD OMP_NUM_THREADS=1 exec nice -n 10 /work/main/.venv/bin/python -m pretrainer pretrain configs/bert-mini-imdb-electra.toml \
  --run.dir=\"runs/$name\" --model.n_layers=2 --model.d_model=128 --model.n_heads=2 \
  --train.batch_size=16 --train.seq_len=64 \
  --train.max_steps=100 --train.eval_every=100 --train.eval_batches=20 --train.save_every=100 "$@"
