#!/usr/bin/env bash
# word2vec on IMDB unsup (configs/wordvec-imdb.toml): the gensim engine against fit, one thread
# each, at 632 and 947 steps (2/3 and 1 pass over the 15.5M pieces), timed by /usr/bin/time (CPU
# seconds count: wall clock on a shared machine also counts other jobs). Then the held-out
# skip-gram loss of each run and the nearest neighbours of a few words.
#   bash benchmarks/wordvec_engines.sh [OUT_DIR]     # from the repository root; ~10 CPU-minutes
set -euo pipefail
out=${1:-runs/wordvec-engines}
mkdir -p "$out"
for steps in 632 947; do
  for engine in gensim fit; do
    lr=0.025; [ "$engine" = fit ] && lr=1e-2   # gensim: word2vec's SGD alpha; fit: AdamW's peak rate
    every=200; [ "$steps" = 632 ] && every=158  # held-out evaluations (and gensim's chunk borders)
    /usr/bin/time -f "$engine $steps steps: wall %e s, user %U s, sys %S s" \
      pretrainer pretrain configs/wordvec-imdb.toml --run.dir="$out/$engine-$steps" --impl.progress=false \
        --objective.engine="$engine" --train.lr="$lr" --train.max_steps="$steps" \
        --train.eval_every="$every" > "$out/$engine-$steps.log" 2>&1
    tail -1 "$out/$engine-$steps.log"
    grep "eval @" "$out/$engine-$steps.log" | tail -1
  done
done
python benchmarks/wordvec_neighbours.py "$out"/gensim-947 "$out"/fit-947
