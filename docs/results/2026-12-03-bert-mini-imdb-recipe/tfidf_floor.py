"""The cheapest honest baseline for the SST-2 rows: TF-IDF (word 1-2 grams) + logistic regression,
trained on the same stratified label subsets the curve uses (pretrainer.data.labeled.stratified_subset),
scored on the dev and the test split."""

import statistics
import sys

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from pretrainer.config import LabeledDataConfig
from pretrainer.data.labeled import stratified_subset
from pretrainer.data.readers import read_labeled

DATA = "../shared/data/classification/sst2"
cfg = LabeledDataConfig(format="label_text")
train = read_labeled(f"{DATA}/train.txt", cfg)
for split in ("dev", "test"):
    held_out = read_labeled(f"{DATA}/{split}.txt", cfg)
    for fraction in (0.1, 1.0):
        scores = []
        for seed in (0, 1, 2):
            keep = stratified_subset(train.labels, fraction, seed=seed)
            vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
            x = vectorizer.fit_transform([train.texts[i] for i in keep])
            model = LogisticRegression(C=10.0, max_iter=2000).fit(x, [train.labels[i] for i in keep])
            predicted = model.predict(vectorizer.transform(held_out.texts))
            scores.append(100 * sum(p == y for p, y in zip(predicted, held_out.labels)) / len(held_out.labels))
        print(f"{split} {fraction:.0%}: {statistics.mean(scores):.1f} +- {statistics.stdev(scores):.1f}", file=sys.stdout)
